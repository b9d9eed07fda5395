"""TensorProto <-> numpy: every dtype, both encodings, broadcast, errors; checked against
TensorFlow's own make_tensor_proto / make_ndarray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import types_pb2

from tfmux.errors import ErrorKind, ServingError
from tfmux.transports import tensor_proto as tp
from tfmux.types import DTYPE_TO_TF, numpy_dtype

pytestmark = pytest.mark.tf

NUMERIC = [d for d in DTYPE_TO_TF if d != "string"]


def sample(dtype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values that exercise the dtype's range (extremes, negatives, non-integers)."""
    count = math.prod(shape)
    if dtype == "string":
        pool = [b"", b"a", b"\xff\x00bytes", "ünï".encode()]
        out = np.empty(count, dtype=object)
        out[:] = [pool[i % len(pool)] for i in range(count)]
        return out.reshape(shape)
    target = numpy_dtype(dtype)
    if dtype == "bool":
        return (np.arange(count) % 2 == 0).reshape(shape)
    if target.kind in "iu":
        info = np.iinfo(target)
        pool = [info.min, info.max, 0, 1, info.max // 3]
        return np.array([pool[i % len(pool)] for i in range(count)], dtype=target).reshape(shape)
    pool = [0.0, -1.5, 3.25, 1e4, -0.0, np.inf]
    return np.array([pool[i % len(pool)] for i in range(count)]).astype(target).reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or str(a.dtype) == "bfloat16":
        wide_a, wide_b = a.astype(np.float64), b.astype(np.float64)
        return bool(np.array_equal(wide_a, wide_b, equal_nan=True))
    return bool(np.array_equal(a, b))


def invalid(excinfo: pytest.ExceptionInfo[ServingError]) -> str:
    assert excinfo.value.kind is ErrorKind.INVALID_ARGUMENT
    return excinfo.value.message


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [False, True], ids=["typed", "content"])
@pytest.mark.parametrize("dtype", list(DTYPE_TO_TF))
def test_round_trip_every_dtype(dtype: str, content: bool) -> None:
    array = sample(dtype)
    proto = tp.to_tensor_proto("x", array, content=content)
    assert types_pb2.DataType.Name(proto.dtype) == DTYPE_TO_TF[dtype]
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3]
    uses_content = content and dtype != "string"
    assert bool(proto.tensor_content) == uses_content
    if not uses_content:
        assert len(getattr(proto, tp.VALUE_FIELD[dtype])) == 6
    assert same(tp.to_array("x", proto), array)


@pytest.mark.parametrize("content", [False, True], ids=["typed", "content"])
@pytest.mark.parametrize("dtype", list(DTYPE_TO_TF))
def test_tensorflow_reads_what_we_write(dtype: str, content: bool) -> None:
    array = sample(dtype)
    decoded = tf.make_ndarray(tp.to_tensor_proto("x", array, content=content))
    assert same(decoded.astype(array.dtype), array)


@pytest.mark.parametrize("dtype", list(DTYPE_TO_TF))
def test_we_read_what_tensorflow_writes(dtype: str) -> None:
    for shape in [(2, 3), (1,), (), (0, 4)]:
        array = sample(dtype, shape)
        assert same(tp.to_array("x", tf.make_tensor_proto(array)), array), shape


@pytest.mark.parametrize("dtype", list(DTYPE_TO_TF))
def test_a_single_value_fills_the_shape_like_make_ndarray(dtype: str) -> None:
    value = sample(dtype, (1,))
    proto = tf.make_tensor_proto(value, shape=[2, 3])
    assert not proto.tensor_content
    decoded = tp.to_array("x", proto)
    assert same(decoded, tf.make_ndarray(proto).astype(decoded.dtype))
    assert same(decoded, np.full((2, 3), value[0], dtype=value.dtype))


def test_scalars_and_empty_tensors() -> None:
    scalar = tp.to_array("x", tp.to_tensor_proto("x", np.float32(2.5)))
    assert scalar.shape == () and scalar == np.float32(2.5)
    empty = tp.to_array("x", tp.to_tensor_proto("x", np.zeros((0, 3), np.int64)))
    assert empty.shape == (0, 3) and empty.dtype == np.int64


def test_typed_float_and_bool_use_packed_fields_identical_to_extend() -> None:
    """The packed fast path writes exactly what appending the values one by one writes."""
    for array in [np.array([1.5, -2.0, np.nan], np.float32), np.array([0.1, 2.0]), [True, False]]:
        array = np.asarray(array)
        fast = tp.to_tensor_proto("x", array)
        slow = tp.TensorProto()
        slow.CopyFrom(fast)
        field = tp.VALUE_FIELD[str(array.dtype)]
        slow.ClearField(field)
        getattr(slow, field).extend(array.tolist())
        assert fast.SerializeToString() == slow.SerializeToString()


def test_big_endian_arrays_are_written_little_endian() -> None:
    array = np.arange(4, dtype=">i4")
    proto = tp.to_tensor_proto("x", array, content=True)
    assert proto.tensor_content == np.arange(4, dtype="<i4").tobytes()
    assert tp.to_array("x", proto).tolist() == [0, 1, 2, 3]


def test_str_values_are_encoded_as_utf8() -> None:
    array = np.array(["ab", "é"], dtype=object)
    assert list(tp.to_tensor_proto("s", array).string_val) == [b"ab", "é".encode()]


# -- errors -----------------------------------------------------------------------------------


def proto_of(dtype: str, shape: list[int], **fields: object) -> object:
    proto = tp.TensorProto(dtype=types_pb2.DataType.Value(dtype), **fields)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=s) for s in shape)
    return proto


@pytest.mark.parametrize(
    ("proto", "needles"),
    [
        (proto_of("DT_FLOAT", [2, 3], tensor_content=b"\0" * 20), ["20 bytes", "needs 24"]),
        (proto_of("DT_FLOAT", [2, 3], float_val=[1.0, 2.0]), ["6 values", "2 values in float_val"]),
        (proto_of("DT_FLOAT", [2], float_val=[1.0, 2.0, 3.0]), ["3 values in float_val"]),
        (proto_of("DT_INT64", [2], int_val=[1, 2]), ["0 values in int64_val", "int_val instead"]),
        (proto_of("DT_FLOAT", [0], float_val=[1.0]), ["1 values in float_val"]),
        (proto_of("DT_INT8", [1], int_val=[300]), ["300", "int8"]),
        (proto_of("DT_UINT16", [1], int_val=[-1]), ["-1", "uint16"]),
        (proto_of("DT_HALF", [1], half_val=[70000]), ["70000", "float16 bit pattern"]),
        (proto_of("DT_STRING", [1], tensor_content=b"abc"), ["string_val"]),
        (proto_of("DT_COMPLEX64", [1], scomplex_val=[1.0, 2.0]), ["DT_COMPLEX64"]),
        (proto_of("DT_INVALID", [1]), ["DT_INVALID"]),
        (proto_of("DT_FLOAT", [-1], float_val=[1.0]), ["negative"]),
        (proto_of("DT_FLOAT", [2**40, 2**20], float_val=[1.0]), ["more than"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_malformed_protos_are_invalid_argument_naming_the_input(proto, needles) -> None:
    with pytest.raises(ServingError) as excinfo:
        tp.to_array("the_input", proto)
    message = invalid(excinfo)
    assert "'the_input'" in message
    for needle in needles:
        assert needle in message


def test_unknown_rank_is_rejected() -> None:
    proto = tp.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(ServingError) as excinfo:
        tp.to_array("x", proto)
    assert "unknown rank" in invalid(excinfo)


def test_unencodable_output_dtype_is_unimplemented() -> None:
    with pytest.raises(ServingError) as excinfo:
        tp.to_tensor_proto("z", np.array([1 + 2j], np.complex64))
    assert excinfo.value.kind is ErrorKind.UNIMPLEMENTED
    assert "'z'" in excinfo.value.message


# -- property -------------------------------------------------------------------------------


def arrays(dtype: str) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    if dtype == "string":
        return shapes.flatmap(
            lambda shape: st.lists(
                st.binary(max_size=8), min_size=math.prod(shape), max_size=math.prod(shape)
            ).map(lambda items: _object_array(items, shape))
        )
    if dtype == "bfloat16":
        return hnp.arrays(np.float32, shapes).map(lambda a: a.astype(numpy_dtype(dtype)))
    return hnp.arrays(numpy_dtype(dtype), shapes)


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(list(DTYPE_TO_TF)),
    content=st.booleans(),
)
def test_every_array_survives_a_round_trip_and_tensorflow_agrees(data, dtype, content) -> None:
    array = data.draw(arrays(dtype))
    proto = tp.to_tensor_proto("x", array, content=content)
    assert same(tp.to_array("x", proto), array)
    assert same(tf.make_ndarray(proto).astype(array.dtype), array)
    reparsed = tp.TensorProto.FromString(proto.SerializeToString())
    assert same(tp.to_array("x", reparsed), array)
