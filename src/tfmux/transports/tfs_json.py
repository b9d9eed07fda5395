"""TF Serving's REST JSON documents <-> numpy: the pure functions the /v1 routes call.

Requests: ``parse_predict`` + ``decode_inputs`` (row ``instances`` or columnar ``inputs``) and
``parse_examples`` (classify/regress). Responses: ``encode_predict``, ``encode_classify``,
``encode_regress``, ``encode_status``, ``encode_metadata``, ``encode_error``. A bad request
raises ``ServingError`` (INVALID_ARGUMENT) with a message naming what is wrong. Tensor values
are converted by ``tfs_codec``; classify/regress documents live in ``tfs_examples``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tfmux.errors import invalid_argument
from tfmux.transports.tfs_codec import (
    ORJSON_NATIVE,
    dumps,
    is_b64,
    json_type,
    json_value,
    parse_json,
    request_object,
    snippet,
    to_array,
)
from tfmux.transports.tfs_examples import (
    encode_classify,
    encode_regress,
    parse_examples,
)
from tfmux.types import DTYPE_TO_TF, SignatureSpec, TensorSpec, VersionStatus

__all__ = [
    "PredictRequestJson",
    "decode_inputs",
    "encode_classify",
    "encode_error",
    "encode_metadata",
    "encode_predict",
    "encode_regress",
    "encode_status",
    "parse_examples",
    "parse_json",
    "parse_predict",
]

Format = Literal["row", "columnar"]


@dataclass(frozen=True)
class PredictRequestJson:
    """A parsed predict body.

    ``format`` is "row" when the body has ``instances`` (``data`` is that non-empty list, one
    element per example) and "columnar" when it has ``inputs`` (``data`` is that value: an object
    keyed by input name, or a bare tensor for a one-input signature).
    """

    signature_name: str
    format: Format
    data: Any


def parse_predict(body: bytes) -> PredictRequestJson:
    """Parse a predict body; it must be an object with exactly one of instances/inputs."""
    doc, signature_name = request_object(body)
    if "instances" in doc and "inputs" in doc:
        raise invalid_argument(
            "Request must have exactly one of 'instances' (row format) or 'inputs' (columnar "
            "format), not both"
        )
    if "instances" not in doc and "inputs" not in doc:
        raise invalid_argument("Missing 'inputs' or 'instances' key: the request needs one")
    if "inputs" in doc:
        return PredictRequestJson(signature_name, "columnar", doc["inputs"])
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise invalid_argument(
            f"Expecting 'instances' to be a list/array, got {snippet(instances)}"
        )
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    return PredictRequestJson(signature_name, "row", instances)


def decode_inputs(req: PredictRequestJson, signature: SignatureSpec) -> dict[str, np.ndarray]:
    """The input tensors of a predict request, as arrays of the signature's dtypes.

    Row format stacks the instances along a new dimension 0. Unknown or missing input names,
    bare values for a several-input signature, instances with differing keys, ragged lists and
    values that do not fit the dtype raise INVALID_ARGUMENT. Shapes are checked by the core.
    """
    if req.format == "row":
        values = _row_values(req.data, signature)
    else:
        values = _columnar_values(req.data, signature)
    return {name: to_array(name, v, signature.inputs[name].dtype) for name, v in values.items()}


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _row_values(instances: list[Any], signature: SignatureSpec) -> dict[str, Any]:
    if not _is_object(instances[0]):
        name = _only_input(signature, "'instances' is a plain list")
        for index, item in enumerate(instances):
            if _is_object(item):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of 'instances'"
                )
        return {name: instances}
    keys = instances[0].keys()
    _check_names(keys, signature, "'instances' item 0")
    for index, item in enumerate(instances):
        if not _is_object(item):
            raise invalid_argument(
                f"Expecting object but got {json_type(item)} at item {index} of 'instances'"
            )
        if item.keys() != keys:
            raise invalid_argument(
                f"'instances' item {index} has keys {_names(item)} but item 0 has keys "
                f"{_names(keys)}; every instance must name the same inputs"
            )
    return {name: [item[name] for item in instances] for name in keys}


def _columnar_values(inputs: Any, signature: SignatureSpec) -> dict[str, Any]:
    if _is_object(inputs):
        _check_names(inputs.keys(), signature, "'inputs' object")
        return dict(inputs)
    return {_only_input(signature, "'inputs' is a plain value/list"): inputs}


def _only_input(signature: SignatureSpec, what: str) -> str:
    if len(signature.inputs) != 1:
        raise invalid_argument(
            f"{what}, but signature '{signature.name}' has {len(signature.inputs)} inputs "
            f"{_names(signature.inputs)}: send objects keyed by input name"
        )
    return next(iter(signature.inputs))


def _check_names(keys: Any, signature: SignatureSpec, where: str) -> None:
    unknown = sorted(set(keys) - set(signature.inputs))
    missing = sorted(set(signature.inputs) - set(keys))
    for problem, names in (("Unknown", unknown), ("Missing", missing)):
        if names:
            raise invalid_argument(
                f"{problem} named input(s) {_names(names)} in {where}; "
                f"signature '{signature.name}' has inputs {_names(signature.inputs)}"
            )


def _names(names: Any) -> str:
    return "[" + ", ".join(f"'{name}'" for name in sorted(names)) + "]"


def encode_predict(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """The predict response: row → ``{"predictions": ...}``, columnar → ``{"outputs": ...}``.

    One output is written without its name. Several: row format gives one object per example
    (all outputs must share dimension 0, else INVALID_ARGUMENT), columnar an object keyed by
    name. String outputs whose alias ends in ``_bytes`` are written as ``{"b64": ...}``.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if fmt == "row" and len(outputs) == 1:
        ((name, array),) = outputs.items()
        if array.ndim and array.dtype in ORJSON_NATIVE and not name.endswith("_bytes"):
            body = dumps({"predictions": np.ascontiguousarray(array)})
            if b"null" not in body:  # orjson writes non-finite floats as null: not TF Serving's
                return body
    if fmt == "row":
        return dumps({"predictions": _row_predictions(outputs)})
    values = {name: json_value(array, name.endswith("_bytes")) for name, array in outputs.items()}
    return dumps({"outputs": next(iter(values.values())) if len(values) == 1 else values})


def _row_predictions(outputs: Mapping[str, np.ndarray]) -> Any:
    batch = -1
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                f"expecting: {batch}"
            )
        batch = array.shape[0]
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return json_value(array, name.endswith("_bytes"))
    rows: dict[str, Any] = {}
    for name, array in outputs.items():
        value = json_value(array, name.endswith("_bytes"))
        rows[name] = list(value) if isinstance(value, np.ndarray) else value
    return [{name: column[i] for name, column in rows.items()} for i in range(batch)]


def encode_status(statuses: Sequence[VersionStatus]) -> bytes:
    """GetModelStatusResponse JSON with exactly TF Serving's fields: versions as strings,
    error_message always present. (What a version costs is in tfmux's own
    ``/v2/repository/index``, not here.)"""
    return dumps({"model_version_status": [_version_status(s) for s in statuses]})


def _version_status(status: VersionStatus) -> dict[str, Any]:
    return {
        "version": str(status.version),
        "state": status.state,
        "status": {"error_code": status.error_code, "error_message": status.error_message},
    }


def encode_metadata(name: str, version: int, signatures: Mapping[str, SignatureSpec]) -> bytes:
    """GetModelMetadataResponse JSON: model_spec plus the proto3-JSON SignatureDefMap.

    Each SignatureDef also carries ``"defaults": {}``, as TF Serving prints the (empty) map
    field of current SignatureDef protos.
    """
    defs = {
        key: {
            "inputs": {alias: _tensor_info(t) for alias, t in sig.inputs.items()},
            "outputs": {alias: _tensor_info(t) for alias, t in sig.outputs.items()},
            "method_name": sig.method_name,
            "defaults": {},
        }
        for key, sig in signatures.items()
    }
    spec = {"name": name, "signature_name": "", "version": str(version)}
    return dumps({"model_spec": spec, "metadata": {"signature_def": {"signature_def": defs}}})


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    if spec.shape is None:
        shape: dict[str, Any] = {"dim": [], "unknown_rank": True}
    else:
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape]
        shape = {"dim": dims, "unknown_rank": False}
    dtype = DTYPE_TO_TF.get(spec.dtype, "DT_INVALID")
    return {"dtype": dtype, "tensor_shape": shape, "name": spec.tensor_name}


def encode_error(message: str) -> bytes:
    """The error body TF Serving sends: ``{"error": message}``."""
    return dumps({"error": message})
