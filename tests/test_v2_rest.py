"""End to end over real sockets: the KServe V2 REST API with tritonclient.http, and the OpenAPI
document of the whole REST surface."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import tfmux
from tfmux.config import ModelConfig, ServerConfig

from . import savedmodels as sm
from .harness import BackgroundServer
from .test_e2e_rest import sample

pytestmark = pytest.mark.tf

A = np.array([[1.5, 2.0], [0.0, -1.0], [0.25, 8.0]], np.float32)
B = np.array([3, -4, 2**40], np.int64)
S = np.array([b"abc", "é".encode(), b""], object)
OUTPUTS = ("sum", "b_twice", "s_upper", "s_len")


@pytest.fixture(scope="module")
def client(e2e_server: BackgroundServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(e2e_server.url.removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def http(e2e_server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=e2e_server.url, timeout=60) as c:
        yield c


def inputs(
    binary: bool, a: np.ndarray = A, a_type: str = "FP32", b_type: str = "INT64"
) -> list[triton.InferInput]:
    made = []
    for name, array, datatype in (("a", a, a_type), ("b", B, b_type), ("s", S, "BYTES")):
        item = triton.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=binary)
        made.append(item)
    return made


def tfs_answer(http: httpx.Client) -> dict[str, Any]:
    """What TF Serving's REST API answers for the same tensors."""
    body = {"inputs": {"a": A.tolist(), "b": B.tolist(), "s": [s.decode() for s in S]}}
    r = http.post("/v1/models/multi:predict", content=json.dumps(body))
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


def assert_good(client: triton.InferenceServerClient) -> None:
    """After any bad request, a good one still succeeds."""
    result = client.infer("multi", inputs(binary=False))
    np.testing.assert_array_equal(result.as_numpy("b_twice"), B * 2)


# -- inference --------------------------------------------------------------------------------


@pytest.mark.parametrize(("binary_in", "binary_out"), [(a, b) for a in (0, 1) for b in (0, 1)])
def test_infer_equals_the_tf_serving_answer(client, http, binary_in, binary_out) -> None:
    requested = [triton.InferRequestedOutput(n, binary_data=bool(binary_out)) for n in OUTPUTS]
    result = client.infer("multi", inputs(bool(binary_in)), outputs=requested)
    expected = tfs_answer(http)
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == ("multi", "1")
    types = {o["name"]: o["datatype"] for o in response["outputs"]}
    assert types == {"sum": "FP32", "b_twice": "INT64", "s_upper": "BYTES", "s_len": "INT32"}
    assert all(("data" in o) != binary_out for o in response["outputs"])
    got_sum = result.as_numpy("sum")
    assert got_sum.dtype == np.float32
    np.testing.assert_array_equal(got_sum, np.array(expected["sum"], np.float32))
    np.testing.assert_array_equal(result.as_numpy("b_twice"), expected["b_twice"])
    np.testing.assert_array_equal(result.as_numpy("s_len"), np.array(expected["s_len"], np.int32))
    texts = [v if isinstance(v, str) else v.decode() for v in result.as_numpy("s_upper")]
    assert texts == expected["s_upper"]


def test_default_outputs_are_all_binary_as_tritonclient_asks(client) -> None:
    result = client.infer("multi", inputs(binary=True))
    response = result.get_response()
    assert sorted(o["name"] for o in response["outputs"]) == sorted(OUTPUTS)
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert list(result.as_numpy("s_upper")) == [b"ABC", "é".encode(), b""]  # ASCII upper


def test_id_is_echoed_only_when_given(client) -> None:
    assert client.infer("multi", inputs(True), request_id="req-42").get_response()["id"] == "req-42"
    assert "id" not in client.infer("multi", inputs(True)).get_response()


def test_outputs_selection_keeps_the_requested_order(client) -> None:
    wanted = [triton.InferRequestedOutput("s_len", binary_data=False)]
    wanted.append(triton.InferRequestedOutput("sum", binary_data=True))
    response = client.infer("multi", inputs(False), outputs=wanted).get_response()
    assert [o["name"] for o in response["outputs"]] == ["s_len", "sum"]
    assert response["outputs"][0]["data"] == [3, 2, 0]


def test_lossless_dtype_conversions_are_accepted(client) -> None:
    """FP64 and FP16 values that are exact in FP32 give the same answer as FP32 itself."""
    expected = client.infer("multi", inputs(True)).as_numpy("sum")
    for binary in (False, True):
        result = client.infer("multi", inputs(binary, A.astype(np.float64), "FP64"))
        np.testing.assert_array_equal(result.as_numpy("sum"), expected)
    half = client.infer("multi", inputs(True, A.astype(np.float16), "FP16"))
    np.testing.assert_array_equal(half.as_numpy("sum"), expected)
    assert half.as_numpy("sum").dtype == np.float32


def test_lossy_dtype_conversion_is_a_clear_400(client) -> None:
    lossy = np.array([[0.1, 0.2]] * 3, np.float64)
    with pytest.raises(InferenceServerException) as info:
        client.infer("multi", inputs(True, lossy, "FP64"))
    assert info.value.status() == "400"
    assert "cannot be converted without loss" in info.value.message()
    assert_good(client)


def test_versions_and_signature_parameter(client) -> None:
    x = triton.InferInput("x", [2], "FP32")
    x.set_data_from_numpy(np.array([1.5, -2.0], np.float32))
    latest = client.infer("versioned", [x])
    assert latest.get_response()["model_version"] == "3"
    np.testing.assert_array_equal(latest.as_numpy("y"), [4.5, -6.0])
    two = client.infer("versioned", [x], model_version="2")
    assert two.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(two.as_numpy("y"), [3.0, -4.0])

    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]
    examples = triton.InferInput("inputs", [2], "BYTES")
    examples.set_data_from_numpy(sm.serialize_examples(rows))
    result = client.infer("cr", [examples], parameters={"signature_name": "regress"})
    expected = np.array(rows, np.float32) @ sm.REGRESS_WEIGHTS + sm.REGRESS_BIAS
    np.testing.assert_allclose(result.as_numpy("outputs"), expected, rtol=1e-6)


def test_metrics_label_v2_requests_infer(client, http) -> None:
    client.infer("multi", inputs(True))
    text = http.get("/metrics").text
    assert sample(text, "tfmux_requests_total", model="multi", method="infer", code="OK") >= 1


# -- metadata, readiness, repository index -----------------------------------------------------


def test_server_metadata(client) -> None:
    assert client.get_server_metadata() == {
        "name": "tfmux",
        "version": tfmux.__version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


def test_model_metadata(client) -> None:
    meta = client.get_model_metadata("multi")
    assert meta["name"] == "multi" and meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "b", "datatype": "INT64", "shape": [-1]},
        {"name": "s", "datatype": "BYTES", "shape": [-1]},
    ]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "sum": "FP32",
        "b_twice": "INT64",
        "s_upper": "BYTES",
        "s_len": "INT32",
    }
    assert client.get_model_metadata("versioned", "2")["versions"] == ["1", "2", "3"]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"


def test_model_readiness(client, http) -> None:
    assert client.is_model_ready("multi")
    assert client.is_model_ready("versioned", "1")
    assert not client.is_model_ready("corrupt")
    assert not client.is_model_ready("versioned", "9")
    assert not client.is_model_ready("nope")
    r = http.get("/v2/models/corrupt/ready")
    assert r.status_code == 400 and "not ready" in r.json()["error"]
    assert http.get("/v2/models/nope/ready").status_code == 404
    assert client.is_server_live() and client.is_server_ready()


def test_repository_index(client, http) -> None:
    index = client.get_model_repository_index()
    by_model: dict[str, list[dict[str, str]]] = {}
    for entry in index:
        by_model.setdefault(entry["name"], []).append(entry)
    assert [(e["version"], e["state"]) for e in by_model["versioned"]] == [
        ("1", "READY"),
        ("2", "READY"),
        ("3", "READY"),
    ]
    (corrupt,) = by_model["corrupt"]
    assert corrupt["state"] == "UNAVAILABLE" and "saved_model.pb" in corrupt["reason"]
    (missing,) = by_model["missing"]
    assert "version" not in missing and "does not exist" in missing["reason"]
    ready = http.post("/v2/repository/index", content=b'{"ready": true}').json()
    assert ready == [e for e in index if e["state"] == "READY"]


# -- bad requests: a clear error, then a good request succeeds ---------------------------------

GOOD = {
    "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
        {"name": "b", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["x"]},
    ]
}


def with_input(index: int, **changes: Any) -> bytes:
    doc = json.loads(json.dumps(GOOD))
    doc["inputs"][index].update(changes)
    return json.dumps(doc).encode()


def binary_body(raw_s: bytes, size: int, length: int | None = None) -> tuple[bytes, dict]:
    """GOOD with input ``s`` sent binary: ``size`` declared, ``raw_s`` sent."""
    doc = json.loads(json.dumps(GOOD))
    doc["inputs"][2] = {**doc["inputs"][2], "parameters": {"binary_data_size": size}}
    del doc["inputs"][2]["data"]
    header = json.dumps(doc).encode()
    length = len(header) if length is None else length
    return header + raw_s, {"Inference-Header-Content-Length": str(length)}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "needle"),
    [
        ("nope", json.dumps(GOOD).encode(), {}, 404, "Servable not found"),
        ("multi/versions/9", json.dumps(GOOD).encode(), {}, 404, "Specific(multi, 9)"),
        ("multi/versions/x", json.dumps(GOOD).encode(), {}, 400, "version"),
        ("multi", with_input(0, datatype="FLOAT"), {}, 400, "unknown datatype 'FLOAT'"),
        ("multi", with_input(0, shape=[2, 2]), {}, 400, "needs 4"),
        ("multi", with_input(0, name="z"), {}, 400, "'z'"),
        ("multi", with_input(1, data=[1.5]), {}, 400, "int64"),
        ("multi", with_input(0, datatype="FP64", data=[0.1, 0.2]), {}, 400, "without loss"),
        ("multi", with_input(2, parameters={"binary_data_size": 5}), {}, 400, "both"),
        ("multi", json.dumps({"inputs": GOOD["inputs"][:2]}).encode(), {}, 400, "'s'"),
        ("multi", b'{"inputs": [', {}, 400, "JSON"),
        ("multi", b"[]", {}, 400, "object"),
        ("multi", *binary_body(struct.pack("<I", 1) + b"x", 5, 100_000), 400, "has only"),
        ("multi", *binary_body(struct.pack("<I", 1) + b"x", 9), 400, "add up to 9"),
        ("multi", *binary_body(struct.pack("<I", 7) + b"x", 5), 400, "runs past"),
        ("multi", json.dumps(GOOD).encode(), {"Content-Encoding": "gzip"}, 415, "gzip"),
    ],
)
def test_bad_infer_requests_get_clear_errors(
    client, http, path, body, headers, status, needle
) -> None:
    r = http.post(f"/v2/models/{path}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert_good(client)


def test_unknown_output_and_signature_are_clear_400s(client) -> None:
    for kwargs, needle in (
        ({"outputs": [triton.InferRequestedOutput("nope")]}, "'nope'"),
        ({"parameters": {"signature_name": "nosig"}}, "nosig"),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.infer("multi", inputs(True), **kwargs)
        assert info.value.status() == "400" and needle in info.value.message()
        assert_good(client)


def test_model_whose_graph_rejects_the_input_is_400_and_the_next_request_works(client) -> None:
    x = triton.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[-1.0]], np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("failing", [x])  # the graph's assertion fails: InvalidArgumentError
    assert info.value.status() == "400"
    x.set_data_from_numpy(np.array([[4.0]], np.float32))
    np.testing.assert_array_equal(client.infer("failing", [x]).as_numpy("y"), [[2.0]])
    assert_good(client)


def test_wrong_method_and_unknown_paths(client, http) -> None:
    r = http.get("/v2/models/multi/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert http.post("/v2/models/multi").status_code == 405
    assert http.get("/v2/nothing/here").status_code == 404
    assert http.post("/v2/repository/index", content=b'{"ready": 1}').status_code == 400
    assert_good(client)


# -- model repository: load and unload on a server of its own ----------------------------------


@pytest.fixture
def own_server(model_root: Path) -> Iterator[BackgroundServer]:
    models = [
        ModelConfig(name="binary", base_path=model_root / "binary"),
        ModelConfig(name="corrupt", base_path=model_root / "corrupt"),
    ]
    with BackgroundServer(ServerConfig(models=models)) as server:
        yield server


def test_unload_then_load_through_tritonclient(own_server) -> None:
    x = triton.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], np.float32))
    with triton.InferenceServerClient(own_server.url.removeprefix("http://")) as client:
        before = client.infer("binary", [x]).as_numpy("probability")
        client.unload_model("binary")
        assert not client.is_model_ready("binary")
        with pytest.raises(InferenceServerException) as info:
            client.infer("binary", [x])
        assert info.value.status() == "503" and "unloaded" in info.value.message()
        (entry,) = [e for e in client.get_model_repository_index() if e["name"] == "binary"]
        assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")

        client.load_model("binary")
        assert client.is_model_ready("binary")
        np.testing.assert_array_equal(client.infer("binary", [x]).as_numpy("probability"), before)


def test_load_errors(own_server) -> None:
    with triton.InferenceServerClient(own_server.url.removeprefix("http://")) as client:
        for name, status, needle in (("nope", "404", "nope"), ("corrupt", "400", "corrupt")):
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert info.value.status() == status and needle in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.load_model("binary", config="{}")
        assert info.value.status() == "400" and "not supported" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("nope")
        assert info.value.status() == "404"
        assert client.is_model_ready("binary")


# -- the OpenAPI document ----------------------------------------------------------------------

# One request for every endpoint the app routes: each must be documented.
ROUTED = [
    ("get", "/v1/models/binary"),
    ("get", "/v1/models/binary/versions/1/metadata"),
    ("post", "/v1/models/versioned/labels/stable:predict"),
    ("post", "/v1/models/cr:classify"),
    ("post", "/v1/models/cr/versions/1:regress"),
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2/models/multi"),
    ("get", "/v2/models/multi/versions/1/ready"),
    ("post", "/v2/models/multi/versions/1/infer"),
    ("post", "/v2/repository/index"),
    ("post", "/v2/repository/models/multi/load"),
    ("post", "/v2/repository/models/multi/unload"),
    ("get", "/metrics"),
    ("get", "/monitoring/prometheus/metrics"),
    ("get", "/openapi.json"),
]
EXAMPLE_PARAMS = {
    "model_name": "versioned",
    "version": "1",
    "model_version": "1",
    "label": "stable",
}


def template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"({\w+})", template)
    return re.compile(
        "^" + "".join("[^/:]+" if p[:1] == "{" else re.escape(p) for p in parts) + "$"
    )


def test_openapi_document_is_openapi_3_and_covers_every_route(http) -> None:
    r = http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == tfmux.__version__
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            assert method in ("get", "post") and "200" in operation["responses"]
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path
    for ref in re.findall(r'"#/components/schemas/(\w+)"', r.text):
        assert ref in schemas
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    for method, path in ROUTED:
        assert any(
            template_regex(t).match(path) and method in item for t, item in doc["paths"].items()
        ), (method, path)


def test_every_documented_get_path_is_served(http) -> None:
    doc = http.get("/openapi.json").json()
    for template, item in doc["paths"].items():
        if "get" not in item:
            continue
        path = re.sub(r"{(\w+)}", lambda m: EXAMPLE_PARAMS[m[1]], template)
        assert http.get(path).status_code != 404, path
