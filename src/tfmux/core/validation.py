"""Checks request tensors against a signature: names, dtypes (lossless conversion only), shapes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tfmux.errors import invalid_argument
from tfmux.types import Shape, SignatureSpec, TensorSpec, dtype_name, numpy_dtype


def format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def validate_inputs(
    signature: SignatureSpec, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The inputs as the signature wants them, or INVALID_ARGUMENT naming the first problem."""
    if inputs.keys() == signature.inputs.keys():
        conformed = {}
        for name, spec in signature.inputs.items():
            array = inputs[name]
            if (
                type(array) is not np.ndarray
                or dtype_name(array) != spec.dtype
                or not _fits_shape(spec.shape, array.shape)
            ):
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
    array = _convert_dtype(spec, np.asarray(array))
    _check_shape(spec, array)
    return array


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


def _fits_shape(want: Shape | None, have: tuple[int, ...]) -> bool:
    if want is None:
        return True
    if len(want) != len(have):
        return False
    # A loop, not all() over a generator: several times cheaper for a handful of dimensions.
    for w, h in zip(want, have, strict=True):  # noqa: SIM110
        if w is not None and w != h:
            return False
    return True


def _check_shape(spec: TensorSpec, array: np.ndarray) -> None:
    if not _fits_shape(spec.shape, array.shape):
        raise invalid_argument(
            f"input '{spec.name}' has shape {format_shape(array.shape)} but the signature "
            f"expects {format_shape(spec.shape)} ({spec.dtype})"
        )
