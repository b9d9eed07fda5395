"""End to end over real sockets: TF Serving's REST API against real SavedModels."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from . import savedmodels as sm
from .harness import BackgroundServer

pytestmark = pytest.mark.tf

ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [-2.0, 0.25, 4.0]]


@pytest.fixture(scope="module")
def http(e2e_server: BackgroundServer):
    with httpx.Client(base_url=e2e_server.url, timeout=60) as client:
        yield client


def tf2_direct(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def tf1_direct(path: Path, feeds: dict[str, np.ndarray], fetch: str) -> np.ndarray:
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        v1.saved_model.loader.load(session, ["serve"], str(path))
        return session.run(fetch, feed_dict=feeds)


def predict(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(f"/v1/models/{path}:predict", content=json.dumps(body))


def assert_good(http: httpx.Client) -> None:
    """After any bad request, the server still answers good ones, for every model."""
    r = predict(http, "binary", {"instances": ROWS[:1]})
    assert r.status_code == 200, r.text
    r = predict(http, "regression", {"instances": ROWS[:1]})
    assert r.status_code == 200, r.text


# -- predictions equal TensorFlow's -----------------------------------------------------------


def test_tf2_predict_row_format_equals_tensorflow(http, model_root) -> None:
    r = predict(http, "binary", {"instances": ROWS})
    assert r.status_code == 200, r.text
    expected = tf2_direct(model_root / "binary/1", {"x": np.array(ROWS, np.float32)})
    got = np.array(r.json()["predictions"], np.float32)
    np.testing.assert_array_equal(got, expected["probability"])


def test_tf2_predict_columnar_format_equals_tensorflow(http, model_root) -> None:
    r = predict(http, "binary", {"inputs": {"x": ROWS}})
    assert r.status_code == 200, r.text
    expected = tf2_direct(model_root / "binary/1", {"x": np.array(ROWS, np.float32)})
    np.testing.assert_array_equal(
        np.array(r.json()["outputs"], np.float32), expected["probability"]
    )


def test_tf1_predict_equals_session_run(http, model_root) -> None:
    r = predict(http, "regression", {"inputs": {"x": ROWS}})
    assert r.status_code == 200, r.text
    expected = tf1_direct(
        model_root / "regression/1",
        {"input_tensor:0": np.array(ROWS, np.float32)},
        "output_tensor:0",
    )
    np.testing.assert_array_equal(np.array(r.json()["outputs"], np.float32), expected)


def test_tf1_models_with_identical_tensor_names_stay_isolated(http) -> None:
    def ask(name: str) -> list[list[float]]:
        r = predict(http, name, {"instances": ROWS})
        assert r.status_code == 200, r.text
        return r.json()["predictions"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["twin_a", "twin_b", "regression"] * 10))
    sums = np.array(ROWS, np.float32).sum(axis=1, keepdims=True)
    for i, got in enumerate(answers):
        scale = {0: 2.0, 1: 3.0}.get(i % 3)
        if scale is not None:
            np.testing.assert_allclose(got, scale * sums, rtol=1e-6)


def test_keras_export_is_served(http, model_root) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    meta = http.get("/v1/models/keras/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    (in_name,) = sig["inputs"]
    r = predict(http, "keras", {"inputs": {in_name: x.tolist()}})
    assert r.status_code == 200, r.text
    expected = tf2_direct(model_root / "keras/1", {in_name: x})
    (out,) = expected.values()
    np.testing.assert_allclose(np.array(r.json()["outputs"], np.float32), out, rtol=1e-6)


def test_mixed_dtypes_and_strings(http, model_root) -> None:
    body = {
        "signature_name": "serving_default",
        "instances": [
            {"a": [1.5, 2.0], "b": 3, "s": "abc"},
            {"a": [0.0, -1.0], "b": -4, "s": {"b64": base64.b64encode(b"xyz").decode()}},
        ],
    }
    r = predict(http, "multi", body)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    expected = tf2_direct(
        model_root / "multi/1",
        {
            "a": np.array([[1.5, 2.0], [0.0, -1.0]], np.float32),
            "b": np.array([3, -4], np.int64),
            "s": np.array([b"abc", b"xyz"], object),
        },
    )
    assert [row["s_upper"] for row in rows] == [s.decode() for s in expected["s_upper"]]
    assert [row["b_twice"] for row in rows] == expected["b_twice"].tolist()
    assert [row["s_len"] for row in rows] == expected["s_len"].tolist()
    np.testing.assert_array_equal(
        np.array([row["sum"] for row in rows], np.float32), expected["sum"]
    )


def test_classify_and_regress(http) -> None:
    examples = [{"x": [1.0, 2.0, 3.0]}, {"x": [-1.0, 0.5, 0.0]}]
    x = np.array([e["x"] for e in examples], np.float32)
    r = http.post(
        "/v1/models/cr:classify",
        content=json.dumps({"signature_name": "classify", "examples": examples}),
    )
    assert r.status_code == 200, r.text
    logits = x @ sm.CLASSIFY_WEIGHTS + sm.CLASSIFY_BIAS
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    results = r.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["neg", "pos"]] * 2
    np.testing.assert_allclose([[s for _, s in row] for row in results], scores, rtol=1e-5)

    r = http.post(
        "/v1/models/cr:regress",
        content=json.dumps({"signature_name": "regress", "examples": examples}),
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["results"], x @ sm.REGRESS_WEIGHTS + sm.REGRESS_BIAS, rtol=1e-5
    )


def test_classify_on_a_predict_signature_is_a_clear_400(http) -> None:
    r = http.post("/v1/models/binary:classify", content=json.dumps({"examples": [{"x": 1.0}]}))
    assert r.status_code == 400  # binary's one input is x, not serialized examples
    assert "No classification inputs found in SignatureDef 'serving_default'" in r.json()["error"]
    assert_good(http)


# -- versions and labels --


def test_versions_latest_specific_and_labels(http) -> None:
    def y(path: str) -> float:
        r = predict(http, path, {"instances": [1.0]})
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]

    assert y("versioned") == 3.0
    assert y("versioned/versions/1") == 1.0
    assert y("versioned/versions/2") == 2.0
    assert y("versioned/labels/stable") == 1.0
    assert y("versioned/labels/canary") == 3.0


def test_status_lists_every_version(http) -> None:
    r = http.get("/v1/models/versioned")
    assert r.status_code == 200
    body = r.json()
    assert body == {  # exactly TF Serving's fields (no tfmux extension)
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in ("3", "2", "1")
        ]
    }
    one = http.get("/v1/models/versioned/versions/2").json()["model_version_status"]
    assert [s["version"] for s in one] == ["2"]


def test_metadata_matches_the_signature(http) -> None:
    r = http.get("/v1/models/regression/versions/1/metadata")
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": "regression", "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"]["name"] == "input_tensor:0"
    assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert sig["inputs"]["x"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""},
        {"size": "3", "name": ""},
    ]
    assert sig["outputs"]["y"]["name"] == "output_tensor:0"


# -- bad input: a clear error, and nothing else disturbed ------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("nope", {"instances": ROWS}, 404, "Servable not found for request: Latest(nope)"),
        ("binary/versions/9", {"instances": ROWS}, 404, "Specific(binary, 9)"),
        ("binary/labels/nolabel", {"instances": ROWS}, 404, "nolabel"),
        ("binary", {"instances": [{"z": [1.0, 2.0, 3.0]}]}, 400, "'z'"),
        ("multi", {"inputs": {"a": [[1.0, 2.0]], "b": [1]}}, 400, "'s'"),
        # shapes are left to the graph (as TF Serving): its own error, INVALID_ARGUMENT
        ("binary", {"instances": [1.0, 2.0, 3.0]}, 400, "different ndims"),
        ("binary", {"instances": [[1.0, 2.0]]}, 400, "Matrix size-incompatible"),
        ("binary", {"instances": [["a", "b", "c"]]}, 400, "'x'"),
        ("binary", {"instances": ROWS, "inputs": {"x": ROWS}}, 400, "instances"),
        ("binary", {"signature_name": "nosig", "instances": ROWS}, 400, "nosig"),
        ("binary", [1, 2], 400, "object"),
    ],
)
def test_bad_requests_get_clear_errors(http, path, body, status, needle) -> None:
    r = predict(http, path, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert_good(http)


def test_malformed_json_is_400(http) -> None:
    r = http.post("/v1/models/binary:predict", content=b'{"instances": [[1.0, 2.0')
    assert r.status_code == 400
    assert "JSON" in r.json()["error"] or "json" in r.json()["error"]
    assert_good(http)


def test_both_version_and_label_is_400(http) -> None:
    r = predict(http, "versioned/versions/1/labels/stable", {"instances": [1.0]})
    assert r.status_code == 400
    assert "not both" in r.json()["error"]


def test_body_over_the_limit_is_413(http) -> None:
    big = b'{"instances": [' + b"1.0," * 400_000 + b"1.0]}"
    r = http.post("/v1/models/binary:predict", content=big)
    assert r.status_code == 413
    assert "exceeds the limit of 1048576 bytes" in r.json()["error"]
    assert_good(http)


def test_model_whose_graph_rejects_the_input_is_400_and_the_next_request_works(http) -> None:
    r = predict(http, "failing", {"instances": [[-1.0]]})  # the graph's assertion fails
    assert r.status_code == 400  # TensorFlow's InvalidArgumentError, as TF Serving answers it
    assert "InvalidArgumentError" in r.json()["error"] and "non-negative" in r.json()["error"]
    r = predict(http, "failing", {"instances": [[4.0]]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [[2.0]]
    assert_good(http)


def test_corrupt_model_is_end_with_error_and_others_serve(http) -> None:
    status = http.get("/v1/models/corrupt").json()["model_version_status"][0]
    assert status["state"] == "END"
    assert status["status"]["error_code"] != "OK"
    assert "saved_model.pb" in status["status"]["error_message"]
    r = predict(http, "corrupt", {"instances": ROWS})
    assert r.status_code == 503
    assert "failed to load" in r.json()["error"]
    assert_good(http)


def test_missing_base_path_is_reported(http) -> None:
    r = http.get("/v1/models/missing")
    assert r.status_code == 404
    assert "does not exist" in r.json()["error"]
    assert predict(http, "missing", {"instances": ROWS}).status_code == 404


def test_wrong_http_method_is_405(http) -> None:
    r = http.get("/v1/models/binary:predict")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


# -- lazy loading --


def test_lazy_model_loads_once_on_concurrent_first_requests(http, e2e_server) -> None:
    before = http.get("/v1/models/lazy_binary").json()["model_version_status"][0]["state"]
    assert before == "START"
    with ThreadPoolExecutor(16) as pool:
        codes = list(
            pool.map(
                lambda _: predict(http, "lazy_binary", {"instances": ROWS}).status_code, range(16)
            )
        )
    assert codes == [200] * 16
    assert (
        http.get("/v1/models/lazy_binary").json()["model_version_status"][0]["state"] == "AVAILABLE"
    )
    metrics = http.get("/metrics").text
    assert sample(metrics, "tfmux_model_loads_total", model="lazy_binary", code="OK") == 1.0


def test_lazy_load_failure_gives_every_request_the_error(http) -> None:
    for _ in range(3):
        r = predict(http, "lazy_corrupt", {"instances": ROWS})
        assert r.status_code == 503
        assert "saved_model.pb" in r.json()["error"]
    status = http.get("/v1/models/lazy_corrupt").json()["model_version_status"][0]
    assert status["state"] == "END" and "saved_model.pb" in status["status"]["error_message"]


# -- health and metrics --


def test_health_endpoints(http) -> None:
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return s.value
    return None


def test_metrics_count_requests_errors_and_loads(http) -> None:
    predict(http, "regression", {"instances": ROWS[:1]})
    predict(http, "nope", {"instances": ROWS[:1]})
    for path in ("/metrics", "/monitoring/prometheus/metrics"):
        text = http.get(path).text
        ok = {"model": "regression", "version": "1", "method": "predict"}
        assert sample(text, "tfmux_requests_total", code="OK", **ok) >= 1
        assert sample(text, "tfmux_requests_total", model="_unknown", code="NOT_FOUND") >= 1
        assert sample(text, "tfmux_request_latency_seconds_count", **ok) >= 1
        assert sample(text, "tfmux_model_load_seconds_count", model="binary", version="1") == 1
        state = {"model": "corrupt", "version": "1", "state": "END"}
        assert sample(text, "tfmux_model_version_state", **state) == 1
        assert sample(text, "tfmux_models_loaded") >= 8
