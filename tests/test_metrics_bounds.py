"""/metrics stays bounded: made-up model names share one label value, histograms are kept per
model only for the first few models, and a scrape at 1,000 models stays under 500 KB.

A real TfmuxServer (fake runtime) on 127.0.0.1, scraped and called over HTTP with httpx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tfmux.config import ServerConfig
from tfmux.metrics import OTHER_MODELS, UNKNOWN_MODEL, Metrics
from tfmux.server import TfmuxServer
from tfmux.types import ModelRef

from .fakes import FakeLoader, make_repository, model_config
from .harness import BackgroundServer

MODELS = 1000
HISTOGRAM_MODELS = 3
BODY = {"instances": [[1.0, 2.0, 3.0]]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("many")
    names = [f"m{i:04d}" for i in range(MODELS)]
    make_repository(root, dict.fromkeys(names, (1,)))
    config = ServerConfig(
        models=[model_config(name, root / name, load="lazy") for name in names],
        metrics_histogram_models=HISTOGRAM_MODELS,
    )
    with BackgroundServer(config, loader=FakeLoader()) as background:
        yield background


def scrape(server: BackgroundServer) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def samples(text: str, family: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
        if sample.name in (family, f"{family}_total", f"{family}_count")
    ]


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for metric in text_string_to_metric_families(text)
        for sample in metric.samples
    }


def test_made_up_model_names_share_one_label_value(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def made_up(names: range) -> None:
            for i in names:
                assert client.post(f"/v1/models/nosuch{i}:predict", json=BODY).status_code == 404
                response = client.post(f"/v2/models/nosuch{i}/infer", json={})
                assert response.status_code in (400, 404)

        made_up(range(50))
        before = series(scrape(server))
        made_up(range(50, 300))
        text = scrape(server)
        assert "nosuch" not in text
        assert series(text) == before  # the same series, only bigger counts
        unknown = [
            (labels, value)
            for labels, value in samples(text, "tfmux_requests")
            if labels["model"] == UNKNOWN_MODEL
        ]
        assert sum(value for _, value in unknown) >= 300
        assert all(labels["version"] == "" for labels, _ in unknown)
        # and a good request is still served and counted under its own name
        response = client.post("/v1/models/m0001:predict", json=BODY)
        assert response.status_code == 200, response.text
    text = scrape(server)
    assert any(
        labels["model"] == "m0001" and labels["code"] == "OK"
        for labels, _ in samples(text, "tfmux_requests")
    )


def test_a_scrape_at_a_thousand_models_stays_small(server: BackgroundServer) -> None:
    async def call_every_model() -> None:
        service = server.server.service
        for i in range(MODELS):
            await service.infer(ModelRef(f"m{i:04d}", None), {"x": [[1.0, 2.0, 3.0]]})

    server.call(call_every_model(), timeout=300)
    text = scrape(server)
    requests = {labels["model"] for labels, _ in samples(text, "tfmux_requests")}
    assert {f"m{i:04d}" for i in range(MODELS)} <= requests  # counters stay per model
    for family in ("tfmux_request_latency_seconds", "tfmux_model_load_seconds"):
        models = {labels["model"] for labels, _ in samples(text, family)}
        assert OTHER_MODELS in models
        assert len(models - {OTHER_MODELS}) == HISTOGRAM_MODELS
        assert sum(value for _, value in samples(text, family)) >= MODELS
    loaded = samples(text, "tfmux_models_loaded")
    assert loaded == [({}, float(MODELS))]
    assert len(text.encode()) < 500 * 1024, len(text)


def test_histograms_follow_the_setting() -> None:
    metrics = Metrics(histogram_models=1)
    for name in ("a", "b"):
        metrics.model_loaded(name, 1, 0.5, None)
        metrics.request_done(name, "1", "predict", 0.01, None)
    text = metrics.render().decode()
    latency = samples(text, "tfmux_request_latency_seconds")
    assert sorted((labels["model"], labels["version"]) for labels, _ in latency) == [
        ("_other", ""),
        ("a", "1"),
    ]
    requests = samples(text, "tfmux_requests")
    assert sorted(labels["model"] for labels, _ in requests) == ["a", "b"]
    assert "_created" not in text


def test_server_setting_reaches_the_metrics(tmp_path: Path) -> None:
    assert ServerConfig().metrics_histogram_models == 32
    make_repository(tmp_path, {"a": (1,)})
    config = ServerConfig(models=[model_config("a", tmp_path / "a")], metrics_histogram_models=0)
    server = TfmuxServer(config, loader=FakeLoader())
    server.metrics.model_loaded("a", 1, 0.5, None)
    assert 'tfmux_model_load_seconds_count{model="_other",version=""}' in (
        server.metrics.render().decode()
    )
