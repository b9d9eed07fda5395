"""Fuzzing the protobuf tensor decoders: TensorFlow's TensorProto (tensor_proto, TF Serving's
gRPC API) and KServe V2 gRPC tensors (v2_proto: typed contents and raw_input_contents).

Structured random messages and byte-mutated valid messages that still parse may only raise the
project's own ServingError; valid tensors of every dtype round-trip. Each escape these tests
found is pinned by a regression example (``@example``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st
from tensorflow.core.framework.tensor_pb2 import TensorProto
from tritonclient.grpc import service_pb2 as pb

from tfmux.transports import tensor_proto, v2_proto
from tfmux.transports.v2_types import DATATYPE_OF, to_raw

from .fuzzing import DTYPES, arrays, fuzz, mutations, only_serving_errors, same

pytestmark = pytest.mark.tf

INT64_MAX = 2**63 - 1
DIMS = st.lists(
    st.integers(0, 4) | st.sampled_from([-1, 2**31, 2**40, INT64_MAX]), max_size=5
) | st.just([1] * 65)
SCALAR_FIELDS = {  # TensorProto's typed value fields and values that fit their wire types
    "half_val": st.integers(-(2**31), 2**31 - 1),
    "float_val": st.floats(width=32),
    "double_val": st.floats(),
    "int_val": st.integers(-(2**31), 2**31 - 1),
    "int64_val": st.integers(-(2**63), INT64_MAX),
    "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
    "bool_val": st.booleans(),
    "string_val": st.binary(max_size=4),
}


# -- TensorProto ----------------------------------------------------------------------------------


@st.composite
def tensor_protos(draw: st.DrawFn) -> TensorProto:
    proto = TensorProto(dtype=draw(st.integers(0, 30) | st.integers(100, 130)))
    if draw(st.booleans()):
        proto.tensor_shape.unknown_rank = draw(st.booleans())
    for size in draw(DIMS):
        proto.tensor_shape.dim.add(size=size)
    if draw(st.booleans()):
        proto.tensor_content = draw(st.binary(max_size=40))
    for field in draw(st.lists(st.sampled_from(sorted(SCALAR_FIELDS)), max_size=2)):
        getattr(proto, field).extend(draw(st.lists(SCALAR_FIELDS[field], max_size=6)))
    return proto


def _proto(dtype: int, dims: list[int], **fields: Any) -> TensorProto:
    proto = TensorProto(dtype=dtype, **fields)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


@fuzz(200)
@given(proto=tensor_protos())
@example(proto=_proto(1, [1] * 65, float_val=[1.0]))  # > 64 dims (was ValueError)
@example(proto=_proto(1, [0, 2**62]))  # empty, but too big for numpy (was ValueError)
@example(proto=_proto(7, [0, 2**62]))  # the same for strings
def test_tensor_protos_raise_only_serving_errors(proto: TensorProto) -> None:
    only_serving_errors(lambda: tensor_proto.to_array("x", proto))


@fuzz(100)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), content=st.booleans())
def test_mutated_tensor_protos_raise_only_serving_errors(
    data: st.DataObject, dtype: str, content: bool
) -> None:
    array = data.draw(arrays(dtype))
    wire = tensor_proto.to_tensor_proto("x", array, content=content).SerializeToString()
    proto = TensorProto()
    try:
        proto.ParseFromString(data.draw(mutations(wire)))
    except DecodeError:
        return  # the gRPC layer refuses it before any decoder sees it
    only_serving_errors(lambda: tensor_proto.to_array("x", proto))


@fuzz(60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), content=st.booleans())
def test_tensor_protos_round_trip(data: st.DataObject, dtype: str, content: bool) -> None:
    array = data.draw(arrays(dtype))
    proto = tensor_proto.to_tensor_proto("x", array, content=content)
    assert same(
        tensor_proto.to_array("x", TensorProto.FromString(proto.SerializeToString())), array
    )


# -- KServe V2 gRPC ------------------------------------------------------------------------------

CONTENTS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), INT64_MAX),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=4),
}
DATATYPES = st.sampled_from(sorted(DATATYPE_OF.values())) | st.text(max_size=4)


@st.composite
def infer_requests(draw: st.DrawFn) -> Any:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["m", "m@stable", "@", "m@", ""])),
        model_version=draw(st.sampled_from(["", "1", "-1", "x", "\u0663"])),
    )
    for key in draw(st.lists(st.sampled_from(["timeout", "version_label", "routing_key"]))):
        param = request.parameters[key]
        choice = draw(st.sampled_from(["string_param", "int64_param", "bool_param"]))
        value = {"string_param": "s", "int64_param": draw(st.integers(-5, 5)), "bool_param": True}
        setattr(param, choice, value[choice])
    for index in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["x", "y", f"i{index}"])),
            datatype=draw(DATATYPES),
            shape=draw(DIMS),
        )
        for field in draw(st.lists(st.sampled_from(sorted(CONTENTS)), max_size=2)):
            getattr(tensor.contents, field).extend(draw(st.lists(CONTENTS[field], max_size=6)))
        if draw(st.integers(0, 5)) == 0:
            tensor.parameters[draw(st.sampled_from(["classification", "binary_data_size"]))]
    if draw(st.booleans()):
        for _ in range(draw(st.integers(0, 3))):
            request.raw_input_contents.append(draw(st.binary(max_size=24)))
    for name in draw(st.lists(st.sampled_from(["o", "p"]), max_size=3)):
        request.outputs.add(name=name)
    return request


def _v2_calls(request: Any) -> None:
    only_serving_errors(lambda: v2_proto.parse_call(request, "key"))
    only_serving_errors(lambda: v2_proto.decode_inputs(request))


def _v2_request(**tensor: Any) -> Any:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(**tensor)
    return request


@fuzz(150)
@given(request=infer_requests())
@example(request=_v2_request(name="x", datatype="FP32", shape=[1] * 65))  # was ValueError
@example(request=_v2_request(name="x", datatype="BYTES", shape=[0, 2**62]))
def test_v2_grpc_requests_raise_only_serving_errors(request: Any) -> None:
    _v2_calls(request)


@fuzz(100)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), raw=st.booleans())
def test_mutated_v2_grpc_requests_raise_only_serving_errors(
    data: st.DataObject, dtype: str, raw: bool
) -> None:
    wire = _valid_request(data.draw(arrays(dtype)), raw or dtype in ("float16", "bfloat16"))
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(data.draw(mutations(wire.SerializeToString())))
    except DecodeError:
        return
    _v2_calls(request)


def _valid_request(array: np.ndarray, raw: bool) -> Any:
    datatype = DATATYPE_OF[str(array.dtype) if array.dtype.kind != "O" else "string"]
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=array.shape)
    if raw:
        request.raw_input_contents.append(to_raw(array))
    else:
        field = v2_proto.CONTENTS_FIELD[datatype]
        getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    return request


@fuzz(60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), raw=st.booleans())
def test_v2_grpc_tensors_round_trip(data: st.DataObject, dtype: str, raw: bool) -> None:
    array = data.draw(arrays(dtype))
    request = _valid_request(array, raw or dtype in ("float16", "bfloat16"))
    decoded = v2_proto.decode_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))
    assert same(decoded["x"], array), (array, decoded["x"])
