"""tfmux on a real local multi-node Ray cluster: the same APIs through the gateway, with
residency routing, one view of the cluster, management, faults and autoscaling."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

# Every raylet on 127.0.0.1 (read when Ray is imported; otherwise it binds the host's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -e '.[ray]'")

import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ModelConfig, ServerConfig

from . import savedmodels as sm
from .cluster_harness import BackgroundGateway, start_cluster, stop_cluster

pytestmark = pytest.mark.tf
X = np.array([[1.0, 2.0, 3.0]], np.float32)
TWINS = 6  # twin_0 .. twin_5, y = (i + 1) * sum(x)


@pytest.fixture(scope="module")
def twin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster-models")
    for i in range(TWINS):
        sm.tf1_twin(root, f"twin_{i}", float(i + 1))
    sm.versions(root, "versioned", (1, 2))
    return root


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    cluster = start_cluster(nodes=2)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="module")
def gateway(ray_cluster: object, twin_root: Path) -> Iterator[BackgroundGateway]:
    models = [
        ModelConfig(name=f"twin_{i}", base_path=twin_root / f"twin_{i}", load="lazy")
        for i in range(TWINS)
    ]
    config = ServerConfig(models=models, model_repositories=[twin_root], inference_threads=2)
    cluster = ClusterConfig(replicas=2, replica_cpus=1, app_name="tfmux-test")
    with BackgroundGateway(config, cluster) as gw:
        yield gw


def expected(i: int) -> float:
    return float((i + 1) * X.sum())


def test_tf_serving_rest_names_the_replica(gateway: BackgroundGateway) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/models/twin_0:predict",
        content=json.dumps({"instances": X.tolist()}),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [[expected(0)]]
    assert r.headers["x-tfmux-replica"] in set(gateway.server.service.router.replica_ids())


def test_tf_serving_grpc(gateway: BackgroundGateway) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "twin_1"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, timeout=60)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[expected(1)]]
    trailers = dict(call.trailing_metadata())
    assert trailers["x-tfmux-replica"] in set(gateway.server.service.router.replica_ids())


def test_kserve_v2_rest_and_grpc_with_tritonclient(gateway: BackgroundGateway) -> None:
    with triton_http.InferenceServerClient(gateway.url.removeprefix("http://")) as client:
        tensor = triton_http.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X, binary_data=True)
        result = client.infer("twin_2", [tensor])
        assert result.as_numpy("y").tolist() == [[expected(2)]]
    with triton_grpc.InferenceServerClient(gateway.grpc_target) as client:
        tensor = triton_grpc.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer("twin_3", [tensor])
        assert result.as_numpy("y").tolist() == [[expected(3)]]
        assert client.is_model_ready("twin_3")
