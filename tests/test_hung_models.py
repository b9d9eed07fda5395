"""A real hung model (a TF1 graph dequeuing from a FIFOQueue nobody fills) over real sockets:
answered at the deadline (504 / DEADLINE_EXCEEDED), its thread freed by TensorFlow's run
timeout, holding only its own queue and in-flight limit while another model keeps serving;
and a real ``tfmux serve`` with a hung call in flight exits within its grace period on SIGTERM.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfmux.config import BatchingConfig, ModelConfig, ServerConfig
from tfmux.demo import import_tensorflow, write_version

from . import savedmodels as sm
from .fakes import wait_until
from .harness import BackgroundServer

pytestmark = pytest.mark.tf

MAX_RUN_MS = 1500  # the server's maximum run time: TensorFlow cancels a hung call then
ROW = [[1.0, 2.0, 3.0]]


def build_hung(path: Path) -> None:
    """TF1: ``y = x + q.dequeue()`` with a FIFOQueue nobody ever fills, so a call never
    returns unless TensorFlow cancels it. ``x`` float32 [None, 3] -> ``y`` float32 [None, 3]."""
    tf = import_tensorflow()
    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        queue = v1.FIFOQueue(capacity=1, dtypes=[tf.float32], shapes=[[]], name="never_filled")
        y = tf.add(x, queue.dequeue(), name="y")
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map={
                    "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})
                },
            )
            builder.save()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hung")
    write_version(root / "hung", 1, build_hung)
    sm.tf1_twin(root, "tiny", 2.0)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[BackgroundServer]:
    limits = BatchingConfig(max_queue_size=2, max_inflight_batches=1)
    config = ServerConfig(
        models=[
            ModelConfig(name="hung", base_path=root / "hung", batching=limits),
            ModelConfig(name="tiny", base_path=root / "tiny"),
        ],
        inference_threads=2,
        max_run_time_ms=MAX_RUN_MS,
    )
    with BackgroundServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: BackgroundServer) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def v2_request(timeout_ms: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": ROW[0]}]
    }
    if timeout_ms is not None:
        body["parameters"] = {"timeout": timeout_ms * 1000}
    return body


def predict(model: str) -> predict_pb2.PredictRequest:
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(ROW, dtype=np.float32)))
    return request


def assert_tiny_serves(http: httpx.Client) -> None:
    response = http.post("/v1/models/tiny:predict", json={"instances": ROW})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[12.0]]}


def hung_version_idle(server: BackgroundServer) -> bool:
    """No call of the hung model holds its version: TensorFlow ended the hung call."""
    return server.server.manager.get("hung").versions[1].leases == 0


def queued(server: BackgroundServer) -> int:
    batchers = server.server.manager.get("hung").versions[1].batchers.values()
    return sum(b.statistics().queued for b in batchers)


def test_rest_request_is_answered_504_at_its_deadline_and_tensorflow_frees_the_thread(
    server: BackgroundServer, http: httpx.Client
) -> None:
    response = http.post("/v2/models/hung/infer", json=v2_request(timeout_ms=300))
    assert response.status_code == 504, response.text
    assert "deadline exceeded" in response.json()["error"]
    assert_tiny_serves(http)
    # The call itself ends at the run timeout (TensorFlow cancels the dequeue): nothing left.
    wait_until(lambda: hung_version_idle(server), "TensorFlow to cancel the hung call")
    assert_tiny_serves(http)


def test_grpc_call_is_answered_deadline_exceeded_by_the_server(
    server: BackgroundServer,
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    http: httpx.Client,
) -> None:
    wait_until(lambda: hung_version_idle(server), "earlier hung calls to end")
    # The client would wait 30 s: the server answers at its maximum run time.
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict("hung"), timeout=30)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "maximum run time" in (info.value.details() or "")
    # A client deadline shorter than that is honoured too.
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict("hung"), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    answer = stub.Predict(predict("tiny"), timeout=30)
    assert list(answer.outputs["y"].float_val) == [12.0]
    assert_tiny_serves(http)


def test_a_hung_model_fills_only_its_own_limits_while_another_model_serves(
    server: BackgroundServer,
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    http: httpx.Client,
) -> None:
    wait_until(lambda: hung_version_idle(server), "earlier hung calls to end")
    answers: list[int] = []

    def ask() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/v2/models/hung/infer", json=v2_request(timeout_ms=4000))
            answers.append(response.status_code)

    # One call running (its in-flight limit), two queued (its queue limit).
    askers = [threading.Thread(target=ask) for _ in range(3)]
    for asker in askers:
        asker.start()
        time.sleep(0.05)  # in order: the first runs, the next two queue
    wait_until(lambda: queued(server) == 2, "two hung requests queued")
    full = http.post("/v2/models/hung/infer", json=v2_request(timeout_ms=4000))
    assert full.status_code == 429, full.text
    assert "queue is full" in full.json()["error"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict("hung"), timeout=30)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(20):  # the other model is unaffected
        assert_tiny_serves(http)
    answer = stub.Predict(predict("tiny"), timeout=30)
    assert list(answer.outputs["y"].float_val) == [12.0]
    for asker in askers:
        asker.join(30)
    assert answers == [504, 504, 504]
    wait_until(lambda: hung_version_idle(server), "the hung calls to end")
    assert_tiny_serves(http)


def test_sigterm_stops_a_real_server_within_the_grace_period_with_a_hung_call(
    root: Path,
) -> None:
    grace = 2.0
    command = [
        *(sys.executable, "-m", "tfmux", "serve", "--model", f"hung={root / 'hung'}"),
        *("--http-port", "0", "--grpc-port", "0", "--shutdown-grace", str(grace)),
        *("--max-run-time-ms", "120000"),  # the hung call would otherwise run for 2 minutes
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = None
            for line in proc.stdout:
                found = re.search(r"listening on (http://\S+) \(REST\)", line)
                if found:
                    url = found.group(1)
                    break
            assert url is not None, proc.stderr.read() if proc.stderr else ""
            outcome: list[object] = []

            def ask() -> None:
                with httpx.Client(base_url=url, timeout=60) as client:
                    try:
                        outcome.append(
                            client.post("/v1/models/hung:predict", json={"instances": ROW})
                        )
                    except httpx.HTTPError as exc:
                        outcome.append(exc)

            asker = threading.Thread(target=ask)
            asker.start()
            time.sleep(1.0)  # let the request reach the model
            assert asker.is_alive()  # it hangs there
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = proc.wait(timeout=grace + 15)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    asker.join(30)
    assert not asker.is_alive()
    (response,) = outcome  # answered when the grace period ended, not dropped
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 503, response.text
    assert "shutting down" in response.json()["error"]
    print(f"SIGTERM to exit with a hung call in flight: {took:.2f} s (grace {grace} s)")
