"""KServe V2 gRPC messages <-> neutral tensors: what a ModelInferRequest asks for, its input
tensors (typed ``contents`` or ``raw_input_contents``), and the ModelInferResponse of a result.

Only decoding and encoding live here: names, dtype conversions and shapes against the signature
are checked by the core, so every front end answers the same mistake the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from tfmux.errors import invalid_argument, unimplemented
from tfmux.transports.shapes import checked_shape
from tfmux.transports.v2_types import (
    DATATYPE_OF,
    LABEL_PARAMETER,
    ROUTING_KEY_PARAMETER,
    dtype_of,
    from_raw,
    model_ref,
    to_raw,
)
from tfmux.types import InferenceResult, ModelRef, dtype_name, numpy_dtype

# The typed ``contents`` field each datatype's values travel in (FP16 / BF16: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
SIGNATURE_PARAMETER = "signature_name"
# Tensor parameters asking for Triton features tfmux does not have; ignoring them would
# silently give a different answer, so they are refused.
_UNSUPPORTED_TENSOR_PARAMETERS = {
    "classification": "the classification extension",
    "shared_memory_region": "shared memory",
}


@dataclass(frozen=True)
class InferCall:
    """What a ModelInferRequest asks for, apart from its input tensors."""

    ref: ModelRef
    signature_name: str
    output_names: list[str] | None
    timeout_us: int | None = None  # the schedule-policy ``timeout`` parameter


def require_name(name: str, field: str = "model_name") -> str:
    if not name:
        raise invalid_argument(f"{field} is required")
    return name


def parse_version(text: str) -> int | None:
    """A V2 version string: empty means the latest, otherwise a non-negative integer."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise invalid_argument(f"model version must be a non-negative integer, not '{text}'")
    return int(text)


def parse_call(request: Any, routing_key: str | None = None) -> InferCall:
    """Model (``MODEL@LABEL`` too), version or label, signature and requested outputs of a
    ModelInferRequest. ``routing_key`` is the call's ``x-routing-key`` metadata; a
    ``routing_key`` request parameter wins over it."""
    params = request.parameters
    key = _string_parameter(params, ROUTING_KEY_PARAMETER)
    ref = model_ref(
        require_name(request.model_name),
        parse_version(request.model_version),
        _string_parameter(params, LABEL_PARAMETER) or None,
        routing_key if key is None else key,
    )
    signature = _string_parameter(params, SIGNATURE_PARAMETER) or ""
    timeout = None
    if "timeout" in request.parameters:
        param = request.parameters["timeout"]
        which = param.WhichOneof("parameter_choice")
        timeout = getattr(param, which) if which in ("int64_param", "uint64_param") else -1
        if timeout < 0:
            raise invalid_argument("parameter 'timeout' must be a non-negative int64_param (µs)")
    names: list[str] = []
    for output in request.outputs:
        _refuse_unsupported(output.parameters, f"output '{output.name}'")
        if output.name in names:
            raise invalid_argument(f"output '{output.name}' is requested more than once")
        names.append(output.name)
    return InferCall(ref, signature, names or None, timeout)


def _string_parameter(parameters: Mapping[str, Any], name: str) -> str | None:
    if name not in parameters:
        return None
    param = parameters[name]
    if param.WhichOneof("parameter_choice") != "string_param":
        raise invalid_argument(f"parameter '{name}' must be a string_param")
    return str(param.string_param)


def decode_inputs(request: Any) -> dict[str, np.ndarray]:
    """The input tensors of a ModelInferRequest, by name (INVALID_ARGUMENT on any mismatch)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per "
            "input, in input order, or none"
        )
    tensors: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in tensors:
            raise invalid_argument(f"input '{name}' appears more than once")
        _refuse_unsupported(tensor.parameters, f"input '{name}'")
        shape = checked_shape(tensor.shape, _itemsize(tensor.datatype, name), name)
        if not raw:
            tensors[name] = _from_contents(tensor, shape)
        elif tensor.HasField("contents"):
            raise invalid_argument(
                f"input '{name}' has typed contents, but the request uses raw_input_contents: "
                "a request sends every input one way"
            )
        else:
            tensors[name] = from_raw(raw[index], tensor.datatype, shape, name)
    return tensors


def encode_response(
    request_id: str, result: InferenceResult, output_names: Sequence[str] | None
) -> Any:
    """The ModelInferResponse of a result: outputs as ``raw_output_contents``, which is where
    Triton puts them and the only place tritonclient reads non-BYTES outputs from."""
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=str(result.version), id=request_id
    )
    for name in output_names or sorted(result.outputs):
        array = np.asarray(result.outputs[name])
        response.outputs.add(name=name, datatype=_datatype(name, array), shape=array.shape)
        response.raw_output_contents.append(to_raw(array))
    return response


def _refuse_unsupported(parameters: Mapping[str, Any], where: str) -> None:
    for key, feature in _UNSUPPORTED_TENSOR_PARAMETERS.items():
        if key in parameters:
            raise unimplemented(
                f"{where}: parameter '{key}' asks for {feature}, which tfmux does not support"
            )


def _from_contents(tensor: Any, shape: list[int]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = dtype_of(datatype, name)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid_argument(
            f"input '{name}': {datatype} values travel only in raw_input_contents"
        )
    for present, _ in tensor.contents.ListFields():
        if present.name != field:
            raise invalid_argument(
                f"input '{name}' is {datatype}, whose values go in {field}, "
                f"but {present.name} is set"
            )
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid_argument(
            f"input '{name}': shape {shape} holds {count} values, but {field} has {len(values)}"
        )
    return _array(values, dtype, name).reshape(shape)


def _array(values: Sequence[Any], dtype: str, name: str) -> np.ndarray:
    if dtype == "string":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array
    target = numpy_dtype(dtype)
    if target.kind not in "iu" or target.itemsize >= 4:
        return np.array(values, dtype=target)
    # INT8/16 and UINT8/16 arrive widened to 32 bits: refuse values that do not fit.
    wide = np.array(values, dtype=np.int64)
    info = np.iinfo(target)
    if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
        raise invalid_argument(
            f"input '{name}': a value is outside the range of {DATATYPE_OF[dtype]} "
            f"[{info.min}, {info.max}]"
        )
    return wide.astype(target)


def _datatype(name: str, array: np.ndarray) -> str:
    dtype = dtype_name(array)
    datatype = DATATYPE_OF.get(dtype)
    if datatype is None:
        raise unimplemented(f"output '{name}' has dtype {dtype}, which V2 cannot carry")
    return datatype


def _itemsize(datatype: str, name: str) -> int:
    return numpy_dtype(dtype_of(datatype, name)).itemsize
