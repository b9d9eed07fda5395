"""End to end over real sockets: KServe V2 gRPC with tritonclient.grpc and the raw stubs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tfmux.config import ModelConfig, ServerConfig
from tfmux.errors import ErrorKind, ServingError
from tfmux.transports import v2_proto
from tfmux.transports.v2_types import to_raw
from tfmux.types import InferenceResult, SignatureSpec

from . import savedmodels as sm
from .harness import BackgroundServer

pytestmark = pytest.mark.tf

A = np.array([[1.5, 2.0], [0.0, -1.0], [3.25, 4.5]], dtype=np.float32)
B = np.array([3, -4, 2**40], dtype=np.int64)
S = np.array([b"abc", b"x\x00y", b""], dtype=object)
MULTI_OUTPUTS = ["b_twice", "s_len", "s_upper", "sum"]


@pytest.fixture(scope="module")
def target(e2e_server: BackgroundServer) -> str:
    return f"127.0.0.1:{e2e_server.server.grpc_port}"


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(target: str) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def multi_expected(model_root: Path) -> dict[str, np.ndarray]:
    """What TensorFlow itself computes for A, B, S."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_root / "multi/1")).signatures["serving_default"]
    outputs = fn(a=tf.constant(A), b=tf.constant(B), s=tf.constant(S.astype(bytes)))
    return {k: v.numpy() for k, v in outputs.items()}


def tensor(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    """A request input; ``contents`` are typed contents fields (e.g. fp32_contents=[...])."""
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        t.contents.CopyFrom(pb.InferTensorContents(**contents))
    return t


def typed_multi_request(**overrides: Any) -> Any:
    """A ModelInferRequest for ``multi`` with typed contents; ``overrides`` replace inputs."""
    inputs = {
        "a": tensor("a", "FP32", [3, 2], fp32_contents=A.reshape(-1).tolist()),
        "b": tensor("b", "INT64", [3], int64_contents=B.tolist()),
        "s": tensor("s", "BYTES", [3], bytes_contents=list(S)),
    }
    inputs.update(overrides)
    return pb.ModelInferRequest(model_name="multi", inputs=list(inputs.values()))


def raw_multi_request() -> Any:
    request = typed_multi_request(
        a=tensor("a", "FP32", [3, 2]), b=tensor("b", "INT64", [3]), s=tensor("s", "BYTES", [3])
    )
    request.raw_input_contents.extend([to_raw(A), to_raw(B), to_raw(S)])
    return request


def outputs_of(response: Any) -> dict[str, np.ndarray]:
    """Decode a raw ModelInferResponse the way tritonclient does."""
    return {out.name: triton.InferResult(response).as_numpy(out.name) for out in response.outputs}


def assert_multi(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == MULTI_OUTPUTS
    for name in MULTI_OUTPUTS:
        assert got[name].dtype == expected[name].dtype or expected[name].dtype.kind == "O"
        np.testing.assert_array_equal(got[name], expected[name])


def assert_good(stub: Any, expected: dict[str, np.ndarray]) -> None:
    """After any bad request, good ones still succeed."""
    assert_multi(outputs_of(stub.ModelInfer(typed_multi_request())), expected)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# -- health, metadata, repository -------------------------------------------------------------


def test_server_live_ready_and_metadata(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "tfmux"
    assert meta.version
    assert list(meta.extensions) == ["model_repository"]


def test_model_readiness(client, stub) -> None:
    assert client.is_model_ready("binary")
    assert client.is_model_ready("versioned", "2")
    assert not client.is_model_ready("versioned", "7")
    assert not client.is_model_ready("corrupt")
    assert not client.is_model_ready("no-such-model")
    code, details = code_of(
        lambda: stub.ModelReady(pb.ModelReadyRequest(name="binary", version="x"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in details


def test_model_metadata(client) -> None:
    meta = client.get_model_metadata("multi")
    assert (meta.name, list(meta.versions), meta.platform) == (
        "multi",
        ["1"],
        "tensorflow_savedmodel",
    )
    inputs = [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]
    assert inputs == [("a", "FP32", [-1, 2]), ("b", "INT64", [-1]), ("s", "BYTES", [-1])]
    outputs = [(t.name, t.datatype, list(t.shape)) for t in meta.outputs]
    assert outputs == [
        ("b_twice", "INT64", [-1]),
        ("s_len", "INT32", [-1]),
        ("s_upper", "BYTES", [-1]),
        ("sum", "FP32", [-1]),
    ]
    versioned = client.get_model_metadata("versioned", "2")
    assert list(versioned.versions) == ["1", "2", "3"]


def test_model_metadata_errors(stub) -> None:
    unknown = pb.ModelMetadataRequest(name="no-such-model")
    assert code_of(lambda: stub.ModelMetadata(unknown))[0] == grpc.StatusCode.NOT_FOUND
    missing = pb.ModelMetadataRequest(name="multi", version="9")
    assert code_of(lambda: stub.ModelMetadata(missing))[0] == grpc.StatusCode.NOT_FOUND
    failed = pb.ModelMetadataRequest(name="corrupt")
    assert code_of(lambda: stub.ModelMetadata(failed))[0] == grpc.StatusCode.UNAVAILABLE
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="multi")).name == "multi"


def test_repository_index(client, stub) -> None:
    index = client.get_model_repository_index()
    entries = {(m.name, m.version): (m.state, m.reason) for m in index.models}
    assert entries[("binary", "1")] == ("READY", "")
    assert {entries[("versioned", v)][0] for v in "123"} == {"READY"}
    state, reason = entries[("corrupt", "1")]
    assert state == "UNAVAILABLE" and reason
    state, reason = entries[("missing", "")]
    assert state == "UNAVAILABLE" and "does-not-exist" in reason
    ready = {m.name for m in index.models if m.state == "READY"}
    only_ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert {m.name for m in only_ready} == ready
    assert {m.state for m in only_ready} == {"READY"}
    assert "corrupt" not in ready


@pytest.mark.parametrize(
    "rpc, request_",
    [
        ("ModelConfig", pb.ModelConfigRequest(name="binary")),
        ("ModelStatistics", pb.ModelStatisticsRequest(name="binary")),
        ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest()),
        ("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest(name="r")),
        ("TraceSetting", pb.TraceSettingRequest()),
        ("LogSettings", pb.LogSettingsRequest()),
    ],
)
def test_unimplemented_rpcs_say_so(stub, multi_expected, rpc, request_) -> None:
    code, details = code_of(lambda: getattr(stub, rpc)(request_))
    assert code == grpc.StatusCode.UNIMPLEMENTED and rpc in details
    assert_good(stub, multi_expected)


def test_stream_infer_is_unimplemented(stub, client, multi_expected) -> None:
    code, details = code_of(lambda: list(stub.ModelStreamInfer(iter([typed_multi_request()]))))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "ModelStreamInfer" in details
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("binary")
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert_good(stub, multi_expected)


# -- inference ----------------------------------------------------------------------------------


def triton_inputs(a: np.ndarray = A, b: np.ndarray = B, s: np.ndarray = S) -> list[Any]:
    inputs = []
    for name, array, datatype in (("a", a, "FP32"), ("b", b, "INT64"), ("s", s, "BYTES")):
        datatype = {"int32": "INT32", "float64": "FP64"}.get(str(array.dtype), datatype)
        item = triton.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def test_infer_raw_with_tritonclient_equals_tensorflow(client, multi_expected) -> None:
    result = client.infer("multi", triton_inputs(), request_id="req-7")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("multi", "1", "req-7")
    assert_multi({n: result.as_numpy(n) for n in MULTI_OUTPUTS}, multi_expected)
    shapes = {o.name: (o.datatype, list(o.shape)) for o in response.outputs}
    assert shapes == {
        "b_twice": ("INT64", [3]),
        "s_len": ("INT32", [3]),
        "s_upper": ("BYTES", [3]),
        "sum": ("FP32", [3]),
    }


def test_infer_typed_contents_equals_tensorflow(stub, multi_expected) -> None:
    request = typed_multi_request()
    request.id = "typed"
    response = stub.ModelInfer(request)
    assert (response.model_version, response.id) == ("1", "typed")
    assert len(response.raw_output_contents) == len(response.outputs)
    assert_multi(outputs_of(response), multi_expected)


def test_raw_stub_and_rest_give_the_same_answer(stub, e2e_server, multi_expected) -> None:
    grpc_outputs = outputs_of(stub.ModelInfer(raw_multi_request()))
    assert_multi(grpc_outputs, multi_expected)
    body = {"inputs": {"a": A.tolist(), "b": B.tolist(), "s": [v.decode() for v in S]}}
    rest = httpx.post(f"{e2e_server.url}/v1/models/multi:predict", content=json.dumps(body))
    assert rest.status_code == 200, rest.text
    for name, values in rest.json()["outputs"].items():
        got = grpc_outputs[name]
        if got.dtype == object:
            assert [v.decode() for v in got] == values
        else:
            np.testing.assert_array_equal(got, np.array(values, dtype=got.dtype))


def test_requested_outputs_select_and_order(client) -> None:
    outputs = [triton.InferRequestedOutput("sum"), triton.InferRequestedOutput("s_len")]
    result = client.infer("multi", triton_inputs(), outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["sum", "s_len"]
    np.testing.assert_array_equal(result.as_numpy("s_len"), [3, 3, 0])


def test_lossless_dtype_conversions_are_accepted(client, stub) -> None:
    # INT32 for an INT64 input and exactly representable FP64 for an FP32 input.
    result = client.infer(
        "multi", triton_inputs(a=A.astype(np.float64), b=np.array([3, -4, 5], np.int32))
    )
    np.testing.assert_array_equal(result.as_numpy("b_twice"), [6, -8, 10])
    np.testing.assert_array_equal(result.as_numpy("sum"), [6.5, -5.0, 12.75])
    typed = typed_multi_request(
        a=tensor("a", "FP64", [3, 2], fp64_contents=A.reshape(-1).tolist()),
        b=tensor("b", "INT32", [3], int_contents=[3, -4, 5]),
    )
    np.testing.assert_array_equal(outputs_of(stub.ModelInfer(typed))["b_twice"], [6, -8, 10])


def test_other_models_versions_and_signatures(client, model_root) -> None:
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], np.float32)
    item = triton.InferInput("x", [2, 3], "FP32")
    item.set_data_from_numpy(x)
    sums = x.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(client.infer("twin_a", [item]).as_numpy("y"), 2.0 * sums, 1e-6)
    assert client.infer("binary", [item]).as_numpy("probability").shape == (2, 1)

    v = triton.InferInput("x", [2], "FP32")
    v.set_data_from_numpy(np.array([1.5, -2.0], np.float32))
    result = client.infer("versioned", [v], model_version="3")
    assert result.get_response().model_version == "3"
    np.testing.assert_array_equal(result.as_numpy("y"), [4.5, -6.0])
    assert client.infer("versioned", [v]).get_response().model_version == "3"

    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]]
    examples = triton.InferInput("inputs", [2], "BYTES")
    examples.set_data_from_numpy(sm.serialize_examples(rows))
    regressed = client.infer("cr", [examples], parameters={"signature_name": "regress"})
    expected = np.array(rows, np.float32) @ sm.REGRESS_WEIGHTS + sm.REGRESS_BIAS
    np.testing.assert_allclose(regressed.as_numpy("outputs"), expected, rtol=1e-6)


def test_errors_through_tritonclient(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", triton_inputs())
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("multi", triton_inputs(), parameters={"signature_name": "nope"})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.infer("multi", triton_inputs()).as_numpy("sum") is not None


def _with_raw(request: Any, raw: list[bytes]) -> Any:
    request.raw_input_contents.extend(raw)
    return request


def _raw_inputs(*inputs: Any) -> Any:
    return pb.ModelInferRequest(model_name="multi", inputs=list(inputs))


_NO_DATA = (tensor("a", "FP32", [3, 2]), tensor("b", "INT64", [3]), tensor("s", "BYTES", [3]))
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MALFORMED: list[tuple[str, Callable[[], Any], grpc.StatusCode, str]] = [
    (
        "unknown datatype",
        lambda: typed_multi_request(a=tensor("a", "FLOAT32", [3, 2], fp32_contents=[0.0] * 6)),
        INVALID,
        "FLOAT32",
    ),
    (
        "shape does not match the contents",
        lambda: typed_multi_request(a=tensor("a", "FP32", [3, 2], fp32_contents=[0.0] * 5)),
        INVALID,
        "holds 6 values",
    ),
    (
        "contents in the wrong field",
        lambda: typed_multi_request(b=tensor("b", "INT64", [3], int_contents=[1, 2, 3])),
        INVALID,
        "int64_contents",
    ),
    (
        "FP16 as typed contents",
        lambda: typed_multi_request(a=tensor("a", "FP16", [3, 2], fp32_contents=[0.0] * 6)),
        INVALID,
        "raw_input_contents",
    ),
    (
        "INT8 value out of range",
        lambda: typed_multi_request(b=tensor("b", "INT8", [3], int_contents=[1, 300, 2])),
        INVALID,
        "range of INT8",
    ),
    (
        "negative dimension",
        lambda: typed_multi_request(b=tensor("b", "INT64", [-3], int64_contents=[1, 2, 3])),
        INVALID,
        "negative",
    ),
    (
        "shape too large",
        lambda: typed_multi_request(b=tensor("b", "INT64", [2**40, 2**40, 0, 2**40])),
        INVALID,
        "more than the 2147483647 a tensor may have",
    ),
    (
        "shape overflows int64",
        lambda: _with_raw(
            _raw_inputs(tensor("a", "FP32", [2**32, 2**32]), *_NO_DATA[1:]),
            [b"", to_raw(B), to_raw(S)],
        ),
        INVALID,
        "more than the 2147483647 a tensor may have",
    ),
    (
        "input twice",
        lambda: _raw_inputs(*typed_multi_request().inputs, tensor("b", "INT64", [0])),
        INVALID,
        "more than once",
    ),
    (
        "raw content sizes do not add up",
        lambda: _with_raw(_raw_inputs(*_NO_DATA), [to_raw(A)[:-4], to_raw(B), to_raw(S)]),
        INVALID,
        "bytes of raw data",
    ),
    (
        "truncated BYTES raw content",
        lambda: _with_raw(_raw_inputs(*_NO_DATA), [to_raw(A), to_raw(B), to_raw(S)[:-1]]),
        INVALID,
        "'s'",
    ),
    (
        "raw content and typed contents for one tensor",
        lambda: _with_raw(typed_multi_request(), [to_raw(A), to_raw(B), to_raw(S)]),
        INVALID,
        "typed contents",
    ),
    (
        "fewer raw contents than inputs",
        lambda: _with_raw(_raw_inputs(*_NO_DATA), [to_raw(A), to_raw(B)]),
        INVALID,
        "2 raw_input_contents for 3 inputs",
    ),
    (
        "more raw contents than inputs",
        lambda: _with_raw(_raw_inputs(*_NO_DATA), [to_raw(A), to_raw(B), to_raw(S), b""]),
        INVALID,
        "4 raw_input_contents for 3 inputs",
    ),
    (
        "missing input",
        lambda: _raw_inputs(*typed_multi_request().inputs[:2]),
        INVALID,
        "missing input",
    ),
    (
        "unknown input",
        lambda: _raw_inputs(*typed_multi_request().inputs, tensor("z", "INT64", [0])),
        INVALID,
        "'z'",
    ),
    (
        "shape the graph cannot take",  # shapes are left to the graph, as in TF Serving
        lambda: typed_multi_request(a=tensor("a", "FP32", [6], fp32_contents=[0.0] * 6)),
        INVALID,
        "Invalid reduction dimension",
    ),
    (
        "lossy FP64 to FP32",
        lambda: typed_multi_request(a=tensor("a", "FP64", [3, 2], fp64_contents=[0.1] * 6)),
        INVALID,
        "without loss",
    ),
    (
        "BYTES for a number",
        lambda: typed_multi_request(b=tensor("b", "BYTES", [3], bytes_contents=[b"1"] * 3)),
        INVALID,
        "without loss",
    ),
    (
        "unknown model",
        lambda: pb.ModelInferRequest(model_name="nope", inputs=typed_multi_request().inputs),
        grpc.StatusCode.NOT_FOUND,
        "nope",
    ),
    (
        "unknown version",
        lambda: pb.ModelInferRequest(
            model_name="multi", model_version="9", inputs=typed_multi_request().inputs
        ),
        grpc.StatusCode.NOT_FOUND,
        "Specific(multi, 9)",
    ),
    (
        "version not a number",
        lambda: pb.ModelInferRequest(
            model_name="multi", model_version="v1", inputs=typed_multi_request().inputs
        ),
        INVALID,
        "'v1'",
    ),
    ("no model name", lambda: pb.ModelInferRequest(), INVALID, "model_name"),
    (
        "unknown output",
        lambda: _outputs(typed_multi_request(), "sum", "nope"),
        INVALID,
        "'nope'",
    ),
    (
        "output twice",
        lambda: _outputs(typed_multi_request(), "sum", "sum"),
        INVALID,
        "more than once",
    ),
    (
        "signature_name not a string",
        lambda: _signature_param(typed_multi_request()),
        INVALID,
        "signature_name",
    ),
    (
        "classification",
        lambda: _classification(typed_multi_request()),
        grpc.StatusCode.UNIMPLEMENTED,
        "classification",
    ),
    (
        "model that cannot load",
        lambda: pb.ModelInferRequest(model_name="corrupt"),
        grpc.StatusCode.UNAVAILABLE,
        "corrupt",
    ),
    (
        "model whose graph rejects the input",
        lambda: pb.ModelInferRequest(
            model_name="failing", inputs=[tensor("x", "FP32", [1, 1], fp32_contents=[-1.0])]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non-negative",
    ),
]


def _outputs(request: Any, *names: str) -> Any:
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in names)
    return request


def _signature_param(request: Any) -> Any:
    request.parameters["signature_name"].int64_param = 1
    return request


def _classification(request: Any) -> Any:
    output = pb.ModelInferRequest.InferRequestedOutputTensor(name="sum")
    output.parameters["classification"].int64_param = 2
    request.outputs.append(output)
    return request


@pytest.mark.parametrize(
    "build, code, needle", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_get_clear_errors(stub, multi_expected, build, code, needle) -> None:
    got, details = code_of(lambda: stub.ModelInfer(build()))
    assert got == code, details
    assert needle in details
    assert_good(stub, multi_expected)


def test_infer_is_counted_with_method_infer(client, e2e_server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client.infer("multi", triton_inputs())
    text = httpx.get(f"{e2e_server.url}/metrics").text
    counts = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tfmux_requests_total"
        and s.labels.items() >= {"model": "multi", "method": "infer", "code": "OK"}.items()
    ]
    assert counts and counts[0] >= 1


# -- the codec on its own: every datatype, typed and raw -------------------------------------

TYPED = [
    ("BOOL", "bool_contents", [True, False, True], np.bool_),
    ("INT8", "int_contents", [-128, 0, 127], np.int8),
    ("INT16", "int_contents", [-32768, 1, 32767], np.int16),
    ("INT32", "int_contents", [-(2**31), 0, 2**31 - 1], np.int32),
    ("INT64", "int64_contents", [-(2**63), 0, 2**63 - 1], np.int64),
    ("UINT8", "uint_contents", [0, 1, 255], np.uint8),
    ("UINT16", "uint_contents", [0, 1, 65535], np.uint16),
    ("UINT32", "uint_contents", [0, 1, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [0, 1, 2**64 - 1], np.uint64),
    ("FP32", "fp32_contents", [0.5, -1.25, float(np.finfo(np.float32).max)], np.float32),
    ("FP64", "fp64_contents", [0.1, -1e300, 5e-324], np.float64),
    ("BYTES", "bytes_contents", [b"a", b"", b"\xff\x00"], object),
]


@pytest.mark.parametrize("datatype, field, values, dtype", TYPED, ids=[t[0] for t in TYPED])
def test_typed_and_raw_contents_decode_exactly(datatype, field, values, dtype) -> None:
    typed = pb.ModelInferRequest(inputs=[tensor("t", datatype, [1, 3], **{field: values})])
    got = v2_proto.decode_inputs(typed)["t"]
    assert got.dtype == np.dtype(dtype) and got.shape == (1, 3)
    assert got.reshape(-1).tolist() == values
    raw = pb.ModelInferRequest(inputs=[tensor("t", datatype, [1, 3])])
    raw.raw_input_contents.append(to_raw(got))
    np.testing.assert_array_equal(v2_proto.decode_inputs(raw)["t"], got)


@pytest.mark.parametrize("datatype", ["INT8", "INT16", "UINT8", "UINT16"])
def test_narrow_integers_out_of_range_are_refused(datatype) -> None:
    field = "uint_contents" if datatype.startswith("U") else "int_contents"
    info = np.iinfo(datatype.lower())
    for value in (int(info.min) - 1, int(info.max) + 1):
        if value < 0 and field == "uint_contents":
            continue
        request = pb.ModelInferRequest(inputs=[tensor("t", datatype, [1], **{field: [value]})])
        with pytest.raises(ServingError) as error:
            v2_proto.decode_inputs(request)
        assert error.value.kind is ErrorKind.INVALID_ARGUMENT


OUTPUT_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
]  # fmt: skip


@pytest.mark.parametrize("dtype", OUTPUT_DTYPES)
def test_raw_outputs_read_back_by_tritonclient(dtype) -> None:
    array = (np.arange(6).reshape(2, 3) % 2 == 1) if dtype == "bool" else np.arange(6)
    array = array.reshape(2, 3).astype(dtype)
    strings = np.array([[b"x", b""], [b"\x00yz", b"w"]], dtype=object)
    signature = SignatureSpec("serving_default", {}, {})
    result = InferenceResult("m", 4, signature, {"out": array, "strings": strings})
    response = v2_proto.encode_response("r", result, None)
    assert (response.model_version, response.id) == ("4", "r")
    read = triton.InferResult(response)
    got = read.as_numpy("out")
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(read.as_numpy("strings"), strings)


def test_an_output_v2_cannot_carry_is_refused() -> None:
    signature = SignatureSpec("serving_default", {}, {})
    result = InferenceResult("m", 1, signature, {"z": np.zeros(2, np.complex64)})
    with pytest.raises(ServingError) as error:
        v2_proto.encode_response("", result, None)
    assert error.value.kind is ErrorKind.UNIMPLEMENTED and "complex64" in error.value.message


# -- model repository: load and unload (a server of its own) ------------------------------------


@pytest.fixture
def own_server(model_root: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(
        models=[
            ModelConfig(name="binary", base_path=model_root / "binary"),
            ModelConfig(name="corrupt", base_path=model_root / "corrupt"),
        ],
    )
    with BackgroundServer(config) as server:
        yield server


def test_repository_unload_and_load(own_server) -> None:
    x = triton.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], np.float32))
    with triton.InferenceServerClient(f"127.0.0.1:{own_server.server.grpc_port}") as c:
        before = c.infer("binary", [x]).as_numpy("probability")
        c.unload_model("binary")
        assert not c.is_model_ready("binary")
        index = {m.name: m for m in c.get_model_repository_index().models}
        assert (index["binary"].state, index["binary"].reason) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerException) as info:
            c.infer("binary", [x])
        assert info.value.status() == "StatusCode.UNAVAILABLE"

        c.load_model("binary")
        assert c.is_model_ready("binary")
        index = {m.name: m for m in c.get_model_repository_index().models}
        assert (index["binary"].version, index["binary"].state) == ("1", "READY")
        np.testing.assert_array_equal(c.infer("binary", [x]).as_numpy("probability"), before)


def test_repository_load_errors(own_server) -> None:
    target = f"127.0.0.1:{own_server.server.grpc_port}"
    with triton.InferenceServerClient(target) as c, grpc.insecure_channel(target) as channel:
        for call, status in [
            (lambda: c.load_model("nope"), "NOT_FOUND"),
            (lambda: c.unload_model("nope"), "NOT_FOUND"),
            (lambda: c.load_model("binary", config="{}"), "INVALID_ARGUMENT"),
            (lambda: c.load_model("corrupt"), "INVALID_ARGUMENT"),
        ]:
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == f"StatusCode.{status}", info.value.message()
            assert c.is_model_ready("binary")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        elsewhere = pb.RepositoryModelLoadRequest(model_name="binary", repository_name="other")
        code, details = code_of(lambda: stub.RepositoryModelLoad(elsewhere))
        assert code == grpc.StatusCode.UNIMPLEMENTED and "repository_name" in details
        odd = pb.RepositoryModelLoadRequest(model_name="binary")
        odd.parameters["colour"].string_param = "blue"
        code, details = code_of(lambda: stub.RepositoryModelLoad(odd))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "colour" in details
        c.load_model("binary")
        assert c.is_model_ready("binary")
