"""TF Serving's JSON values: parsing a request body, and one tensor to and from numpy.

``to_array`` turns a parsed JSON value (nested lists of numbers, bools, strings or
``{"b64": ...}`` objects) into a numpy array of a neutral dtype; ``json_value`` turns an array
into something ``orjson.dumps(..., option=OPT_SERIALIZE_NUMPY)`` writes as TF Serving does.
Every problem with a request value is an INVALID_ARGUMENT naming the input.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

from tfmux.errors import invalid_argument
from tfmux.transports.shapes import MAX_RANK
from tfmux.types import DEFAULT_SIGNATURE, numpy_dtype

# Integers beyond 2**bits - 1 lose precision in the float type (TF Serving rejects them).
_MANTISSA_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
_NATIVE = frozenset(
    ["bool", "float32", "float64"] + [f"{s}int{n}" for s in ("", "u") for n in (8, 16, 32, 64)]
)
# The numpy dtypes orjson writes itself (OPT_SERIALIZE_NUMPY), little- or native-endian.
ORJSON_NATIVE = frozenset(np.dtype(name) for name in _NATIVE)
# The largest finite value of each narrow float type (a cheap test before narrowing float64).
_LARGEST = {"float32": float(np.finfo(np.float32).max), "float16": 65504.0}
_JSON_TYPES: dict[type, str] = {dict: "Object", list: "Array", str: "String"}
_NAN, _INF, _NEG_INF = (orjson.Fragment(t) for t in (b"NaN", b"Infinity", b"-Infinity"))


def parse_json(body: bytes) -> Any:
    """Parse a request body, accepting the NaN/Infinity/-Infinity literals TF Serving accepts.

    Raises INVALID_ARGUMENT for an empty or malformed body, with the parser's position.
    """
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if b"NaN" not in body and b"Infinity" not in body:
            raise invalid_argument(f"JSON Parse error: {exc}") from None
    try:  # the standard library reads the non-finite literals that orjson refuses
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None


def request_object(body: bytes) -> tuple[dict[str, Any], str]:
    """The top-level JSON object of a request and its signature name (default serving_default)."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {snippet(doc)} Is not object")
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {snippet(name)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return doc, name or DEFAULT_SIGNATURE


def is_b64(value: Any) -> bool:
    """Whether a JSON value is a binary string: an object whose only key "b64" holds a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def b64decode(text: str, where: str) -> bytes:
    """Decode standard base64 (padding optional); ``where`` prefixes the error message."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        raise invalid_argument(f"{where}: Unable to base64 decode {snippet(text)}") from None


def snippet(value: Any, limit: int = 80) -> str:
    """A JSON value as short text for error messages."""
    text = json.dumps(value, allow_nan=True, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, in TF Serving's words."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return str(value)
    return _JSON_TYPES.get(type(value), "Number")


def to_array(name: str, value: Any, dtype: str) -> np.ndarray:
    """The tensor a JSON value denotes, as a numpy array of the neutral ``dtype``.

    Numbers take the dtype (ints into int dtypes in range, no float literals; ints into floats
    only while exact; bools only into bool); strings and b64 objects become bytes. Ragged lists,
    wrong types and out-of-range values raise INVALID_ARGUMENT naming ``name``.
    """
    rank = len(_dense_shape(value))
    if rank > MAX_RANK:  # numpy holds at most MAX_RANK dimensions
        raise invalid_argument(f"input '{name}' nests lists {rank} deep, more than {MAX_RANK}")
    if dtype == "string":
        return _string_array(name, value)
    try:
        inferred = np.asarray(value)
    except (ValueError, TypeError, OverflowError):  # ragged lists, or values numpy cannot hold
        return _checked_array(name, value, dtype)
    target = numpy_dtype(dtype)
    if inferred.size == 0:
        return inferred.astype(target)
    if not _fits(inferred, dtype):
        return _checked_array(name, value, dtype)
    if inferred.dtype == target:
        return inferred
    if inferred.dtype.kind == "f" and inferred.itemsize > target.itemsize:  # may overflow
        if float(np.maximum.reduce(np.abs(inferred), axis=None)) <= _LARGEST.get(dtype, 0.0):
            return inferred.astype(target)  # every value finite and in range (NaN compares False)
        with np.errstate(over="ignore"):
            array = inferred.astype(target)
        if (np.isfinite(inferred) & ~np.isfinite(array)).any():  # beyond the float range
            return _checked_array(name, value, dtype)
        return array
    return inferred.astype(target)  # _fits said it is exact


def _fits(inferred: np.ndarray, dtype: str) -> bool:
    """Whether an array numpy inferred from JSON converts to ``dtype`` as TF Serving allows."""
    kind = inferred.dtype.kind
    if dtype == "bool" or kind == "b":
        return dtype == "bool" and kind == "b"
    if kind == "f":
        return dtype in _MANTISSA_BITS
    if kind not in "iu":
        return False
    low, high = int(inferred.min()), int(inferred.max())
    if dtype in _MANTISSA_BITS:
        return max(-low, high) < 1 << _MANTISSA_BITS[dtype]
    info = np.iinfo(numpy_dtype(dtype))
    return bool(info.min <= low and high <= info.max)


def _checked_array(name: str, value: Any, dtype: str) -> np.ndarray:
    """The slow path: check every element, raising for the first bad one, then convert.

    Reached for bad values, and for good ones numpy infers badly (``[0, 2**64 - 1]`` is float64).
    """
    for path, leaf in _walk(name, value, _dense_shape(value), ()):
        problem = _leaf_problem(leaf, dtype)
        if problem:
            where = f"input '{name}': JSON Value: {snippet(leaf)}{_at(path)}"
            raise invalid_argument(f"{where} {problem}")
    return np.array(value, dtype=numpy_dtype(dtype))


def _leaf_problem(leaf: Any, dtype: str) -> str | None:
    """Why one JSON scalar cannot be an element of a ``dtype`` tensor, or None if it can."""
    type_error = f"Type: {json_type(leaf)} is not of expected type: {dtype}"
    if dtype == "bool":
        return None if isinstance(leaf, bool) else type_error
    if isinstance(leaf, bool) or not isinstance(leaf, int | float):
        return type_error
    if dtype in _MANTISSA_BITS:
        return _float_problem(leaf, dtype)
    if isinstance(leaf, float):
        return type_error
    info = np.iinfo(numpy_dtype(dtype))
    if info.min <= leaf <= info.max:
        return None
    return f"is out of range for {dtype} [{info.min}, {info.max}]"


def _float_problem(leaf: int | float, dtype: str) -> str | None:
    if isinstance(leaf, int):
        exact = abs(leaf) < 1 << _MANTISSA_BITS[dtype]
        return None if exact else f"cannot be converted to {dtype} without loss of precision"
    with np.errstate(over="ignore"):
        narrowed = np.asarray(leaf).astype(numpy_dtype(dtype))
    if math.isfinite(leaf) and not np.isfinite(narrowed):
        return f"is out of range for {dtype}"
    return None


def _at(path: tuple[int, ...]) -> str:
    return f" at {list(path)}" if path else ""


def _dense_shape(value: Any) -> tuple[int, ...]:
    """The shape of a nested list, read from the first element at each level (as TF Serving)."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _walk(
    name: str, value: Any, shape: tuple[int, ...], path: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], Any]]:
    """(index path, scalar) for every element of a nested list of ``shape``, in order.

    A list of another length, or a list where a scalar belongs, raises INVALID_ARGUMENT.
    """
    depth = len(path)
    if depth < len(shape) and isinstance(value, list) and len(value) == shape[depth]:
        for index, item in enumerate(value):
            yield from _walk(name, item, shape, (*path, index))
    elif depth == len(shape) and not isinstance(value, list):
        yield path, value
    else:
        expected = f"a list of {shape[depth]}" if depth < len(shape) else "a scalar"
        raise invalid_argument(
            f"input '{name}' is ragged: expected {expected}{_at(path)} but got {snippet(value)} "
            f"(the first elements give shape {list(shape)})"
        )


def _string_array(name: str, value: Any) -> np.ndarray:
    shape = _dense_shape(value)
    leaves = [_leaf_bytes(name, path, leaf) for path, leaf in _walk(name, value, shape, ())]
    out = np.empty(len(leaves), dtype=object)
    out[:] = leaves
    return out.reshape(shape)


def _leaf_bytes(name: str, path: tuple[int, ...], leaf: Any) -> bytes:
    if isinstance(leaf, str):
        return leaf.encode("utf-8", "surrogatepass")
    if is_b64(leaf):
        return b64decode(leaf["b64"], f"input '{name}'{_at(path)}")
    raise invalid_argument(
        f"input '{name}': JSON Value: {snippet(leaf)}{_at(path)} "
        f"Type: {json_type(leaf)} is not of expected type: string"
    )


def json_value(array: np.ndarray, as_bytes: bool = False) -> Any:
    """What orjson (OPT_SERIALIZE_NUMPY) writes as TF Serving's JSON for ``array``.

    Floats print as the shortest text that round-trips their dtype (float16 and bfloat16 widen
    to float32), non-finite ones as NaN/Infinity/-Infinity; strings as UTF-8 text, or as
    ``{"b64": ...}`` objects when ``as_bytes`` or when any value is not valid UTF-8.
    """
    if array.dtype.kind in "OSU":
        return _strings(array, as_bytes)
    if array.dtype not in ORJSON_NATIVE:
        if array.dtype.name in ("float16", "bfloat16"):
            array = array.astype(np.float32)
        elif array.dtype.name in _NATIVE:  # the other byte order
            array = array.astype(array.dtype.newbyteorder("="))
        else:
            name = array.dtype.name
            raise invalid_argument(f"Failed to write JSON value for tensor type: {name}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return _nonfinite(array)
    return np.ascontiguousarray(array) if array.ndim else array[()]


def _nonfinite(array: np.ndarray) -> Any:
    """Nested lists of shortest-text floats with NaN/Infinity literals (orjson writes null)."""
    wide = array.astype(str).astype(np.float64) if array.dtype == np.float32 else array
    out = wide.astype(object)
    out[np.isnan(wide)] = _NAN
    out[wide == np.inf] = _INF
    out[wide == -np.inf] = _NEG_INF
    return out.tolist()


def _strings(array: np.ndarray, as_bytes: bool) -> Any:
    flat = array.ravel()
    texts = None if as_bytes else _utf8_texts(flat)
    out = np.empty(flat.size, dtype=object)
    out[:] = texts if texts is not None else [_b64_object(v) for v in flat]
    return out.reshape(array.shape).tolist()


def _utf8_texts(flat: np.ndarray) -> list[str] | None:
    try:
        return [v if isinstance(v, str) else bytes(v).decode() for v in flat]
    except UnicodeDecodeError:
        return None


def _b64_object(value: bytes | str) -> dict[str, str]:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    return {"b64": base64.b64encode(raw).decode("ascii")}


def dumps(document: Any) -> bytes:
    """orjson with numpy support: what every encoder here writes with."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
