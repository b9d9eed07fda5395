"""TensorFlow's ``TensorProto`` to and from numpy, written with numpy (no TensorFlow helpers).

Decoding accepts both encodings a client may send: ``tensor_content`` (raw little-endian bytes,
what ``tf.make_tensor_proto`` writes for arrays) and the typed repeated fields (``float_val``,
``int_val``, ... ``string_val``). Typed fields must hold one value per element, or exactly one
value that is repeated over the whole shape (as ``tf.make_ndarray`` does). TensorFlow also pads
shorter lists with their last value and fills empty ones with zeros; tfmux rejects those, since
they almost always mean the values went into the wrong field. Every problem is an
INVALID_ARGUMENT naming the tensor.

Encoding writes the typed fields, as TF Serving's responses do (clients read ``float_val``);
``content=True`` writes ``tensor_content`` instead. Float, double and bool values are written
as packed fields straight from the array's bytes, which is as fast as ``tensor_content``.

Importing this module imports TensorFlow (its protos live in the ``tensorflow`` package).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.framework.tensor_pb2 import TensorProto

from tfmux.errors import invalid_argument, unimplemented
from tfmux.transports.shapes import MAX_TENSOR_BYTES, checked_shape
from tfmux.types import DTYPE_TO_TF, dtype_name, numpy_dtype

_Dim = tensor_shape_pb2.TensorShapeProto.Dim


# The typed repeated field that carries each neutral dtype (from tensor.proto).
VALUE_FIELD: dict[str, str] = {
    "float16": "half_val",
    "bfloat16": "half_val",
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "string": "string_val",
}
DTYPE_ENUM: dict[str, int] = {
    dtype: types_pb2.DataType.Value(tf) for dtype, tf in DTYPE_TO_TF.items()
}
_DTYPE_OF: dict[int, str] = {enum: dtype for dtype, enum in DTYPE_ENUM.items()}
# Fields whose packed wire form is the array's little-endian bytes: fixed32, fixed64, and
# bool (a one-byte varint of 0 or 1). Values are the field numbers in tensor.proto.
_PACKED_RAW: dict[str, tuple[int, str]] = {
    "float32": (5, "<f4"),
    "float64": (6, "<f8"),
    "bool": (11, "u1"),
}


def to_array(name: str, proto: TensorProto) -> np.ndarray:
    """The numpy array a TensorProto holds (strings as an object array of bytes).

    ``name`` (the input alias) is used in error messages. Arrays decoded from
    ``tensor_content`` may be read-only views of the request's bytes.
    """
    dtype = _dtype(name, proto.dtype)
    shape = _shape(name, proto, dtype)
    if proto.tensor_content:
        return _from_content(name, proto.tensor_content, dtype, shape)
    return _from_values(name, proto, dtype, shape)


def _dtype(name: str, enum: int) -> str:
    dtype = _DTYPE_OF.get(enum)
    if dtype is None:
        known = types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else enum
        supported = ", ".join(DTYPE_TO_TF.values())
        raise invalid_argument(
            f"input '{name}' has dtype {known}, which tfmux does not serve (supported: {supported})"
        )
    return dtype


def _shape(name: str, proto: TensorProto, dtype: str) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input '{name}' has unknown rank; a request needs a full shape")
    dims = (dim.size for dim in proto.tensor_shape.dim)
    return tuple(checked_shape(dims, numpy_dtype(dtype).itemsize, name))


def _from_content(name: str, content: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "string":
        raise invalid_argument(
            f"input '{name}': DT_STRING tensors must carry their values in string_val, "
            "not tensor_content"
        )
    wire = numpy_dtype(dtype).newbyteorder("<")
    needed = math.prod(shape) * wire.itemsize
    if len(content) != needed:
        raise invalid_argument(
            f"input '{name}': tensor_content has {len(content)} bytes but shape {list(shape)} "
            f"of {dtype} needs {needed}"
        )
    array = np.frombuffer(content, dtype=wire).reshape(shape)
    return array if wire.isnative else array.astype(wire.newbyteorder("="))


def _from_values(name: str, proto: TensorProto, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    field = VALUE_FIELD[dtype]
    values = getattr(proto, field)
    count, given = math.prod(shape), len(values)
    if given != count and (given != 1 or count == 0):
        raise invalid_argument(
            f"input '{name}' has shape {list(shape)} ({count} values) but {given} values in "
            f"{field}{_elsewhere(proto, field)}; send one value per element, or a single "
            "value to fill the shape"
        )
    flat = _decode_values(name, values, dtype)
    if given == count:
        return flat.reshape(shape)
    return np.full(shape, flat[0], dtype=flat.dtype)


def _elsewhere(proto: TensorProto, expected: str) -> str:
    """A hint naming the typed fields that hold values although the dtype does not use them."""
    others = sorted({f for f in VALUE_FIELD.values() if f != expected and len(getattr(proto, f))})
    return f" (values found in {', '.join(others)} instead)" if others else ""


def _decode_values(name: str, values: Sequence[Any], dtype: str) -> np.ndarray:
    if dtype == "string":
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out
    field = VALUE_FIELD[dtype]
    if field not in ("int_val", "half_val"):
        return np.fromiter(values, dtype=numpy_dtype(dtype), count=len(values))
    wide = np.fromiter(values, dtype=np.int64, count=len(values))
    bits = np.dtype(np.uint16) if field == "half_val" else numpy_dtype(dtype)
    info = np.iinfo(bits)
    if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
        bad = wide[(wide < info.min) | (wide > info.max)][0]
        what = f"{dtype} bit pattern" if field == "half_val" else dtype
        raise invalid_argument(
            f"input '{name}': {field} value {bad} is out of range for {what} "
            f"[{info.min}, {info.max}]"
        )
    return wide.astype(bits).view(numpy_dtype(dtype))


def to_tensor_proto(name: str, array: np.ndarray, *, content: bool = False) -> TensorProto:
    """A new TensorProto holding ``array`` (see ``write_tensor_proto``)."""
    proto = TensorProto()
    write_tensor_proto(proto, name, array, content=content)
    return proto


def write_tensor_proto(
    proto: TensorProto, name: str, array: np.ndarray, *, content: bool = False
) -> None:
    """Fill an empty TensorProto (for example a response map entry) with ``array``.

    Typed fields by default, ``tensor_content`` when ``content`` (strings always use
    ``string_val``). An array of a dtype TensorFlow cannot hold raises UNIMPLEMENTED naming
    ``name``.
    """
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    dtype = dtype_name(array)
    enum = DTYPE_ENUM.get(dtype)
    if enum is None:
        raise unimplemented(
            f"output '{name}' has dtype {dtype}, which cannot be sent as a TensorProto"
        )
    proto.dtype = enum
    proto.tensor_shape.dim.extend(_Dim(size=size) for size in array.shape)
    if dtype == "string":
        proto.string_val.extend(_as_bytes(v) for v in array.ravel())
    elif content:
        wire = array.dtype.newbyteorder("<")
        proto.tensor_content = np.ascontiguousarray(array, dtype=wire).tobytes()
    elif dtype in _PACKED_RAW:
        number, wire_dtype = _PACKED_RAW[dtype]
        payload = np.ascontiguousarray(array, dtype=wire_dtype).tobytes()
        proto.MergeFromString(_varint(number << 3 | 2) + _varint(len(payload)) + payload)
    elif VALUE_FIELD[dtype] == "half_val":
        proto.half_val.extend(array.view(np.uint16).ravel().tolist())
    else:
        getattr(proto, VALUE_FIELD[dtype]).extend(array.ravel().tolist())


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


__all__ = [
    "DTYPE_ENUM",
    "MAX_TENSOR_BYTES",
    "VALUE_FIELD",
    "TensorProto",
    "to_array",
    "to_tensor_proto",
    "write_tensor_proto",
]
