"""End to end over real sockets: TF Serving's gRPC API with its own client stubs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tfmux.config import ModelConfig, ServerConfig

from . import savedmodels as sm
from .harness import BackgroundServer
from .test_e2e_rest import ROWS, tf1_direct, tf2_direct

pytestmark = pytest.mark.tf

# Clients of TF Serving must raise gRPC's default 4 MiB receive limit to get large answers.
CLIENT_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
EXAMPLE_ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]


class Client:
    """Both TF Serving stubs over one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def client(e2e_server: BackgroundServer) -> Iterator[Client]:
    address = f"127.0.0.1:{e2e_server.server.grpc_port}"
    with grpc.insecure_channel(address, options=CLIENT_OPTIONS) as channel:
        yield Client(channel)


@pytest.fixture(scope="module")
def http(e2e_server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=e2e_server.url, timeout=60) as client:
        yield client


def predict_request(
    model: str, inputs: dict[str, object], *, version: int | None = None, label: str = "", **kw
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(**kw)
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(proto)
    return request


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def examples_input(rows: list[list[float]]) -> object:
    request = classification_pb2.ClassificationRequest()
    for row in rows:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(row)
    return request.input


def rest_predict(http: httpx.Client, model: str, body: dict[str, object]) -> object:
    r = http.post(f"/v1/models/{model}:predict", content=json.dumps(body))
    assert r.status_code == 200, r.text
    return r.json()


def assert_good(client: Client) -> None:
    """After any bad request, good ones still succeed."""
    response = client.predict.Predict(
        predict_request("binary", {"x": np.array(ROWS[:1], np.float32)}), timeout=60
    )
    assert response.outputs["probability"].float_val


def assert_code(call: object, code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(grpc.RpcError) as excinfo:
        call()  # type: ignore[operator]
    error = excinfo.value
    assert error.code() == code, error.details()
    for needle in needles:
        assert needle in error.details()
    return error.details()


# -- Predict equals REST and TensorFlow -------------------------------------------------------


def test_predict_tf2_equals_rest_and_tensorflow(client, http, model_root) -> None:
    x = np.array(ROWS, np.float32)
    response = client.predict.Predict(predict_request("binary", {"x": x}), timeout=60)
    expected = tf2_direct(model_root / "binary/1", {"x": x})["probability"]
    got = outputs(response)["probability"]
    np.testing.assert_array_equal(got, expected)
    rest = rest_predict(http, "binary", {"inputs": {"x": ROWS}})["outputs"]
    np.testing.assert_array_equal(got, np.array(rest, np.float32))
    # TF Serving answers with typed fields (clients read float_val), not tensor_content.
    assert not response.outputs["probability"].tensor_content
    assert list(response.outputs["probability"].float_val) == expected.ravel().tolist()
    assert response.model_spec.name == "binary"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_tf1_equals_rest_and_session_run(client, http, model_root) -> None:
    x = np.array(ROWS, np.float32)
    response = client.predict.Predict(predict_request("regression", {"x": x}), timeout=60)
    expected = tf1_direct(model_root / "regression/1", {"input_tensor:0": x}, "output_tensor:0")
    np.testing.assert_array_equal(outputs(response)["y"], expected)
    rest = rest_predict(http, "regression", {"inputs": {"x": ROWS}})["outputs"]
    np.testing.assert_array_equal(outputs(response)["y"], np.array(rest, np.float32))


def test_predict_mixed_dtypes_and_strings(client, http, model_root) -> None:
    inputs = {
        "a": np.array([[1.5, 2.0], [0.0, -1.0]], np.float32),
        "b": np.array([3, -4], np.int64),
        "s": np.array([b"abc", b"\xffxyz"], object),
    }
    response = client.predict.Predict(predict_request("multi", inputs), timeout=60)
    got = outputs(response)
    expected = tf2_direct(model_root / "multi/1", inputs)
    assert set(got) == {"sum", "b_twice", "s_upper", "s_len"}
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == value.dtype
    rest = rest_predict(
        http, "multi", {"inputs": {"a": inputs["a"].tolist(), "b": [3, -4], "s": ["abc", "xyz"]}}
    )["outputs"]
    assert got["b_twice"].tolist() == rest["b_twice"]
    np.testing.assert_array_equal(got["sum"], np.array(rest["sum"], np.float32))


def test_predict_accepts_typed_fields_and_a_broadcast_value(client) -> None:
    by_content = tf.make_tensor_proto(np.full((2, 3), 0.5, np.float32))
    broadcast = tf.make_tensor_proto(0.5, dtype=tf.float32, shape=[2, 3])
    typed = tf.make_tensor_proto(np.full((2, 3), 0.5, np.float32))
    typed.ClearField("tensor_content")
    typed.float_val.extend([0.5] * 6)
    answers = [
        outputs(client.predict.Predict(predict_request("binary", {"x": p}), timeout=60))
        for p in (by_content, broadcast, typed)
    ]
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer["probability"], answers[0]["probability"])


def test_output_filter(client) -> None:
    inputs = {"a": np.zeros((1, 2), np.float32), "b": np.array([2]), "s": np.array([b"q"])}
    request = predict_request("multi", inputs, output_filter=["s_upper", "b_twice"])
    got = outputs(client.predict.Predict(request, timeout=60))
    assert set(got) == {"s_upper", "b_twice"}
    assert got["s_upper"].tolist() == [b"Q"] and got["b_twice"].tolist() == [4]


def test_ints_convert_losslessly_to_a_float_input(client) -> None:
    response = client.predict.Predict(
        predict_request("binary", {"x": np.array(ROWS, np.int32)}), timeout=60
    )
    assert outputs(response)["probability"].shape == (3, 1)


# -- classify, regress, multi-inference --------------------------------------------------------


def expected_scores(rows: list[list[float]]) -> np.ndarray:
    logits = np.array(rows, np.float32) @ sm.CLASSIFY_WEIGHTS + sm.CLASSIFY_BIAS
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def expected_regression(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, np.float32) @ sm.REGRESS_WEIGHTS + sm.REGRESS_BIAS


def classification(result: classification_pb2.ClassificationResult) -> tuple[list, np.ndarray]:
    labels = [[c.label for c in row.classes] for row in result.classifications]
    scores = np.array([[c.score for c in row.classes] for row in result.classifications])
    return labels, scores


def test_classify(client, http) -> None:
    request = classification_pb2.ClassificationRequest(input=examples_input(EXAMPLE_ROWS))
    request.model_spec.name, request.model_spec.signature_name = "cr", "classify"
    response = client.predict.Classify(request, timeout=60)
    labels, scores = classification(response.result)
    assert labels == [["neg", "pos"]] * 2
    np.testing.assert_allclose(scores, expected_scores(EXAMPLE_ROWS), rtol=1e-5)
    assert (response.model_spec.version.value, response.model_spec.signature_name) == (
        1,
        "classify",
    )
    examples = [{"x": row} for row in EXAMPLE_ROWS]
    body = {"signature_name": "classify", "examples": examples}
    rest = http.post("/v1/models/cr:classify", content=json.dumps(body)).json()["results"]
    np.testing.assert_allclose(scores, [[s for _, s in row] for row in rest], rtol=1e-6)


def test_classify_with_context(client) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "cr", "classify"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.extend(EXAMPLE_ROWS[0])
    with_context.examples.add()  # takes x from the context
    own = with_context.examples.add()
    own.features.feature["x"].float_list.value.extend(EXAMPLE_ROWS[1])  # its own x wins
    _, scores = classification(client.predict.Classify(request, timeout=60).result)
    np.testing.assert_allclose(scores, expected_scores(EXAMPLE_ROWS), rtol=1e-5)


def test_regress(client) -> None:
    request = regression_pb2.RegressionRequest(input=examples_input(EXAMPLE_ROWS))
    request.model_spec.name, request.model_spec.signature_name = "cr", "regress"
    response = client.predict.Regress(request, timeout=60)
    values = [r.value for r in response.result.regressions]
    np.testing.assert_allclose(values, expected_regression(EXAMPLE_ROWS), rtol=1e-5)
    assert response.model_spec.signature_name == "regress"


def multi_request(*tasks: tuple[str, str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest(input=examples_input(EXAMPLE_ROWS))
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model, signature
    return request


def test_multi_inference(client) -> None:
    request = multi_request(("cr", "classify", CLASSIFY), ("cr", "regress", REGRESS))
    response = client.predict.MultiInference(request, timeout=60)
    first, second = response.results
    np.testing.assert_allclose(
        classification(first.classification_result)[1], expected_scores(EXAMPLE_ROWS), rtol=1e-5
    )
    np.testing.assert_allclose(
        [r.value for r in second.regression_result.regressions],
        expected_regression(EXAMPLE_ROWS),
        rtol=1e-5,
    )
    assert [r.model_spec.signature_name for r in response.results] == ["classify", "regress"]
    assert {r.model_spec.version.value for r in response.results} == {1}


@pytest.mark.parametrize(
    ("tasks", "code", "needle"),
    [
        ((), grpc.StatusCode.INVALID_ARGUMENT, "at least one task"),
        (
            (("cr", "classify", CLASSIFY), ("binary", "regress", REGRESS)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "same model name",
        ),
        (
            (("cr", "classify", CLASSIFY), ("cr", "classify", CLASSIFY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: classify",
        ),
        (
            (("cr", "serving_default", "tensorflow/serving/predict"),),
            grpc.StatusCode.UNIMPLEMENTED,
            "method_name",
        ),
        ((("cr", "regress", CLASSIFY),), grpc.StatusCode.INVALID_ARGUMENT, '"classes" or "scores"'),
        ((("nope", "classify", CLASSIFY),), grpc.StatusCode.NOT_FOUND, "nope"),
    ],
)
def test_multi_inference_errors(client, tasks, code, needle) -> None:
    assert_code(
        lambda: client.predict.MultiInference(multi_request(*tasks), timeout=60), code, needle
    )
    test_multi_inference(client)


def test_classify_and_regress_errors(client) -> None:
    on_predict = classification_pb2.ClassificationRequest(input=examples_input(EXAMPLE_ROWS))
    on_predict.model_spec.name = "cr"  # serving_default is a predict signature
    assert_code(
        lambda: client.predict.Classify(on_predict, timeout=60),
        grpc.StatusCode.INVALID_ARGUMENT,
        "No classification inputs found",
    )
    empty = regression_pb2.RegressionRequest()
    empty.model_spec.name, empty.model_spec.signature_name = "cr", "regress"
    assert_code(
        lambda: client.predict.Regress(empty, timeout=60),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Input is empty",
    )
    test_regress(client)


# -- metadata and status ------------------------------------------------------------------------


def metadata(client: Client, model: str, *fields: str, version: int | None = None) -> object:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return client.predict.GetModelMetadata(request, timeout=60)


def test_get_model_metadata_matches_rest(client, http) -> None:
    response = metadata(client, "regression", "signature_def", version=1)
    assert (response.model_spec.name, response.model_spec.version.value) == ("regression", 1)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    signature = defs.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    x = signature.inputs["x"]
    assert (x.name, x.dtype) == ("input_tensor:0", tf.float32.as_datatype_enum)
    assert [d.size for d in x.tensor_shape.dim] == [-1, 3]
    assert signature.outputs["y"].name == "output_tensor:0"

    from google.protobuf import json_format

    rest = http.get("/v1/models/regression/versions/1/metadata").json()
    rest_defs = rest["metadata"]["signature_def"]["signature_def"]
    ours = json_format.MessageToDict(
        defs, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    for sig in rest_defs.values():
        sig.pop("defaults", None)
    for sig in ours["signature_def"].values():
        sig.pop("defaults", None)
    assert ours["signature_def"] == rest_defs


def test_get_model_metadata_errors(client) -> None:
    assert_code(
        lambda: metadata(client, "binary"), grpc.StatusCode.INVALID_ARGUMENT, "metadata_field"
    )
    assert_code(
        lambda: metadata(client, "binary", "signature_def", "other"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field other is not supported",
    )
    assert_code(
        lambda: metadata(client, "nope", "signature_def"), grpc.StatusCode.NOT_FOUND, "nope"
    )
    assert metadata(client, "binary", "signature_def").model_spec.version.value == 1


def status(client: Client, model: str, version: int | None = None, label: str = "") -> list:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    response = client.models.GetModelStatus(request, timeout=60)
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return [
        (s.version, state_name(s.state), s.status.error_code) for s in response.model_version_status
    ]


def test_get_model_status(client) -> None:
    assert status(client, "versioned") == [(v, "AVAILABLE", 0) for v in (3, 2, 1)]
    assert status(client, "versioned", version=2) == [(2, "AVAILABLE", 0)]
    assert status(client, "versioned", label="canary") == [(3, "AVAILABLE", 0)]


def test_get_model_status_of_a_corrupt_model_is_end_with_its_error(client, http) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "corrupt"
    (version,) = client.models.GetModelStatus(request, timeout=60).model_version_status
    assert get_model_status_pb2.ModelVersionStatus.State.Name(version.state) == "END"
    assert version.status.error_code != 0
    assert version.status.error_message
    rest = http.get("/v1/models/corrupt").json()["model_version_status"][0]["status"]
    codes = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
    code_name = codes.values_by_number[version.status.error_code].name
    assert (code_name, version.status.error_message) == (rest["error_code"], rest["error_message"])


def test_get_model_status_errors(client) -> None:
    assert_code(lambda: status(client, "nope"), grpc.StatusCode.NOT_FOUND, "nope")
    assert_code(lambda: status(client, "versioned", version=9), grpc.StatusCode.NOT_FOUND, "9")
    assert_code(
        lambda: client.models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(), timeout=60
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec",
    )
    assert status(client, "binary") == [(1, "AVAILABLE", 0)]


# -- versions and labels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "label", "served"),
    [(None, "", 3), (1, "", 1), (2, "", 2), (None, "stable", 1), (None, "canary", 3)],
)
def test_version_and_label_routing(client, version, label, served) -> None:
    request = predict_request(
        "versioned", {"x": np.array([1.0, 2.0], np.float32)}, version=version, label=label
    )
    response = client.predict.Predict(request, timeout=60)
    assert outputs(response)["y"].tolist() == [served * 1.0, served * 2.0]
    assert response.model_spec.version.value == served
    assert response.model_spec.name == "versioned"


# -- bad requests: the right code, a clear message, and the server keeps serving ------------------


def content_proto(dtype: object, shape: list[int], content: bytes) -> object:
    proto = tf.make_tensor_proto(np.zeros(shape, dtype.as_numpy_dtype))  # type: ignore[attr-defined]
    proto.tensor_content = content
    return proto


BAD_PREDICTS = [
    ("nope", {"x": np.ones((1, 3), np.float32)}, {}, "NOT_FOUND", "Latest(nope)"),
    (
        "binary",
        {"x": np.ones((1, 3), np.float32)},
        {"version": 9},
        "NOT_FOUND",
        "Specific(binary, 9)",
    ),
    ("versioned", {"x": np.ones(1, np.float32)}, {"label": "nolabel"}, "NOT_FOUND", "nolabel"),
    ("binary", {"z": np.ones((1, 3), np.float32)}, {}, "INVALID_ARGUMENT", "'z'"),
    (
        "multi",
        {"a": np.ones((1, 2), np.float32), "b": np.ones(1, np.int64)},
        {},
        "INVALID_ARGUMENT",
        "'s'",
    ),
    ("binary", {"x": np.array([["a", "b", "c"]])}, {}, "INVALID_ARGUMENT", "'x'"),
    ("binary", {"x": np.full((1, 3), 0.1)}, {}, "INVALID_ARGUMENT", "float64"),
    (  # shapes are left to the graph (as TF Serving): its own error
        "binary",
        {"x": np.ones((1, 2), np.float32)},
        {},
        "INVALID_ARGUMENT",
        "Matrix size-incompatible",
    ),
    (
        "binary",
        {"x": content_proto(tf.float32, [2, 3], b"\0" * 20)},
        {},
        "INVALID_ARGUMENT",
        "tensor_content",
    ),
    (
        "binary",
        {"x": tf.make_tensor_proto([1.0, 2.0], shape=[1, 3])},
        {},
        "INVALID_ARGUMENT",
        "float_val",
    ),
    ("binary", {"x": np.ones((1, 3), np.complex64)}, {}, "INVALID_ARGUMENT", "DT_COMPLEX64"),
    (
        "binary",
        {"x": np.ones((1, 3), np.float32)},
        {"output_filter": ["nope"]},
        "INVALID_ARGUMENT",
        "nope",
    ),
    (
        "binary",
        {"x": np.ones((1, 3), np.float32)},
        {"output_filter": ["probability"] * 2},
        "INVALID_ARGUMENT",
        "duplicate",
    ),
    (
        "failing",  # the graph's assertion fails: TensorFlow's InvalidArgumentError
        {"x": np.array([[-1.0]], np.float32)},
        {},
        "INVALID_ARGUMENT",
        "InvalidArgumentError",
    ),
    ("corrupt", {"x": np.ones((1, 3), np.float32)}, {}, "UNAVAILABLE", "failed to load"),
    ("", {"x": np.ones((1, 3), np.float32)}, {}, "INVALID_ARGUMENT", "no name"),
]


@pytest.mark.parametrize(("model", "inputs", "spec", "code", "needle"), BAD_PREDICTS)
def test_bad_predicts_get_clear_errors(client, model, inputs, spec, code, needle) -> None:
    version, label = spec.pop("version", None), spec.pop("label", "")
    request = predict_request(model, inputs, version=version, label=label, **spec)
    assert_code(
        lambda: client.predict.Predict(request, timeout=60), getattr(grpc.StatusCode, code), needle
    )
    assert_good(client)


def test_bad_signature_name_and_missing_model_spec(client) -> None:
    request = predict_request("binary", {"x": np.ones((1, 3), np.float32)})
    request.model_spec.signature_name = "nosig"
    assert_code(
        lambda: client.predict.Predict(request, timeout=60),
        grpc.StatusCode.INVALID_ARGUMENT,
        "nosig",
    )
    assert_code(
        lambda: client.predict.Predict(predict_pb2.PredictRequest(), timeout=60),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    assert_good(client)


def test_undecodable_request_bytes_do_not_hurt_the_server(client, e2e_server) -> None:
    address = f"127.0.0.1:{e2e_server.server.grpc_port}"
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as excinfo:
            raw(b"\xff\xff\xff\xff not a protobuf", timeout=60)
        assert excinfo.value.code() != grpc.StatusCode.OK
    assert_good(client)


def test_requests_are_counted_by_method(client, http) -> None:
    test_classify(client, http)
    test_regress(client)
    assert_good(client)
    text = http.get("/metrics").text
    for method in ("predict", "classify", "regress"):
        assert f'method="{method}"' in text


# -- its own server: reload the model list, message sizes -----------------------------------------


def own_config(root: Path, *names: str) -> ServerConfig:
    models = [ModelConfig(name=name, base_path=root / name) for name in names]
    return ServerConfig(grpc_port=0, models=models, model_repositories=[root])


@pytest.fixture
def own_server(model_root: Path) -> Iterator[tuple[BackgroundServer, Client]]:
    with BackgroundServer(own_config(model_root, "binary")) as server:
        address = f"127.0.0.1:{server.server.grpc_port}"
        with grpc.insecure_channel(address, options=CLIENT_OPTIONS) as channel:
            yield server, Client(channel)


def reload_request(root: Path, **models: str) -> model_management_pb2.ReloadConfigRequest:
    config = model_server_config_pb2.ModelServerConfig()
    for name, directory in models.items():
        config.model_config_list.config.add(
            name=name, base_path=str(root / directory), model_platform="tensorflow"
        )
    return model_management_pb2.ReloadConfigRequest(config=config)


def test_reload_config_adds_and_removes_models(own_server, model_root) -> None:
    _, client = own_server
    x = np.array(ROWS, np.float32)
    response = client.models.HandleReloadConfigRequest(
        reload_request(model_root, binary="binary", regression="regression"), timeout=120
    )
    assert response.status.error_code == 0
    client.predict.Predict(predict_request("regression", {"x": x}), timeout=60)
    client.predict.Predict(predict_request("binary", {"x": x}), timeout=60)

    response = client.models.HandleReloadConfigRequest(
        reload_request(model_root, regression="regression"), timeout=120
    )
    assert response.status.error_code == 0
    assert_code(
        lambda: client.predict.Predict(predict_request("binary", {"x": x}), timeout=60),
        grpc.StatusCode.NOT_FOUND,
        "binary",
    )
    assert_code(lambda: status(client, "binary"), grpc.StatusCode.NOT_FOUND)
    assert status(client, "regression") == [(1, "AVAILABLE", 0)]


def test_reload_config_errors_leave_the_server_serving(own_server, model_root) -> None:
    _, client = own_server
    reload = client.models.HandleReloadConfigRequest
    twice = reload_request(model_root, binary="binary")
    twice.config.model_config_list.config.add(name="binary", base_path=str(model_root / "binary"))
    assert_code(lambda: reload(twice, timeout=60), grpc.StatusCode.INVALID_ARGUMENT, "binary")
    other = reload_request(model_root, binary="binary")
    other.config.model_config_list.config[0].model_platform = "pytorch"
    assert_code(lambda: reload(other, timeout=60), grpc.StatusCode.INVALID_ARGUMENT, "pytorch")
    broken = reload_request(model_root, binary="binary", corrupt="corrupt")
    assert_code(lambda: reload(broken, timeout=120), grpc.StatusCode.UNKNOWN, "corrupt")
    x = np.array(ROWS, np.float32)
    assert client.predict.Predict(predict_request("binary", {"x": x}), timeout=60).outputs
    # An unset config changes nothing, as in TF Serving.
    empty = model_management_pb2.ReloadConfigRequest()
    assert reload(empty, timeout=60).status.error_code == 0
    assert client.predict.Predict(predict_request("binary", {"x": x}), timeout=60).outputs


def test_reload_keeps_settings_a_tf_serving_config_cannot_express(model_root) -> None:
    lazy = ModelConfig(name="binary", base_path=model_root / "binary", load="lazy")
    config = ServerConfig(grpc_port=0, models=[lazy], model_repositories=[model_root])
    with BackgroundServer(config) as server:
        address = f"127.0.0.1:{server.server.grpc_port}"
        with grpc.insecure_channel(address) as channel:
            client = Client(channel)
            request = reload_request(model_root, binary="binary", regression="regression")
            client.models.HandleReloadConfigRequest(request, timeout=120)
            assert status(client, "binary") == [(1, "START", 0)]  # still lazy, not reloaded
            assert status(client, "regression") == [(1, "AVAILABLE", 0)]  # new: eager


def test_reload_refuses_paths_outside_configured_repositories(model_root, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.copytree(model_root / "regression", outside / "regression")
    lazy = ModelConfig(name="binary", base_path=model_root / "binary", load="lazy")
    config = ServerConfig(grpc_port=0, models=[lazy], model_repositories=[model_root])
    with BackgroundServer(config) as server:
        address = f"127.0.0.1:{server.server.grpc_port}"
        with grpc.insecure_channel(address) as channel:
            client = Client(channel)
            request = reload_request(outside, regression="regression")
            with pytest.raises(grpc.RpcError) as info:
                client.models.HandleReloadConfigRequest(request, timeout=60)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "configured model repository" in info.value.details()
            assert status(client, "binary") == [(1, "START", 0)]  # nothing changed


def test_messages_over_4_mib_are_accepted_by_default(own_server) -> None:
    server, client = own_server
    assert server.server.config.max_grpc_message_bytes >= 256 * 1024 * 1024
    rows = 1_200_000  # a 14.4 MB request and a 4.8 MB answer
    x = np.tile(np.array(ROWS[0], np.float32), (rows, 1))
    request = predict_request("binary", {"x": x})
    assert request.ByteSize() > 4 * 1024 * 1024
    response = client.predict.Predict(request, timeout=120)
    assert response.ByteSize() > 4 * 1024 * 1024
    got = outputs(response)["probability"]
    assert got.shape == (rows, 1) and np.all(got == got[0])


# -- the command line's event loop (uvloop) -------------------------------------------------------


def test_grpc_works_under_the_cli_event_loop(model_root) -> None:
    """``tfmux serve`` runs on uvloop when it is installed; grpc.aio must work there too."""
    assert importlib.util.find_spec("uvloop") is not None
    command = [sys.executable, "-m", "tfmux", "serve", "--http-port", "0", "--grpc-port", "0"]
    command += ["--model", f"binary={model_root / 'binary'}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        port = None
        for line in process.stdout:  # type: ignore[union-attr]
            if line.rstrip().endswith("(gRPC)"):
                port = int(line.split()[-2].rsplit(":", 1)[1])
                break
        assert port is not None, "the server exited without announcing its gRPC port"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            x = np.array(ROWS, np.float32)
            response = stub.Predict(predict_request("binary", {"x": x}), timeout=60)
        assert outputs(response)["probability"].shape == (3, 1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
