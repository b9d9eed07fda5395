"""Warmup: the TF Serving warmup file is replayed before a version serves, a failing record
fails the load (and only that load), and the optional synthetic warmup is best effort."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
import pytest

from tfmux.config import ModelConfig, ServerConfig
from tfmux.errors import ErrorKind, ServingError
from tfmux.server import saved_model_loader

from . import savedmodels as sm
from . import versionmodels as vm
from .fakes import FakeModel, signature
from .harness import BackgroundServer

pytestmark = pytest.mark.tf

X = np.array([1.0, 2.0], dtype=np.float32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``counting`` (versions 1 and 2) and ``cr`` (classify_regress, TF1)."""
    root = tmp_path_factory.mktemp("sources")
    vm.counting(root)
    sm.classify_regress(root, "cr")
    return root


def test_warmup_file_and_synthetic_warmup_run_before_the_version_serves(
    tmp_path: Path, sources: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warm = vm.install(sources / "counting", tmp_path / "warm", 1)
    vm.write_warmup(warm, [vm.predict_record(x=X)] * 3)
    vm.install(sources / "counting", tmp_path / "plain", 1)
    config = ServerConfig(
        models=[
            ModelConfig(name="warm", base_path=tmp_path / "warm"),
            ModelConfig(name="synthetic", base_path=tmp_path / "plain", warmup="synthetic"),
            ModelConfig(name="cold", base_path=tmp_path / "plain"),
        ]
    )
    caplog.set_level(logging.INFO, logger="tfmux.warmup")
    with BackgroundServer(config) as server, httpx.Client(base_url=server.url) as client:
        # The first request each model sees is call 4 (after 3 warmup records), 2 (after one
        # synthetic call), 1 (no warmup).
        assert vm.predict(client, "warm")["calls"] == 4
        assert vm.predict(client, "synthetic")["calls"] == 2
        assert vm.predict(client, "cold")["calls"] == 1
    logged = caplog.text
    assert "warmed up model warm" in logged and "3 request(s)" in logged
    assert "warmed up model synthetic" in logged and "from synthetic in" in logged
    assert "warmed up model cold" not in logged


def test_every_request_kind_of_a_warmup_file_is_replayed(tmp_path: Path, sources: Path) -> None:
    from tensorflow_serving.apis import (
        classification_pb2,
        inference_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    from tfmux.runtimes import load_model
    from tfmux.transports.warmup import warm_up

    examples = vm.examples_input([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    classify = classification_pb2.ClassificationRequest(input=examples)
    classify.model_spec.signature_name = "classify"
    regress = regression_pb2.RegressionRequest(input=examples)
    regress.model_spec.signature_name = "regress"
    multi = inference_pb2.MultiInferenceRequest(input=examples)
    for name, method in (("classify", "classify"), ("regress", "regress")):
        task = multi.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.signature_name = name
    logs = [
        prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=classify)
        ),
        prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=regress)
        ),
        prediction_log_pb2.PredictionLog(
            multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=multi)
        ),
        prediction_log_pb2.PredictionLog(),  # no request: skipped, as TF Serving does
    ]
    version = vm.install(sources / "cr", tmp_path / "cr", 1)
    records = [vm.predict_record(x=np.ones((2, 3), np.float32))]
    vm.write_warmup(version, records + [log.SerializeToString() for log in logs])
    model = load_model(version)
    try:
        report = warm_up(model, version, "cr", synthetic=False)
        assert report is not None and report.requests == 5
        scores = model.run("serving_default", {"x": np.ones((1, 3), np.float32)})["scores"]
        assert scores.shape == (1, 2)
    finally:
        model.close()


def _failing_models(tmp_path: Path, sources: Path) -> dict[str, str]:
    """Models whose warmup fails, each mapped to what its status must say."""
    from tensorflow_serving.apis import prediction_log_pb2

    bad_input = vm.install(sources / "counting", tmp_path / "bad_input", 1)
    good = vm.predict_record(x=X)
    vm.write_warmup(bad_input, [good, good, vm.predict_record(z=X)])
    garbled = vm.install(sources / "counting", tmp_path / "garbled", 1)
    (garbled / vm.WARMUP_FILE).parent.mkdir()
    (garbled / vm.WARMUP_FILE).write_bytes(b"not a TFRecord file at all, just some bytes")
    session_run = vm.install(sources / "counting", tmp_path / "session_run", 1)
    log = prediction_log_pb2.PredictionLog(session_run_log=prediction_log_pb2.SessionRunLog())
    vm.write_warmup(session_run, [log.SerializeToString()])
    not_a_log = vm.install(sources / "counting", tmp_path / "not_a_log", 1)
    vm.write_warmup(not_a_log, [good, b"\xff\xff\xff"])
    return {
        "bad_input": "INVALID_ARGUMENT Warmup record 3 (predict_log) from",
        "not_a_log": "INVALID_ARGUMENT Failed to parse warmup record 2 from",
        "garbled": "INVALID_ARGUMENT Cannot read record 1 of warmup file",
        "session_run": "UNIMPLEMENTED Warmup record 1 (session_run_log)",
    }


def test_a_failing_warmup_fails_only_that_load(tmp_path: Path, sources: Path) -> None:
    expected = _failing_models(tmp_path, sources)
    vm.install(sources / "counting", tmp_path / "healthy", 1)
    config = ServerConfig(
        models=[ModelConfig(name=n, base_path=tmp_path / n) for n in [*expected, "healthy"]]
    )
    with BackgroundServer(config) as server, httpx.Client(base_url=server.url) as client:
        for name, wanted in expected.items():
            ((state, code, message),) = vm.statuses(client, name).values()
            assert state == "END"
            assert f"{code} {message}".startswith(wanted), message
            assert str(tmp_path / name / "1" / vm.WARMUP_FILE) in message
            response = client.post(f"/v1/models/{name}:predict", json={"instances": [1.0]})
            assert response.status_code == 503 and "failed to load" in response.text
        assert vm.predict(client, "healthy")["calls"] == 1


def test_the_loader_closes_a_model_whose_warmup_fails(
    tmp_path: Path, sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tfmux.runtimes

    built: list[FakeModel] = []

    def fake_load(path: Path, kind: str, **options: object) -> FakeModel:
        built.append(FakeModel([signature(inputs={"x": ("float32", (None,))})]))
        return built[-1]

    monkeypatch.setattr(tfmux.runtimes, "load_model", fake_load)
    version = tmp_path / "fake" / "1"
    vm.write_warmup(_mkdir(version), [vm.predict_record(x=X), vm.predict_record(wrong=X)])
    load = saved_model_loader(ServerConfig())
    config = ModelConfig(name="fake", base_path=version.parent)
    with pytest.raises(ServingError, match="Warmup record 2") as raised:
        load(config, version)
    assert raised.value.kind is ErrorKind.INVALID_ARGUMENT
    assert built[0].closed and len(built[0].calls) == 1
    (version / vm.WARMUP_FILE).unlink()
    assert load(config, version) is built[1] and not built[1].closed


def test_more_than_1000_warmup_records_fail_the_load(tmp_path: Path, sources: Path) -> None:
    from tfmux.runtimes import load_model
    from tfmux.transports.warmup import MAX_RECORDS, warm_up

    version = vm.install(sources / "counting", tmp_path / "many", 1)
    vm.write_warmup(version, [vm.predict_record(x=X)] * (MAX_RECORDS + 1))
    model = load_model(version)
    try:
        with pytest.raises(ServingError, match=r"exceeds the maximum \(1000\)"):
            warm_up(model, version, "many", synthetic=False)
        calls = model.run("serving_default", {"x": X})["calls"]
        assert calls.tolist() == [MAX_RECORDS + 1] * 2
    finally:
        model.close()


def test_synthetic_warmup_skips_unknown_shapes_and_survives_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tfmux.transports.warmup import run_synthetic

    model = FakeModel(
        [
            signature("rows", inputs={"x": ("float32", (None, 3)), "s": ("string", (None,))}),
            signature("fixed", inputs={"x": ("int64", (2, 2))}, outputs={"y": ("int64", (2, 2))}),
            signature("scalar", inputs={"x": ("float64", ())}, outputs={"y": ("float64", ())}),
            signature("ragged", inputs={"x": ("float32", (None, None))}),
            signature("unknown_rank", inputs={"x": ("float32", None)}),
            signature("broken", inputs={"x": ("float32", (None, 1))}),
        ],
        fail_when=lambda inputs: inputs["x"].shape == (1, 1),
    )
    caplog.set_level(logging.INFO, logger="tfmux.warmup")
    assert run_synthetic(model, "fake") == 3
    ran = {name: inputs for name, inputs, _ in model.calls}
    assert ran["rows"]["x"].tolist() == [[0.0, 0.0, 0.0]]
    assert ran["rows"]["s"].tolist() == [b""]
    assert ran["fixed"]["x"].dtype == np.int64 and ran["fixed"]["x"].shape == (2, 2)
    assert ran["scalar"]["x"].shape == ()
    assert set(ran) == {"rows", "fixed", "scalar", "broken"}
    assert "skips signature 'ragged'" in caplog.text
    assert "skips signature 'unknown_rank'" in caplog.text
    assert "signature 'broken' failed (ignored)" in caplog.text


def test_the_docs_example_writes_a_warmup_file_tfmux_replays(tmp_path: Path) -> None:
    import re

    from tfmux.runtimes import load_model
    from tfmux.transports.warmup import warm_up

    doc = Path(__file__).resolve().parent.parent / "docs" / "versions.md"
    (example,) = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    version = sm.binary(tmp_path) / "1"
    exec(compile(example.replace("models/fraud/43", str(version)), "versions.md", "exec"), {})
    model = load_model(version)
    try:
        report = warm_up(model, version, "binary", synthetic=False)
        assert report is not None and report.requests == 1
    finally:
        model.close()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
