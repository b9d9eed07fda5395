"""Checks request tensors against a signature: names and dtypes (lossless conversion only).

Shapes are left to the graph, as TF Serving does: a signature's shape is what its graph was
built with, not a contract the server enforces (TF Serving's half_plus_two declares ``x`` as
[-1, 1] and serves ``{"instances": [2.0, 3.0, 4.0]}``, a [3] tensor). A tensor the graph cannot
take fails in the graph, as INVALID_ARGUMENT with TensorFlow's message."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tfmux.errors import invalid_argument
from tfmux.types import SignatureSpec, TensorSpec, dtype_name, numpy_dtype


def validate_inputs(
    signature: SignatureSpec, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The inputs as the signature wants them, or INVALID_ARGUMENT naming the first problem."""
    if inputs.keys() == signature.inputs.keys():
        conformed = {}
        for name, spec in signature.inputs.items():
            array = inputs[name]
            if type(array) is not np.ndarray or dtype_name(array) != spec.dtype:
                break  # the careful path converts, or names the problem
            conformed[name] = array
        else:
            return conformed
    expected = ", ".join(sorted(signature.inputs))
    for name in inputs:
        if name not in signature.inputs:
            raise invalid_argument(
                f"input '{name}' is not an input of signature '{signature.name}' "
                f"(expected inputs: {expected})"
            )
    missing = sorted(set(signature.inputs) - set(inputs))
    if missing:
        raise invalid_argument(
            f"missing input(s) {', '.join(repr(m) for m in missing)} for signature "
            f"'{signature.name}' (expected inputs: {expected})"
        )
    return {name: _conform(spec, inputs[name]) for name, spec in signature.inputs.items()}


def _conform(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    return _convert_dtype(spec, np.asarray(array))


def _convert_dtype(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    have = dtype_name(array)
    if have == spec.dtype:
        return array
    if spec.dtype != "string" and have != "string":
        target = numpy_dtype(spec.dtype)
        if _lossless(array.dtype, target):
            return array.astype(target)
        converted = _exact_cast(array, target)
        if converted is not None:
            return converted
    raise invalid_argument(
        f"input '{spec.name}' has dtype {have} but the signature expects {spec.dtype}, "
        "and the values cannot be converted without loss"
    )


def _lossless(source: np.dtype, target: np.dtype) -> bool:
    """Every value of ``source`` is exact in ``target`` (numpy's "safe" casts, except that
    "safe" also allows int64/uint64 -> float64, which rounds beyond 2**53)."""
    wide_int_to_float = source.kind in "iu" and target.kind == "f" and source.itemsize >= 8
    return bool(np.can_cast(source, target, "safe")) and not wide_int_to_float


def _exact_cast(array: np.ndarray, target: np.dtype) -> np.ndarray | None:
    """``array`` as ``target`` when every value survives the round trip, else None."""
    if array.dtype.kind == "f" and target.kind in "iub" and not np.isfinite(array).all():
        return None
    if array.dtype.kind in "iu" and target.kind in "iu" and array.size:
        # A round trip through the same width hides a sign change (-1 -> 2**32-1 -> -1).
        info = np.iinfo(target)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            return None
    with np.errstate(all="ignore"):
        converted = array.astype(target)
        back = converted.astype(array.dtype)
    same = (back == array) | (
        np.isnan(array) & np.isnan(back) if array.dtype.kind == "f" else False
    )
    return converted if bool(np.all(same)) else None
