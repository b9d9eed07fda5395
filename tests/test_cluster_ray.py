"""tfmux on a real local multi-node Ray cluster: the same APIs through the gateway, with
residency routing, one view of the cluster, management, faults and autoscaling."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from click.testing import CliRunner
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfmux.cli import main
from tfmux.cluster.replica import Forwarded
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ModelConfig, ServerConfig, VersionPolicy

from . import savedmodels as sm
from .cluster_harness import BackgroundGateway, start_cluster, stop_cluster

# The dashboard's cluster view, collected here to share this module's cluster and gateway.
from .cluster_status_checks import (  # noqa: F401
    test_status_lists_every_replica_and_where_each_model_lives,
    test_the_dashboard_shows_replicas_and_where_models_live,
)

pytestmark = pytest.mark.tf
X = np.array([[1.0, 2.0, 3.0]], np.float32)
TWINS = 6  # twin_0 .. twin_5, y = (i + 1) * sum(x)
BUDGET = 256 * 1024 * 1024  # per replica


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
    models.append(
        ModelConfig(
            name="versioned",
            base_path=twin_root / "versioned",
            version_policy=VersionPolicy(kind="all"),
            labels={"stable": 1, "canary": 2},
        )
    )
    config = ServerConfig(
        models=models,
        model_repositories=[twin_root],
        inference_threads=2,
        memory_budget_bytes=BUDGET,
    )
    # 0.6 of a 1-CPU node: one replica per node, with room left for the autoscaling test's.
    cluster = ClusterConfig(replicas=2, replica_cpus=0.6, app_name="tfmux-test")
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


def predict(gateway: BackgroundGateway, model: str, client: httpx.Client | None = None) -> str:
    """One TF Serving REST predict; returns the replica that served it."""
    post = (client or httpx).post
    r = post(
        f"{gateway.url}/v1/models/{model}:predict",
        content=json.dumps({"instances": X.tolist()}),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    i = int(model.rsplit("_", 1)[1])
    assert r.json()["predictions"] == [[expected(i)]]
    return r.headers["x-tfmux-replica"]


def holders(gateway: BackgroundGateway, model: str) -> list[str]:
    return [s.replica for s in gateway.server.service.snapshots() if s.holds(model)]


def index(gateway: BackgroundGateway) -> dict[str, dict[str, object]]:
    r = httpx.post(f"{gateway.url}/v2/repository/index", timeout=30)
    assert r.status_code == 200, r.text
    return {f"{e['name']}/{e.get('version')}": e for e in r.json()}


def test_a_burst_of_first_requests_loads_the_model_once(gateway: BackgroundGateway) -> None:
    async def burst() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as client:
            body = json.dumps({"instances": X.tolist()})
            url = f"{gateway.url}/v1/models/twin_5:predict"
            answers = await asyncio.gather(*(client.post(url, content=body) for _ in range(24)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [a.headers["x-tfmux-replica"] for a in answers]

    served = asyncio.run(burst())
    assert len(set(served)) == 1
    assert holders(gateway, "twin_5") == served[:1]
    entry = index(gateway)["twin_5/1"]
    assert entry["state"] == "READY"
    assert entry["reason"] == f"replicas: {served[0]} AVAILABLE"


def test_zipf_traffic_goes_where_models_live(gateway: BackgroundGateway) -> None:
    rng = np.random.default_rng(3)
    names = [f"twin_{i}" for i in range(TWINS)]
    weights = np.array([1 / (i + 1) ** 1.1 for i in range(TWINS)])
    with httpx.Client() as client:
        for name in names:  # warmup: every model placed somewhere
            predict(gateway, name, client)
        before = dict(gateway.server.service.served)
        for name in rng.choice(names, size=120, p=weights / weights.sum()):
            replica = predict(gateway, str(name), client)
            assert replica in holders(gateway, str(name)) or not holders(gateway, str(name))
    after = gateway.server.service.served
    hits = sum(n - before.get(k, 0) for k, n in after.items() if k[1])
    misses = sum(n - before.get(k, 0) for k, n in after.items() if not k[1])
    assert hits + misses == 120
    assert hits / 120 >= 0.9
    # Placement used both replicas' budgets.
    used = {s.replica for s in gateway.server.service.snapshots() if s.held()}
    assert len(used) == 2


def test_one_view_of_the_cluster(gateway: BackgroundGateway) -> None:
    predict(gateway, "twin_0")
    entries = index(gateway)
    replicas = set(gateway.server.service.router.replica_ids())
    entry = entries["twin_0/1"]
    assert entry["state"] == "READY" and entry["memory_bytes"]
    where = str(entry["reason"]).removeprefix("replicas: ").split(", ")
    assert {w.split()[0] for w in where} <= replicas
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    assert "tfmux_cluster_replicas 2.0" in metrics
    assert 'tfmux_cluster_model_version_state{model="twin_0"' in metrics
    assert 'tfmux_cluster_requests_total{replica="' in metrics
    status = httpx.get(f"{gateway.url}/v1/models/twin_0", timeout=30).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    # tfmux models, the command people use, against the gateway.
    runner = CliRunner()
    result = runner.invoke(main, ["models", "--url", gateway.url])
    assert result.exit_code == 0, result.output
    assert "twin_0" in result.output and "replicas:" in result.output


def test_unload_and_load_apply_cluster_wide(gateway: BackgroundGateway) -> None:
    predict(gateway, "twin_1")
    r = httpx.post(f"{gateway.url}/v2/repository/models/twin_1/unload", timeout=60)
    assert r.status_code == 200, r.text
    assert holders(gateway, "twin_1") == []
    assert index(gateway)["twin_1/1"]["state"] != "READY"
    r = httpx.post(f"{gateway.url}/v2/repository/models/twin_1/load", timeout=120)
    assert r.status_code == 200, r.text
    held = holders(gateway, "twin_1")
    assert len(held) == 1
    assert predict(gateway, "twin_1") == held[0]
    # Placed on one replica, the model is loadable again on the others (the unload is undone
    # cluster-wide): a request sent to another replica directly is served there.
    service = gateway.server.service
    other = next(r for r in service.router.replica_ids() if r not in held)
    direct = Forwarded("twin_1", None, {"x": X})
    answer = gateway.call(service._call("infer", direct, replica=other))
    assert answer.replica == other
    assert answer.result.outputs["y"].tolist() == [[expected(1)]]
    # Unknown model: a clear error, and the cluster keeps serving.
    r = httpx.post(f"{gateway.url}/v2/repository/models/nope/load", timeout=60)
    assert r.status_code == 404, r.text
    predict(gateway, "twin_1")


def test_labels_move_cluster_wide(gateway: BackgroundGateway) -> None:
    def by_label(label: str) -> float:
        r = httpx.post(
            f"{gateway.url}/v1/models/versioned/labels/{label}:predict",
            content=json.dumps({"instances": [1.0]}),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return float(r.json()["predictions"][0])

    assert by_label("stable") == 1.0
    assert by_label("canary") == 2.0
    r = httpx.post(
        f"{gateway.url}/v2/repository/models/versioned/traffic",
        json={"labels": {"stable": 2}},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert by_label("stable") == 2.0
    bad = httpx.post(
        f"{gateway.url}/v2/repository/models/versioned/traffic",
        json={"labels": {"stable": 9}},
        timeout=30,
    )
    assert bad.status_code in (400, 404), bad.text
    assert by_label("stable") == 2.0


def test_every_door_reads_labels_from_the_gateways_table(gateway: BackgroundGateway) -> None:
    """Status, readiness and the traffic table name a label's version as the gateway's table
    has it (ClusterService answers the transports' reads, as ServingService does)."""
    url = gateway.url
    traffic = httpx.get(f"{url}/v2/repository/models/versioned/traffic", timeout=30)
    assert traffic.status_code == 200, traffic.text
    canary = traffic.json()["labels"]["canary"]
    r = httpx.post(
        f"{url}/v1/models/versioned/labels/canary:predict",
        content=json.dumps({"instances": [1.0]}),
        timeout=60,
    )
    assert r.status_code == 200, r.text  # the canary's version is now AVAILABLE somewhere
    r = httpx.get(f"{url}/v1/models/versioned/labels/canary", timeout=30)
    assert r.status_code == 200, r.text
    assert [s["version"] for s in r.json()["model_version_status"]] == [str(canary)]
    assert httpx.get(f"{url}/v1/models/versioned/labels/nope", timeout=30).status_code == 404
    assert httpx.get(f"{url}/v2/models/versioned@canary/ready", timeout=30).status_code == 200
    assert httpx.get(f"{url}/v2/models/versioned@nope/ready", timeout=30).status_code == 404
    assert httpx.get(f"{url}/v2/repository/models/nope/traffic", timeout=30).status_code == 404
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "versioned"
    request.model_spec.version_label = "canary"
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        (status,) = stub.GetModelStatus(request, timeout=60).model_version_status
        assert status.version == canary
        request.model_spec.version_label = "nope"
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelStatus(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with triton_grpc.InferenceServerClient(gateway.grpc_target) as client:
        assert client.is_model_ready("versioned@canary")
        assert not client.is_model_ready("versioned@nope")
    paths = httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    params = {
        p["name"]: p for p in paths["/v1/models/{model_name}/labels/{label}"]["get"]["parameters"]
    }
    assert {"stable", "canary"} <= set(params["label"]["examples"])


def test_shadows_are_mirrored_and_compared_at_the_gateway(gateway: BackgroundGateway) -> None:
    traffic = f"{gateway.url}/v2/repository/models/versioned/traffic"
    mirror = {"split": {"1": 100}, "shadow": {"target": "2", "percent": 100}}
    r = httpx.post(traffic, json=mirror, timeout=30)
    assert r.status_code == 200, r.text
    try:
        for sent in (1, 2, 3):  # the primary answers (x * 1); each mirror ends before the next
            r = httpx.post(
                f"{gateway.url}/v1/models/versioned:predict",
                content=json.dumps({"instances": [1.0]}),
                timeout=60,
            )
            assert r.status_code == 200, r.text
            assert r.json()["predictions"] == [1.0]
            deadline = time.monotonic() + 60
            while gateway.server.service.shadows.counts("versioned").disagree < sent:
                assert time.monotonic() < deadline, gateway.server.service.shadows.counts(
                    "versioned"
                )
                time.sleep(0.05)
        body = httpx.get(f"{gateway.url}/status", timeout=30).json()
        (row,) = [m for m in body["models"] if m["name"] == "versioned"]
        shadow = row["shadow"]
        assert (shadow["target"], shadow["agree"], shadow["disagree"]) == ("2", 0, 3)  # x*2
        assert shadow["error"] == shadow["dropped"] == 0
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text
        labels = 'model="versioned",outcome="disagree",shadow_version="2",version="1"'
        assert f"tfmux_shadow_requests_total{{{labels}}} 3.0" in metrics
    finally:
        r = httpx.post(traffic, json={"split": {}, "shadow": None}, timeout=30)
        assert r.status_code == 200, r.text


def test_bad_requests_get_clear_errors_and_the_cluster_keeps_serving(
    gateway: BackgroundGateway,
) -> None:
    r = httpx.post(f"{gateway.url}/v1/models/twin_0:predict", content=b"{not json", timeout=30)
    assert r.status_code == 400
    r = httpx.post(
        f"{gateway.url}/v1/models/twin_0:predict",
        content=json.dumps({"instances": [[1.0, 2.0]]}),
        timeout=30,
    )
    assert r.status_code == 400 and "x" in r.text
    r = httpx.post(
        f"{gateway.url}/v1/models/absent:predict", content=json.dumps({"instances": [1]})
    )
    assert r.status_code == 404
    predict(gateway, "twin_0")


def test_autoscaling_adds_replicas_under_load(ray_cluster: object, twin_root: Path) -> None:
    config = ServerConfig(
        models=[ModelConfig(name="twin_0", base_path=twin_root / "twin_0", load="lazy")],
        inference_threads=2,
    )
    cluster = ClusterConfig(
        app_name="tfmux-autoscale",
        replica_cpus=0.2,
        autoscaling={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0.5,
            "look_back_period_s": 2,
            "metrics_interval_s": 0.5,
        },
    )
    with BackgroundGateway(config, cluster) as gw:
        router = gw.server.service.router
        assert len(router.replica_ids()) == 1

        async def load() -> int:
            async with httpx.AsyncClient(timeout=60) as client:
                body = json.dumps({"instances": X.tolist()})
                url = f"{gw.url}/v1/models/twin_0:predict"
                deadline = time.monotonic() + 90
                sent = 0

                async def worker() -> None:
                    nonlocal sent
                    while time.monotonic() < deadline and len(router.replica_ids()) < 2:
                        r = await client.post(url, content=body)
                        assert r.status_code == 200, r.text
                        sent += 1

                await asyncio.gather(*(worker() for _ in range(16)))
                return sent

        sent = asyncio.run(load())
        assert len(router.replica_ids()) == 2, f"no replica added after {sent} requests"
        # The status API shows the added replica beside the first.
        status = httpx.get(f"{gw.url}/status", timeout=30)
        assert status.status_code == 200, status.text
        shown = {r["replica"] for r in status.json()["replicas"]}
        assert shown == set(router.replica_ids())


def _kill_during_traffic(
    gateway: BackgroundGateway, model: str, kill: Callable[[str], None]
) -> tuple[str, list[object]]:
    """Kill (by ``kill``) the replica serving ``model`` while requests for it stream in;
    returns the killed replica and every outcome (a status code, or the exception)."""
    victim = predict(gateway, model)
    outcomes: list[object] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        f"{gateway.url}/v1/models/{model}:predict",
                        content=json.dumps({"instances": X.tolist()}),
                    )
                    outcomes.append(r.status_code)
                except httpx.HTTPError as exc:
                    outcomes.append(exc)

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    kill(victim)
    # The status API answers meanwhile: the victim soon gone or shown unreachable, never an
    # error for the whole page.
    seen = "up"
    for _ in range(40):
        status = httpx.get(f"{gateway.url}/status", timeout=30)
        assert status.status_code == 200, status.text
        states = {r["replica"]: r["state"] for r in status.json()["replicas"]}
        seen = states.get(victim, "gone")
        if seen != "up":
            break
        time.sleep(0.25)
    assert seen in ("gone", "unreachable"), states
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # served elsewhere on a next request
            r = httpx.post(
                f"{gateway.url}/v1/models/{model}:predict",
                content=json.dumps({"instances": X.tolist()}),
                timeout=30,
            )
            if r.status_code == 200 and r.headers["x-tfmux-replica"] != victim:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{model} was not served by another replica within 60 s")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return victim, outcomes


def _wait_for_replicas(gateway: BackgroundGateway, count: int, without: str) -> None:
    router = gateway.server.service.router
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ids = router.replica_ids()
        if len(ids) == count and without not in ids:
            return
        time.sleep(0.5)
    pytest.fail(f"Serve did not bring back {count} replicas: {router.replica_ids()}")


def test_a_killed_replica_fails_fast_and_is_replaced(gateway: BackgroundGateway) -> None:
    import ray

    def kill(replica: str) -> None:
        name = f"SERVE_REPLICA::tfmux-test#TfmuxReplica#{replica}"
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    victim, outcomes = _kill_during_traffic(gateway, "twin_2", kill)
    assert outcomes and set(outcomes) <= {200, 503}, outcomes  # never a hang or a timeout
    _wait_for_replicas(gateway, 2, victim)
    predict(gateway, "twin_2")


def test_a_removed_node_takes_its_replica_and_traffic_moves(
    gateway: BackgroundGateway, ray_cluster: Any
) -> None:
    nodes = {n.node_id: n for n in ray_cluster.list_all_nodes() if not n.head}

    def remove(replica: str) -> None:
        node = next(s.node for s in gateway.server.service.snapshots() if s.replica == replica)
        assert node in nodes, "the model to move must live on a worker node"
        ray_cluster.remove_node(nodes[node], allow_graceful=False)

    def resident_on_worker() -> list[str]:
        snaps = gateway.server.service.snapshots()
        worker = next(s for s in snaps if s.node in nodes)
        return [m for m in worker.models if worker.available(m) and m.startswith("twin_")]

    if not resident_on_worker():  # (a fresh replica): place one there, the most free budget
        for verb in ("unload", "load"):
            r = httpx.post(f"{gateway.url}/v2/repository/models/twin_4/{verb}", timeout=120)
            assert r.status_code == 200, r.text
    model = resident_on_worker()[0]
    victim, outcomes = _kill_during_traffic(gateway, model, remove)
    assert outcomes and set(outcomes) <= {200, 503}, outcomes
    ray_cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)  # room to restart
    _wait_for_replicas(gateway, 2, victim)
