"""The ``tensorflow_model_server`` command run as TF Serving users run it (subprocesses, real
sockets), answered with TF Serving's clients: the tensorflow-serving-api gRPC stubs and REST.

Three servers start together for the module (TensorFlow's import dominates their start):

- ``single``: one model by flags, gRPC also on a Unix socket, a monitoring config;
- ``configured``: a models.config with a version label, polled, and batching parameters;
- ``environment``: no model flags, only ``MODEL_NAME`` / ``MODEL_BASE_PATH``.

The expected answers are TF Serving's, from its integration test
(tensorflow_model_server_test.py) on its half_plus_two model (rebuilt in tests/tfs_models.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests import tfs_models

pytestmark = pytest.mark.tf

COMMAND = str(Path(sys.executable).parent / "tensorflow_model_server")
TFS_BATCHING = "max_batch_size { value: 128 }\nbatch_timeout_micros { value: 1000 }\n"
MONITORING = 'prometheus_config: {\n  enable: true,\n  path: "/tfs/metrics"\n}\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def models_config(root: Path, *names: str) -> str:
    entries = {
        "half_plus_two": 'version_labels { key: "stable" value: 123 }',
        "half_plus_two_tf2": "",
        "half_plus_three": "",
    }
    configs = "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" '
        f"{entries[name]} }}\n"
        for name in names
    )
    return f"model_config_list {{\n{configs}}}\n"


class ModelServer:
    """One ``tensorflow_model_server`` process; output goes to files read on failure.

    TF Serving's port 0 means "off", so ports are picked free beforehand; if another process
    takes one in between, the server is started again on new ports.
    """

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        self._args, self._env = args, env
        self._start()

    def _start(self) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        command = [COMMAND, f"--port={self.grpc_port}", f"--rest_api_port={self.http_port}"]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [*command, "--tfmux_host=127.0.0.1", *self._args],
                stdout=out,
                stderr=err,
                env={**os.environ, **self._env},
            )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.target = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 180, attempts: int = 3) -> None:
        end = time.monotonic() + timeout
        while "(gRPC)" not in self.out.read_text():
            if self.process.poll() is not None:
                if "cannot listen" in self.err.read_text() and attempts > 1:
                    self._start()  # a port was taken after it was picked
                    return self.wait_ready(timeout, attempts - 1)
                pytest.fail(f"server exited:\n{self.out.read_text()}{self.err.read_text()}")
            if time.monotonic() > end:
                pytest.fail(f"server did not start:\n{self.out.read_text()}{self.err.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelServer]]:
    tmp = tmp_path_factory.mktemp("tfs")
    root = tmp / "models"
    for name, b in (("half_plus_two", 2.0), ("half_plus_three", 3.0)):
        tfs_models.half_plus_two_tf1(root, name, b)
    tfs_models.half_plus_two_tf2(root)
    (tmp / "models.config").write_text(models_config(root, "half_plus_two", "half_plus_two_tf2"))
    (tmp / "batching.config").write_text(TFS_BATCHING)
    (tmp / "monitoring.config").write_text(MONITORING)
    started = {
        "single": ModelServer(
            tmp,
            "single",
            [
                "--model_name=half_plus_two",
                f"--model_base_path={root / 'half_plus_two'}",
                f"--grpc_socket_path={tmp / 'grpc.sock'}",
                f"--monitoring_config_file={tmp / 'monitoring.config'}",
                "--rest_api_num_threads=4",
                "--enable_grpc_healthcheck_service",
            ],
            {},
        ),
        "configured": ModelServer(
            tmp,
            "configured",
            [
                f"--model_config_file={tmp / 'models.config'}",
                "--model_config_file_poll_wait_seconds=1",
                "--enable_batching",
                f"--batching_parameters_file={tmp / 'batching.config'}",
            ],
            {},
        ),
        "environment": ModelServer(
            tmp, "environment", [], {"MODEL_NAME": "half_plus_three", "MODEL_BASE_PATH": str(root)}
        ),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield {**started, "tmp": tmp, "root": root}  # type: ignore[dict-item]
    finally:
        for server in started.values():
            server.stop()


def post(server: ModelServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, content=json.dumps(body), timeout=60)


def stubs(target: str) -> tuple[object, object]:
    channel = grpc.insecure_channel(target)
    return (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def predict_request(name: str, x: list[float], label: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(_tensor(x))
    return request


def _tensor(x: list[float]) -> object:
    import tensorflow as tf

    return tf.make_tensor_proto(x, dtype=tf.float32, shape=[len(x), 1])


def example_input(request: object, x: float) -> None:
    example = request.input.example_list.examples.add()  # type: ignore[attr-defined]
    example.features.feature["x"].float_list.value.extend([x])


# -- one model by flags ------------------------------------------------------------------------


def test_rest_answers_as_tf_servings_integration_test(servers) -> None:
    single = servers["single"]
    path = "/v1/models/half_plus_two"
    # [2.0, 3.0, 4.0] is a [3] tensor for an input declared [-1, 1]: the graph takes it.
    r = post(single, f"{path}:predict", {"instances": [2.0, 3.0, 4.0]})
    assert r.json() == {"predictions": [3.0, 3.5, 4.0]}
    r = post(single, f"{path}:predict", {"inputs": [[2.0], [3.0], [4.0]]})
    assert r.json() == {"outputs": [[3.0], [3.5], [4.0]]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert post(single, f"{path}:classify", body).json() == {"results": [[["", 3.0]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert post(single, f"{path}:regress", body).json() == {"results": [3.0]}
    assert httpx.get(single.url + path).json() == {  # exactly TF Serving's fields
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_rest_metadata_has_tf_servings_fields(servers) -> None:
    meta = httpx.get(servers["single"].url + "/v1/models/half_plus_two/metadata").json()
    assert set(meta) == {"model_spec", "metadata"}
    assert meta["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "regress_x_to_y", "classify_x_to_y"}
    assert defs["serving_default"] == {
        "inputs": {
            "x": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "x:0",
            }
        },
        "outputs": {
            "y": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "y:0",
            }
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }


def test_grpc_predict_status_and_metadata_with_tf_serving_stubs(servers) -> None:
    predict, model = stubs(servers["single"].target)
    response = predict.Predict(predict_request("half_plus_two", [2.0]), timeout=30)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 123)
    assert response.model_spec.signature_name == "serving_default"
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    status = model.GetModelStatus(request, timeout=30)
    expected = get_model_status_pb2.GetModelStatusResponse()
    version = expected.model_version_status.add(version=123)
    version.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    version.status.error_code = 0
    assert status == expected  # field by field, nothing more
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    meta = predict.GetModelMetadata(request, timeout=30)
    assert (meta.model_spec.name, meta.model_spec.version.value) == ("half_plus_two", 123)
    assert list(meta.metadata) == ["signature_def"]


def test_grpc_on_the_unix_socket(servers) -> None:
    predict, _ = stubs(f"unix:{servers['tmp'] / 'grpc.sock'}")
    response = predict.Predict(predict_request("half_plus_two", [2.0]), timeout=30)
    assert list(response.outputs["y"].float_val) == [3.0]


def test_grpc_health_check_service(servers) -> None:
    from tfmux.transports.grpc_health import HealthCheckRequest, HealthCheckResponse

    check = grpc.insecure_channel(servers["single"].target).unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    for service in ("", "ModelService", "PredictionService"):  # what TF Serving registers
        assert check(HealthCheckRequest(service=service), timeout=30).status == 1  # SERVING


def test_monitoring_config_path_serves_prometheus_metrics(servers) -> None:
    single = servers["single"]
    text = httpx.get(single.url + "/tfs/metrics").text
    assert "# TYPE" in text and "tfmux_requests_total{" in text
    # No --enable_batching: every request runs alone, so each "batch" holds exactly one request.
    counts = re.findall(r'^tfmux_batch_size_count\{model="half_plus_two"[^}]*\} (\S+)$', text, re.M)
    sums = re.findall(r'^tfmux_batch_size_sum\{model="half_plus_two"[^}]*\} (\S+)$', text, re.M)
    assert counts == sums


def test_flags_without_effect_are_reported_at_startup(servers) -> None:
    out = servers["single"].out.read_text()
    assert "note: --rest_api_num_threads is accepted but has no effect" in out


# -- models.config with a label, polled; batching ------------------------------------------------


def test_version_label_from_the_config_file(servers) -> None:
    configured = servers["configured"]
    predict, _ = stubs(configured.target)
    response = predict.Predict(predict_request("half_plus_two", [2.0], "stable"), timeout=30)
    assert response.model_spec.version.value == 123
    r = post(configured, "/v1/models/half_plus_two/labels/stable:predict", {"instances": [[2.0]]})
    assert r.json() == {"predictions": [[3.0]]}


def test_tf2_predict_method_signatures_classify_and_regress(servers) -> None:
    """TF2 exports every signature with the predict method; TF Serving classifies and
    regresses on them anyway, as long as their inputs and outputs fit."""
    configured = servers["configured"]
    predict, _ = stubs(configured.target)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = (
        "half_plus_two_tf2",
        "classify_x_to_y",
    )
    example_input(request, 2.0)
    result = predict.Classify(request, timeout=30)
    assert [c.score for c in result.result.classifications[0].classes] == [3.0]
    assert result.model_spec.version.value == 123
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = (
        "half_plus_two_tf2",
        "regress_x_to_y",
    )
    example_input(request, 2.0)
    assert [r.value for r in predict.Regress(request, timeout=30).result.regressions] == [3.0]
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert post(configured, "/v1/models/half_plus_two_tf2:regress", body).json() == {
        "results": [3.0]
    }
    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = multi.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = "half_plus_two_tf2", signature
    example_input(multi, 2.0)
    regressed, classified = predict.MultiInference(multi, timeout=30).results
    assert regressed.regression_result.regressions[0].value == 3.0
    assert classified.classification_result.classifications[0].classes[0].score == 3.0


def test_batching_parameters_file_batches_requests(servers) -> None:
    configured = servers["configured"]
    path = "/v1/models/half_plus_two:predict"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: post(configured, path, {"instances": [[x]]}), range(16)))
    assert [a.json()["predictions"] for a in answers] == [[[0.5 * x + 2]] for x in range(16)]
    metrics = httpx.get(configured.url + "/monitoring/prometheus/metrics").text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith('tfmux_batch_requests_count{model="half_plus_two"')
    )
    assert float(line.split()[-1]) >= 1  # the batcher ran them


def test_polled_config_file_adds_a_model_and_a_bad_one_changes_nothing(servers) -> None:
    configured, tmp, root = servers["configured"], servers["tmp"], servers["root"]
    config = tmp / "models.config"
    config.write_text("improperly formatted file")  # logged; the models keep serving
    time.sleep(2.5)
    r = post(configured, "/v1/models/half_plus_two:predict", {"instances": [[2.0]]})
    assert r.json() == {"predictions": [[3.0]]}
    config.write_text(models_config(root, "half_plus_two", "half_plus_two_tf2", "half_plus_three"))
    end = time.monotonic() + 60
    while httpx.get(configured.url + "/v1/models/half_plus_three").status_code != 200:
        assert time.monotonic() < end, "the polled config file was not applied"
        time.sleep(0.25)
    r = post(configured, "/v1/models/half_plus_three:predict", {"instances": [[2.0]]})
    assert r.json() == {"predictions": [[4.0]]}
    assert "Failed to read ModelServerConfig file" in configured.err.read_text()


# -- environment only; refusals ------------------------------------------------------------------


def test_environment_only_serves_model_base_path_slash_model_name(servers) -> None:
    environment = servers["environment"]
    r = post(environment, "/v1/models/half_plus_three:predict", {"instances": [[2.0]]})
    assert r.json() == {"predictions": [[4.0]]}
    assert "no model flags: serving half_plus_three" in environment.out.read_text()


def test_a_bad_model_config_file_stops_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.config"
    bad.write_text("improperly formatted file")
    done = subprocess.run(
        [COMMAND, f"--model_config_file={bad}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in done.stderr


def test_tfmux_tf_serving_is_the_same_command() -> None:
    tfmux = str(Path(sys.executable).parent / "tfmux")
    done = subprocess.run(
        [tfmux, "tf-serving", "--model_base_path=/m", "--xla_cpu_compilation_enabled=true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--xla_cpu_compilation_enabled=true is not supported by tfmux" in done.stderr
