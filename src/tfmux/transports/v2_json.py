"""KServe V2 inference bodies <-> numpy: JSON tensors and the binary tensor data extension.

``parse_infer`` splits a request body into its JSON header and the binary part that follows it
(``Inference-Header-Content-Length``), checks that every size adds up, and decodes each input
to a numpy array of the datatype the request *declares*; converting that to the signature's
dtype is the core's job (exact conversions only). ``encode_infer`` writes the response: JSON
``data`` or binary chunks after the header, datatypes following the tensors' real dtypes.
Every problem with a request is an INVALID_ARGUMENT naming the input or field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfmux.errors import internal, invalid_argument
from tfmux.transports.shapes import checked_shape
from tfmux.transports.tfs_codec import dumps, json_value, parse_json, snippet, to_array
from tfmux.transports.v2_types import (
    DATATYPE_OF,
    LABEL_PARAMETER,
    ROUTING_KEY_PARAMETER,
    dtype_of,
    from_raw,
    to_raw,
)
from tfmux.types import DEFAULT_SIGNATURE, InferenceResult, dtype_name, numpy_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``; ``binary`` None follows binary_data_output."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 inference request. Empty ``outputs`` means every output of the signature."""

    id: str | None
    signature_name: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] = ()
    binary_output: bool = False
    timeout_us: int | None = None  # the schedule-policy ``timeout`` parameter
    version_label: str | None = None  # tfmux's ``version_label`` parameter
    routing_key: str | None = None  # tfmux's ``routing_key`` parameter (sticky splits)

    def output_names(self) -> list[str] | None:
        return [o.name for o in self.outputs] or None


@dataclass(frozen=True)
class _InputSpec:
    name: str
    datatype: str
    shape: list[int]
    binary_size: int | None  # None: the values are in JSON ``data``
    data: Any = None


def parse_infer(body: bytes, header_length: bytes | None) -> InferRequest:
    """Decode an inference request body; ``header_length`` is the raw header value, if any."""
    header, binary = split_body(body, header_length)
    doc = parse_json(header)
    if not isinstance(doc, dict):
        raise invalid_argument(f"the inference request must be a JSON object, not {snippet(doc)}")
    params = _parameters(doc, "the request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_argument(f"'id' must be a string, not {snippet(request_id)}")
    signature = params.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise invalid_argument(f"parameter 'signature_name' must be a string: {snippet(signature)}")
    return InferRequest(
        id=request_id,
        signature_name=signature or DEFAULT_SIGNATURE,
        inputs=_decode_inputs(doc.get("inputs"), binary, header_length is not None),
        outputs=_requested_outputs(doc.get("outputs")),
        binary_output=_flag(params, "binary_data_output", "the request") or False,
        timeout_us=_timeout(params),
        version_label=_text(params, LABEL_PARAMETER) or None,
        routing_key=_text(params, ROUTING_KEY_PARAMETER),
    )


def split_body(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    """(JSON header, binary data): the whole body is JSON when there is no header length."""
    if header_length is None:
        return body, b""
    text = header_length.decode("latin-1").strip()
    if not (text.isascii() and text.isdigit()):
        raise invalid_argument(f"{HEADER_LENGTH} must be a non-negative integer, not '{text}'")
    size = int(text)
    if size > len(body):
        raise invalid_argument(
            f"{HEADER_LENGTH} is {size} but the request body has only {len(body)} bytes"
        )
    return body[:size], body[size:]


def _decode_inputs(items: Any, binary: bytes, has_header: bool) -> dict[str, np.ndarray]:
    if not isinstance(items, list):
        raise invalid_argument(f"'inputs' must be a list of tensors, not {snippet(items)}")
    specs = [_input_spec(item, index) for index, item in enumerate(items)]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise invalid_argument(f"input '{duplicates[0]}' is given more than once")
    declared = sum(spec.binary_size or 0 for spec in specs)
    if declared and not has_header:
        raise invalid_argument(
            f"inputs give binary_data_size but the request has no {HEADER_LENGTH} header, "
            "so no binary data"
        )
    if declared != len(binary):
        raise invalid_argument(
            f"the inputs' binary_data_size add up to {declared} bytes, but {len(binary)} bytes "
            "of binary data follow the JSON header"
        )
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        if spec.binary_size is None:
            tensors[spec.name] = _json_tensor(spec)
        else:
            chunk = binary[offset : offset + spec.binary_size]
            offset += spec.binary_size
            tensors[spec.name] = _binary_tensor(spec, chunk)
    return tensors


def _input_spec(item: Any, index: int) -> _InputSpec:
    if not isinstance(item, dict):
        raise invalid_argument(f"inputs[{index}] must be an object, not {snippet(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_argument(f"inputs[{index}] needs a 'name' string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise invalid_argument(f"input '{name}' needs a 'datatype' string")
    dtype_of(datatype, name)  # an unknown datatype is an error here already
    params = _parameters(item, f"input '{name}'")
    _refuse_shared_memory(params, f"input '{name}'")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise invalid_argument(
            f"input '{name}': binary_data_size must be a non-negative integer, not {snippet(size)}"
        )
    if size is not None and "data" in item:
        raise invalid_argument(f"input '{name}' has both 'data' and binary data; give one")
    if size is None and "data" not in item:
        raise invalid_argument(f"input '{name}' has neither 'data' nor binary_data_size")
    return _InputSpec(
        name, datatype, _shape(item.get("shape"), datatype, name), size, item.get("data")
    )


def _shape(value: Any, datatype: str, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise invalid_argument(
            f"input '{name}': 'shape' must be a list of non-negative integers, not {snippet(value)}"
        )
    return checked_shape(value, numpy_dtype(dtype_of(datatype, name)).itemsize, name)


def _json_tensor(spec: _InputSpec) -> np.ndarray:
    """The JSON ``data`` (flat or nested, row-major) as the declared datatype and shape."""
    array = to_array(spec.name, spec.data, dtype_of(spec.datatype, spec.name))
    count = math.prod(spec.shape)
    if array.size != count:
        raise invalid_argument(
            f"input '{spec.name}': 'data' has {array.size} values but shape {spec.shape} "
            f"needs {count}"
        )
    return array.reshape(spec.shape)


def _binary_tensor(spec: _InputSpec, raw: bytes) -> np.ndarray:
    count = math.prod(spec.shape)
    dtype = dtype_of(spec.datatype, spec.name)
    if dtype == "string":
        needed, what = 4 * count, "at least"  # every element has a 4-byte length prefix
        fits = needed <= len(raw)
    else:
        needed, what = count * numpy_dtype(dtype).itemsize, "exactly"
        fits = needed == len(raw)
    if not fits:
        raise invalid_argument(
            f"input '{spec.name}': binary_data_size is {len(raw)} bytes, but shape {spec.shape} "
            f"of {spec.datatype} needs {what} {needed}"
        )
    return from_raw(raw, spec.datatype, spec.shape, spec.name)


def _requested_outputs(value: Any) -> tuple[RequestedOutput, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid_argument(f"'outputs' must be a list, not {snippet(value)}")
    outputs: list[RequestedOutput] = []
    for index, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise invalid_argument(f"outputs[{index}] must be an object with a 'name' string")
        if any(o.name == name for o in outputs):
            raise invalid_argument(f"output '{name}' is requested more than once")
        params = _parameters(item, f"output '{name}'")
        _refuse_shared_memory(params, f"output '{name}'")
        if "classification" in params:
            raise invalid_argument(
                f"output '{name}': the classification extension is not supported"
            )
        outputs.append(RequestedOutput(name, _flag(params, "binary_data", f"output '{name}'")))
    return tuple(outputs)


def _parameters(doc: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = doc.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid_argument(f"'parameters' of {where} must be an object, not {snippet(params)}")
    return params


def _timeout(params: Mapping[str, Any]) -> int | None:
    value = params.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_argument(
            f"parameter 'timeout' must be a non-negative integer of microseconds: {snippet(value)}"
        )
    return value


def _text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid_argument(f"parameter '{key}' must be a string, not {snippet(value)}")
    return value


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid_argument(f"parameter '{key}' of {where} must be true or false")
    return value


def _refuse_shared_memory(params: Mapping[str, Any], where: str) -> None:
    if any(key in params for key in SHARED_MEMORY):
        raise invalid_argument(f"{where}: the shared memory extensions are not supported")


# -- responses ---------------------------------------------------------------------------------


def encode_infer(request: InferRequest, result: InferenceResult) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON).

    Outputs come in the order the request lists them (else sorted by name). An output is
    binary when it asks ``binary_data: true``, or does not say and the request sets
    ``binary_data_output: true``; a BYTES output that is not valid UTF-8 cannot be JSON text
    and is sent binary whatever was asked.
    """
    asked = {o.name: o.binary for o in request.outputs}
    names = list(asked) or sorted(result.outputs)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in names:
        binary = asked.get(name)
        entry, raw = _output(
            name, result.outputs[name], request.binary_output if binary is None else binary
        )
        entries.append(entry)
        if raw is not None:
            chunks.append(raw)
    doc: dict[str, Any] = {"model_name": result.model_name, "model_version": str(result.version)}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = entries
    header = dumps(doc)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _output(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    datatype = DATATYPE_OF.get(dtype_name(array))
    if datatype is None:
        raise internal(f"output '{name}' has dtype {array.dtype}, which V2 cannot carry")
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    texts = _utf8_texts(array.reshape(-1)) if datatype == "BYTES" and not binary else None
    if binary or (datatype == "BYTES" and texts is None):
        raw = to_raw(array)
        entry["parameters"] = {"binary_data_size": len(raw)}
        return entry, raw
    entry["data"] = texts if texts is not None else json_value(array.reshape(-1))
    return entry, None


def _utf8_texts(flat: np.ndarray) -> list[str] | None:
    try:
        return [v if isinstance(v, str) else bytes(v).decode() for v in flat]
    except UnicodeDecodeError:
        return None
