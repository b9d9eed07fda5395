"""KServe V2 / Open Inference Protocol facts shared by the REST and gRPC front ends:
datatype names, tensor specs as V2 metadata, byte layout of BYTES tensors, and what a request
names (``MODEL@LABEL`` and the ``version_label`` and ``routing_key`` parameters), and the
model repository extension's index."""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfmux.core.service import ServingService
from tfmux.errors import ServingError, invalid_argument
from tfmux.transports.shapes import checked_shape
from tfmux.types import ModelRef, Shape, SignatureSpec, TensorSpec, VersionStatus, numpy_dtype

DATATYPE_OF: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "bfloat16": "BF16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}
DTYPE_OF: dict[str, str] = {v: k for k, v in DATATYPE_OF.items()}
PLATFORM = "tensorflow_savedmodel"
LABEL_PARAMETER = "version_label"
ROUTING_KEY_PARAMETER = "routing_key"


def model_ref(
    name: str,
    version: int | None,
    label: str | None = None,
    routing_key: str | None = None,
) -> ModelRef:
    """What a V2 request names. ``MODEL@LABEL`` is the label's alias form (``@`` is never part
    of a model name); a label, either way, excludes a version. An empty key is no key."""
    model, at, aliased = name.partition("@")
    if at:
        if not model or not aliased:
            raise invalid_argument(f"'{name}' must be MODEL@LABEL with neither part empty")
        if label is not None and label != aliased:
            raise invalid_argument(f"'{name}' names label {aliased}, the request '{label}'")
        label = aliased
    if label is not None and version is not None:
        raise invalid_argument("a request may name a version or a label, not both")
    return ModelRef(model, version, label, routing_key or None)


def dtype_of(datatype: str, tensor: str) -> str:
    """The neutral dtype of a V2 datatype name, or INVALID_ARGUMENT naming the tensor."""
    dtype = DTYPE_OF.get(datatype)
    if dtype is None:
        raise invalid_argument(
            f"tensor '{tensor}': unknown datatype '{datatype}' "
            f"(expected one of {', '.join(DATATYPE_OF.values())})"
        )
    return dtype


def datatype_of(dtype: str) -> str:
    return DATATYPE_OF[dtype]


def v2_shape(shape: Shape | None) -> list[int]:
    """V2 metadata shape: variable dimensions are -1; unknown rank is [-1]."""
    if shape is None:
        return [-1]
    return [-1 if d is None else d for d in shape]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": v2_shape(spec.shape)}


def model_metadata(
    name: str, version: int, versions: list[int], signature: SignatureSpec
) -> dict[str, Any]:
    """The V2 model metadata of one signature (V2 has no notion of several)."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [tensor_metadata(s) for s in _ordered(signature.inputs)],
        "outputs": [tensor_metadata(s) for s in _ordered(signature.outputs)],
    }


def _ordered(specs: Mapping[str, TensorSpec]) -> list[TensorSpec]:
    return [specs[k] for k in sorted(specs)]


def from_raw(raw: bytes, datatype: str, shape: list[int], tensor: str) -> np.ndarray:
    """A tensor from V2 raw bytes (little-endian, row-major; BYTES as 4-byte length + data)."""
    dtype = dtype_of(datatype, tensor)
    shape = checked_shape(shape, numpy_dtype(dtype).itemsize, tensor)
    count = math.prod(shape)
    if dtype == "string":
        return _bytes_from_raw(raw, count, tensor).reshape(shape)
    np_dtype = numpy_dtype(dtype).newbyteorder("<")
    if len(raw) != count * np_dtype.itemsize:
        raise invalid_argument(
            f"tensor '{tensor}': {len(raw)} bytes of raw data, but shape {shape} of {datatype} "
            f"needs {count * np_dtype.itemsize}"
        )
    if dtype == "bool":
        values = np.frombuffer(raw, dtype=np.uint8)
        if values.size and values.max() > 1:
            raise invalid_argument(f"tensor '{tensor}': BOOL raw data holds bytes other than 0/1")
        return values.astype(bool).reshape(shape)
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))


def _bytes_from_raw(raw: bytes, count: int, tensor: str) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid_argument(f"tensor '{tensor}': truncated BYTES length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise invalid_argument(f"tensor '{tensor}': BYTES element runs past the data")
        items.append(raw[offset : offset + size])
        offset += size
    if len(items) != count:
        raise invalid_argument(
            f"tensor '{tensor}': {len(items)} BYTES elements in raw data, shape needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def to_raw(array: np.ndarray) -> bytes:
    """V2 raw bytes of a tensor (the inverse of ``from_raw``)."""
    if array.dtype.kind in ("O", "S", "U"):
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def deadline_after(timeout_us: int | None, *others: float | None) -> float | None:
    """The earliest of a V2 ``timeout`` (microseconds from now) and other deadlines, as
    ``time.monotonic()`` seconds; None when there is none."""
    deadlines = [d for d in others if d is not None]
    if timeout_us is not None:
        deadlines.append(time.monotonic() + timeout_us / 1e6)
    return min(deadlines, default=None)


# -- the model repository extension, shared by both V2 doors ---------------------------------

# Triton's repository states for the lifecycle states of a version.
TRITON_STATE = {
    "START": "UNAVAILABLE",
    "LOADING": "LOADING",
    "AVAILABLE": "READY",
    "UNLOADING": "UNLOADING",
    "END": "UNAVAILABLE",
}


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (``version`` None: the model has no version)."""

    name: str
    version: str | None
    state: str
    reason: str
    memory_bytes: int | None = None
    memory_measured: bool = False


def repository_index(service: ServingService, ready_only: bool) -> list[IndexEntry]:
    """Every configured model and version, with Triton's state names and a reason."""
    entries = [_index_entry(service, name, status) for name, status in service.repository_index()]
    return [e for e in entries if e.state == "READY"] if ready_only else entries


def _index_entry(service: ServingService, name: str, status: VersionStatus | None) -> IndexEntry:
    if status is None:
        return IndexEntry(name, None, "UNAVAILABLE", _why_no_version(service, name))
    reason = status.error_message
    if not reason and status.state in ("START", "END"):
        reason = "not loaded yet" if status.state == "START" else "unloaded"
    state = TRITON_STATE.get(status.state, "UNKNOWN")
    return IndexEntry(
        name, str(status.version), state, reason, status.memory_bytes, status.memory_measured
    )


def _why_no_version(service: ServingService, name: str) -> str:
    try:
        service.status(name)
    except ServingError as exc:
        return exc.message
    return "no version is served"


def refuse_model_files(parameters: Iterable[str]) -> None:
    """A load request never brings a model config or files: only configured repositories."""
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise invalid_argument(
            "loading with a 'config' or files in the request is not supported: tfmux "
            "loads models only from its configured repositories"
        )
