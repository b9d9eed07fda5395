"""Traffic routing through every door, changed at run time, and visible: routing keys (header,
V2 parameter, gRPC metadata), V2 labels (``version_label``, ``MODEL@LABEL``), the headers that
name what answered, the traffic management API, ``tfmux traffic``, and docs/traffic.md.

The server is built from the YAML example of docs/traffic.md (``fraud``, ``fraud_gbt`` and the
alias ``fraud_compare``), over the ``versioned`` test model whose output is ``y = x * version``:
every answer's value tells which version computed it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tfmux.config import ModelConfig, ServerConfig, ShadowConfig, VersionPolicy, load_yaml_config
from tfmux.traffic_client import read_figures

from .fakes import wait_until
from .harness import BackgroundServer
from .test_management_cli import cli_env

pytestmark = pytest.mark.tf

DOC = Path(__file__).resolve().parent.parent / "docs" / "traffic.md"
TOKEN = "traffic-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL = VersionPolicy(kind="all")
ONLY_2 = VersionPolicy(kind="specific", versions=(2,))
KEYS = [f"user-{n}" for n in range(8)]
CLI = [sys.executable, "-m", "tfmux"]


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def doc_config(folder: Path) -> ServerConfig:
    (example,) = doc_blocks("yaml")
    path = folder / "tfmux.yaml"
    path.write_text(example)
    server, models = load_yaml_config(path, "eager")
    return ServerConfig(**server, models=models)


@pytest.fixture(scope="module")
def server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """docs/traffic.md's config over real models, plus ``versioned`` and ``ab`` (labels
    stable=1, canary=3), ``cr`` (classify/regress) and ``lazy`` (versions not loaded yet)."""
    example = doc_config(tmp_path_factory.mktemp("doc"))
    fraud, gbt = example.models
    versioned = model_root / "versioned"
    labels = {"stable": 1, "canary": 3}
    models = [
        fraud.model_copy(update={"base_path": versioned}),
        gbt.model_copy(update={"base_path": versioned, "version_policy": ONLY_2}),
        ModelConfig(name="versioned", base_path=versioned, version_policy=ALL, labels=labels),
        ModelConfig(name="ab", base_path=versioned, version_policy=ALL, labels=labels),
        ModelConfig(name="cr", base_path=model_root / "cr"),
        ModelConfig(name="lazy", base_path=versioned, version_policy=ALL, load="lazy"),
    ]
    config = example.model_copy(update={"models": models, "admin_token": TOKEN})
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture()
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture()
def stub(server: BackgroundServer) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{server.server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture()
def v2(server: BackgroundServer) -> Iterator[Any]:
    with triton.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        yield client


def change(http: httpx.Client, name: str, **body: Any) -> dict[str, Any]:
    r = http.post(f"/v2/repository/models/{name}/traffic", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def reset(http: httpx.Client, name: str = "versioned") -> None:
    change(http, name, labels={"stable": 1, "canary": 3}, split={}, shadow=None)


def predict(http: httpx.Client, path: str = "versioned", **headers: str) -> httpx.Response:
    """A /v1 predict of x = 1 whose header and value must name the same version."""
    r = http.post(f"/v1/models/{path}:predict", json={"instances": [1.0]}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [float(r.headers["x-model-version"])]
    return r


def version_of(r: httpx.Response) -> int:
    return int(r.headers["x-model-version"])


def v2_body(**parameters: Any) -> dict[str, Any]:
    x = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    return {"inputs": [x], **({"parameters": parameters} if parameters else {})}


def v2_rest(http: httpx.Client, path: str, headers: dict[str, str] | None = None, **params: Any):
    r = http.post(f"/v2/models/{path}/infer", json=v2_body(**params), headers=headers or {})
    if r.status_code == 200:
        doc = r.json()
        assert doc["outputs"][0]["data"] == [float(doc["model_version"])]
        assert r.headers["x-model-version"] == doc["model_version"]
    return r


def tfs_grpc(stub: Any, name: str, key: str | None = None, label: str = "") -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    metadata = [("x-routing-key", key)] if key else None
    response = stub.Predict(request, metadata=metadata)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [response.model_spec.version.value]
    return response.model_spec


def v2_grpc(client: Any, name: str, version: str = "", **kwargs: Any) -> Any:
    x = triton.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], np.float32))
    response = client.infer(name, [x], model_version=version, **kwargs).get_response()
    value = triton.InferResult(response).as_numpy("y").tolist()
    assert value == [float(response.model_version)]
    return response


# -- routing keys --------------------------------------------------------------------------------


def test_a_routing_key_keeps_its_version_under_a_50_50_split(http) -> None:
    change(http, "versioned", split={"stable": 50, "canary": 50})
    chosen = {}
    for key in KEYS:
        served = {version_of(predict(http, **{"X-Routing-Key": key})) for _ in range(50)}
        assert len(served) == 1, (key, served)
        chosen[key] = served.pop()
    assert set(chosen.values()) == {1, 3}  # the keys spread over both arms
    assert {version_of(predict(http)) for _ in range(50)} == {1, 3}  # no key: at random
    reset(http)


def test_every_door_sends_a_key_to_the_same_arm(http, stub, v2) -> None:
    change(http, "versioned", split={"stable": 50, "canary": 50})
    arm = {key: version_of(predict(http, **{"X-Routing-Key": key})) for key in KEYS}
    assert set(arm.values()) == {1, 3}
    other = {key: next(k for k in KEYS if arm[k] != arm[key]) for key in KEYS}
    for key in KEYS[:4]:
        header = {"X-Routing-Key": key}
        for _ in range(5):
            assert v2_rest(http, "versioned", header).json()["model_version"] == str(arm[key])
            # The request parameter wins over the header.
            r = v2_rest(http, "versioned", {"X-Routing-Key": other[key]}, routing_key=key)
            assert r.json()["model_version"] == str(arm[key])
            assert tfs_grpc(stub, "versioned", key).version.value == arm[key]
            served = v2_grpc(v2, "versioned", headers={"x-routing-key": key})
            assert served.model_version == str(arm[key])
            served = v2_grpc(v2, "versioned", parameters={"routing_key": key})
            assert served.model_version == str(arm[key])
    reset(http)


# -- labels in V2 --------------------------------------------------------------------------------


def test_v2_rest_names_a_label_by_parameter_or_model_at_label(http) -> None:
    r = v2_rest(http, "versioned@canary")
    assert r.status_code == 200 and r.json()["model_name"] == "versioned"
    assert r.json()["model_version"] == "3"
    assert v2_rest(http, "versioned", version_label="stable").json()["model_version"] == "1"
    assert v2_rest(http, "versioned@stable", version_label="stable").status_code == 200
    meta = http.get("/v2/models/versioned@canary").json()
    assert meta["name"] == "versioned" and "3" in meta["versions"]
    assert http.get("/v2/models/versioned@canary/ready").status_code == 200
    for path, params, status, needle in [
        ("versioned@canary/versions/2", {}, 400, "not both"),
        ("versioned/versions/2", {"version_label": "stable"}, 400, "not both"),
        ("versioned@canary", {"version_label": "stable"}, 400, "canary"),
        ("versioned@nope", {}, 404, "nope"),
        ("@canary", {}, 400, "MODEL@LABEL"),
        ("versioned", {"version_label": 3}, 400, "version_label"),
        ("versioned", {"routing_key": 3}, 400, "routing_key"),
    ]:
        r = v2_rest(http, path, **params)
        assert r.status_code == status and needle in r.json()["error"], (path, r.text)
        assert v2_rest(http, "versioned@canary").status_code == 200
    assert http.get("/v2/models/versioned@nope/ready").status_code == 404


def test_v2_grpc_names_a_label_by_parameter_or_model_at_label(v2) -> None:
    served = v2_grpc(v2, "versioned@canary")
    assert (served.model_name, served.model_version) == ("versioned", "3")
    served = v2_grpc(v2, "versioned", parameters={"version_label": "stable"})
    assert served.model_version == "1"
    assert v2.is_model_ready("versioned@canary") and not v2.is_model_ready("versioned@nope")
    assert v2.get_model_metadata("versioned@canary").name == "versioned"
    for name, version, params, status in [
        ("versioned", "2", {"version_label": "stable"}, "INVALID_ARGUMENT"),
        ("versioned@canary", "2", {}, "INVALID_ARGUMENT"),
        ("versioned@nope", "", {}, "NOT_FOUND"),
        ("versioned", "", {"version_label": 3}, "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(InferenceServerException) as info:
            v2_grpc(v2, name, version, parameters=params)
        assert info.value.status() == f"StatusCode.{status}", info.value.message()
        assert v2_grpc(v2, "versioned@canary").model_version == "3"


# -- what answered -------------------------------------------------------------------------------


def test_every_answer_names_the_version_and_arm_that_served(http, stub, v2) -> None:
    change(http, "versioned", split={"stable": 50, "canary": 50})
    labels = {"stable": 1, "canary": 3}
    for _ in range(20):
        r = predict(http)
        assert r.headers["x-model-name"] == "versioned"
        assert labels[r.headers["x-model-arm"]] == version_of(r)
        r = v2_rest(http, "versioned")
        assert labels[r.headers["x-model-arm"]] == version_of(r)
        assert tfs_grpc(stub, "versioned").name == "versioned"  # the version: checked inside
        v2_grpc(v2, "versioned")
    r = predict(http, "versioned/versions/2")  # no split chose: no arm
    assert version_of(r) == 2 and "x-model-arm" not in r.headers
    reset(http)
    for verb in ("classify", "regress"):
        body = {"signature_name": verb, "examples": [{"x": [1.0, 2.0, 3.0]}]}
        r = http.post(f"/v1/models/cr:{verb}", json=body)
        assert r.status_code == 200, r.text
        assert (r.headers["x-model-name"], r.headers["x-model-version"]) == ("cr", "1")


def test_an_alias_answers_with_the_concrete_model(http, stub, v2) -> None:
    names = set()
    for _ in range(30):
        r = predict(http, "fraud_compare")
        names.add(r.headers["x-model-name"])
        assert r.headers["x-model-arm"] == r.headers["x-model-name"]
        assert r.headers["x-model-name"] != "fraud_gbt" or version_of(r) == 2
        assert tfs_grpc(stub, "fraud_compare").name in ("fraud", "fraud_gbt")
        assert v2_grpc(v2, "fraud_compare").model_name in ("fraud", "fraud_gbt")
    assert names == {"fraud", "fraud_gbt"}


# -- the management API --------------------------------------------------------------------------


def test_traffic_is_read_without_a_token_and_changed_with_it(http) -> None:
    path = "/v2/repository/models/versioned/traffic"
    state = {"labels": {"stable": 1, "canary": 3}, "split": {}, "shadow": None}
    assert http.get(path).json() == state
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = http.post(path, json={"split": {"stable": 1}}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert http.get(path).json() == state
    assert change(http, "versioned", split={"stable": 1})["split"] == {"stable": 1.0}
    reset(http)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"split": {"stable": -1, "canary": 2}}, 400, ">= 0"),
        ({"split": {"stable": 0, "canary": 0}}, 400, "sum"),
        ({"split": {"nope": 1}}, 400, "nope"),
        ({"split": {"7": 1}}, 400, "'7'"),
        ({"split": {"stable": "90"}}, 400, "number"),
        ({"split": [1]}, 400, "object"),
        ({"shadow": {"target": "nope"}}, 400, "nope"),
        ({"shadow": {"target": "2", "percent": 150}}, 400, "percent"),
        ({"shadow": {"target": "2", "share": 5}}, 400, "shadow"),
        ({"labels": {"canary": "3"}}, 400, "version number"),
        ({"labels": {"canary": 7}}, 400, "no version 7"),
        ({"labels": {"bad-label": 1}}, 400, "must match"),
        ({"labels": {"canary": None}, "split": {"canary": 1}}, 400, "canary"),
        ({"allow_unavailable": "yes"}, 400, "allow_unavailable"),
        ({"splitt": {}}, 400, "unknown keys"),
        (b"[1]", 400, "object"),
        (b"{", 400, "JSON"),
    ],
)
def test_a_refused_change_changes_nothing(http, body: Any, status: int, needle: str) -> None:
    path = "/v2/repository/models/versioned/traffic"
    before = change(http, "versioned", split={"stable": 3, "canary": 1})
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = http.post(path, headers=AUTH, **sent)
    assert r.status_code == status and needle in r.json()["error"], r.text
    assert http.get(path).json() == before
    assert version_of(predict(http)) in (1, 3)
    reset(http)


def test_unknown_models_methods_and_aliases(http) -> None:
    assert http.get("/v2/repository/models/nope/traffic").status_code == 404
    assert http.post("/v2/repository/models/nope/traffic", json={}, headers=AUTH).status_code == 404
    r = http.put("/v2/repository/models/versioned/traffic", json={}, headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    alias = http.get("/v2/repository/models/fraud_compare/traffic").json()
    assert alias == {
        "labels": {},
        "split": {"fraud": 50.0, "fraud_gbt": 50.0},
        "shadow": None,
        "alias": True,
    }
    r = http.post("/v2/repository/models/fraud_compare/traffic", json={}, headers=AUTH)
    assert r.status_code == 501 and "config file" in r.json()["error"]
    assert http.get("/v2/repository/models/fraud/traffic").json()["shadow"]["target"] == "2"


def test_a_moved_label_is_honoured_by_every_door(http, stub, v2) -> None:
    state = change(http, "versioned", labels={"canary": 2, "temp": 3})
    assert state["labels"] == {"stable": 1, "canary": 2, "temp": 3}
    assert version_of(predict(http, "versioned/labels/canary")) == 2
    assert (
        http.get("/v1/models/versioned/labels/canary").json()["model_version_status"][0]["version"]
        == "2"
    )
    assert tfs_grpc(stub, "versioned", label="canary").version.value == 2
    assert v2_rest(http, "versioned@canary").json()["model_version"] == "2"
    assert v2_grpc(v2, "versioned", parameters={"version_label": "canary"}).model_version == "2"
    state = change(http, "versioned", labels={"temp": None}, split={"stable": 0, "canary": 1})
    assert state["labels"] == {"stable": 1, "canary": 2}
    r = predict(http)
    assert (r.headers["x-model-arm"], version_of(r)) == ("canary", 2)
    state = change(http, "versioned", shadow={"target": "3"})
    assert state["shadow"] == {"target": "3", "percent": 100.0}
    assert change(http, "versioned", split={"stable": 1})["shadow"]["target"] == "3"  # kept
    assert change(http, "versioned", shadow=None)["split"] == {"stable": 1.0}
    reset(http)


def test_a_label_points_at_a_version_not_available_only_when_allowed(http) -> None:
    path = "/v2/repository/models/lazy/traffic"
    r = http.post(path, json={"labels": {"canary": 2}}, headers=AUTH)
    assert r.status_code == 400 and "not AVAILABLE" in r.json()["error"], r.text
    assert http.get(path).json()["labels"] == {}
    state = change(http, "lazy", labels={"canary": 2}, allow_unavailable=True)
    assert state["labels"] == {"canary": 2}
    assert version_of(predict(http, "lazy/labels/canary")) == 2  # loads it on demand


def test_the_management_switch_refuses_changes_but_not_reads(model_root: Path) -> None:
    model = ModelConfig(name="versioned", base_path=model_root / "versioned", load="lazy")
    with BackgroundServer(ServerConfig(models=[model], management=False)) as off:
        path = f"{off.url}/v2/repository/models/versioned/traffic"
        r = httpx.post(path, json={"split": {"1": 1}})
        assert r.status_code == 403 and "--no-management" in r.json()["error"]
        assert httpx.get(path).json() == {"labels": {}, "split": {}, "shadow": None}


# -- tfmux traffic -------------------------------------------------------------------------------


def tfmux(server: BackgroundServer, *args: str, token: str | None = TOKEN) -> Any:
    return subprocess.run(
        [*CLI, "traffic", *args, "--url", server.url],
        capture_output=True,
        text=True,
        env=cli_env(token),
        timeout=120,
    )


def shadows_done(http: httpx.Client, model: str) -> float:
    pattern = rf'tfmux_shadow_requests_total{{[^}}]*model="{model}"[^}}]*}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, http.get("/metrics").text))


def test_the_cli_shows_the_split_and_per_arm_figures_and_changes_it(server, http) -> None:
    out = tfmux(server, "ab", "--split", "stable=50,canary=50", "--shadow", "2:100")
    assert out.returncode == 0, out.stderr
    assert "changed the traffic of ab" in out.stdout
    arms = [predict(http, "ab", **{"X-Routing-Key": f"k{n}"}).headers for n in range(40)]
    routed = {arm: sum(h["x-model-arm"] == arm for h in arms) for arm in ("stable", "canary")}
    wait_until(lambda: shadows_done(http, "ab") == 40, "every mirror to be counted", 60)
    out = tfmux(server, "ab", token=None)  # reading needs no token
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for arm, version in (("stable", 1), ("canary", 3)):
        row = rf"{arm}\W+50\W+50\.0%\W+v{version}\W+{routed[arm]}\W+[\d.]+%"
        assert re.search(row, text), text
        version_row = rf"v{version}\W+{arm}\W+{routed[arm]}\W+0\W+0\.0%\W+[\d.]+ m?s\W+[\d.]+ m?s"
        assert re.search(version_row, text), text
    assert "mirrored to v2" in text and "mean |diff| y" in text
    assert re.search(r"ab v1\W+v2", text) and re.search(r"ab v3\W+v2", text), text
    out = tfmux(server, "ab", "--split", "stable=70,canary=30", "--no-shadow")
    assert out.returncode == 0 and re.search(r"stable\W+70\W+70\.0%", out.stdout), out.stdout
    assert http.get("/v2/repository/models/ab/traffic").json()["shadow"] is None


def test_the_cli_reports_refusals_with_exit_codes(server, http) -> None:
    out = tfmux(server, "ab", "--split", "nope=1")
    assert out.returncode == 1 and "nope" in out.stderr, out.stderr
    out = tfmux(server, "ab", "--split", "stable=1", token=None)
    assert out.returncode == 4 and "token" in out.stderr, out.stderr
    out = tfmux(server, "ab", "--split", "stable=x")
    assert out.returncode == 2 and "not a number" in out.stderr, out.stderr
    out = tfmux(server, "ab", "--shadow", "2", "--no-shadow")
    assert out.returncode == 2, out.stderr
    out = tfmux(server, "ab", "--label", "canary=2", "--split", "")
    assert out.returncode == 0 and "no split" in out.stdout, out.stdout
    assert http.get("/v2/repository/models/ab/traffic").json()["labels"]["canary"] == 2


METRICS = """\
tfmux_routed_requests_total{model="m",arm="stable",version="1"} 9.0
tfmux_routed_requests_total{model="other",arm="stable",version="1"} 5.0
tfmux_requests_total{model="m",version="1",method="predict",code="OK"} 8.0
tfmux_requests_total{model="m",version="1",method="infer",code="INVALID_ARGUMENT"} 2.0
tfmux_requests_total{model="m",version="",method="predict",code="NOT_FOUND"} 4.0
tfmux_request_latency_seconds_bucket{model="m",version="1",method="predict",le="0.001"} 2.0
tfmux_request_latency_seconds_bucket{model="m",version="1",method="predict",le="0.002"} 6.0
tfmux_request_latency_seconds_bucket{model="m",version="1",method="predict",le="+Inf"} 8.0
tfmux_shadow_requests_total{model="m",version="1",shadow_version="2",outcome="agree"} 3.0
tfmux_shadow_requests_total{model="m",version="1",shadow_version="2",outcome="disagree"} 1.0
tfmux_shadow_requests_total{model="m",version="1",shadow_version="",outcome="dropped"} 2.0
tfmux_shadow_mean_abs_diff_sum{model="m",version="1",shadow_version="2",output="y"} 0.5
tfmux_shadow_mean_abs_diff_count{model="m",version="1",shadow_version="2",output="y"} 4.0
"""


def test_figures_are_read_from_the_metrics_text() -> None:
    figures = read_figures(METRICS, "m", {"m"})
    assert figures.routed == {"stable": 9.0}
    (version,) = figures.versions.values()
    assert (version.requests, version.errors) == (10.0, 2.0)
    assert version.quantile(0.5) == pytest.approx(0.0015)  # rank 4 of 2..6 in (1, 2] ms
    assert version.quantile(0.2) == pytest.approx(0.0008)  # rank 1.6 of 0..2 in (0, 1] ms
    assert version.quantile(0.99) == pytest.approx(0.002)  # past the last finite bound
    shadow = figures.shadows["m", "1"]
    assert shadow.agreement() == 0.75 and shadow.shadow_versions == {"2"}
    assert shadow.diffs == {"y": [0.5, 4.0]} and shadow.outcomes["dropped"] == 2.0


# -- docs/traffic.md -----------------------------------------------------------------------------


def test_the_doc_example_is_a_valid_config(tmp_path: Path) -> None:
    config = doc_config(tmp_path)
    fraud, gbt = config.models
    assert fraud.version_policy.kind == "all" and fraud.labels == {"stable": 1, "canary": 3}
    assert fraud.traffic.split == {"stable": 90, "canary": 10}
    assert fraud.traffic.shadow == ShadowConfig(target="2", percent=50)
    assert gbt.base_path == tmp_path / "models" / "fraud_gbt"
    (alias,) = config.aliases
    assert alias.name == "fraud_compare" and alias.split == {"fraud": 50, "fraud_gbt": 50}


def test_the_doc_shell_examples_work(server, http) -> None:
    """Every curl and tfmux line of the doc's ```bash blocks, against the test server."""
    lines = [
        line
        for block in doc_blocks("bash")
        for line in block.splitlines()
        if line.startswith(("curl ", "tfmux "))
    ]
    assert any("/traffic" in line for line in lines) and any("tfmux traffic" in x for x in lines)
    env = cli_env(TOKEN, server.url)
    for line in lines:
        line = line.replace("localhost:8501", f"127.0.0.1:{server.server.http_port}")
        line = re.sub(r"^curl ", "curl -sS --fail-with-body --max-time 60 ", line)
        line = re.sub(r"^tfmux ", f"{sys.executable} -m tfmux ", line)
        out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env)
        assert out.returncode == 0, f"{line}\n{out.stdout}{out.stderr}"
    state = http.get("/v2/repository/models/fraud/traffic").json()
    assert state["split"] == {"stable": 90.0, "canary": 10.0}
    assert state["shadow"] == {"target": "canary", "percent": 100.0}
    assert version_of(predict(http, "fraud/labels/canary")) == 3
