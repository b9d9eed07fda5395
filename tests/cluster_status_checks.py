"""The dashboard's cluster view on a real multi-node Ray cluster: the gateway's status API lists
every replica and which replicas hold each model after requests placed them, and the page in
a real browser shows the replicas and each version's placement.

These tests are collected in tests/test_cluster_ray.py (which imports them) so they share that
module's cluster and gateway instead of starting their own (a cluster costs ~25 s here).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from .browser import ARTIFACTS, CHROMIUM, FLAGS, REPO, Recorder
from .cluster_harness import BackgroundGateway

X = [[1.0, 2.0, 3.0]]
PLACED = ("twin_0", "twin_3", "twin_4")
CLUSTER_SHOT = REPO / "docs" / "images" / "cluster-dashboard.png"


def _served_by(gateway: BackgroundGateway, client: httpx.Client, model: str) -> str:
    r = client.post(
        f"{gateway.url}/v1/models/{model}:predict", content=json.dumps({"instances": X})
    )
    assert r.status_code == 200, r.text
    return r.headers["x-tfmux-replica"]


def _status(gateway: BackgroundGateway) -> dict[str, Any]:
    r = httpx.get(f"{gateway.url}/status", timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_status_lists_every_replica_and_where_each_model_lives(
    gateway: BackgroundGateway,
) -> None:
    with httpx.Client(timeout=60) as client:
        served = {model: _served_by(gateway, client, model) for model in PLACED}
    replicas = set(gateway.server.service.router.replica_ids())
    assert len(replicas) == 2
    body = _status(gateway)
    rows = {r["replica"]: r for r in body["replicas"]}
    assert set(rows) == replicas
    for row in rows.values():
        assert row["state"] == "up" and row["node"] and row["message"] == ""
        assert row["memory_budget_bytes"] == 256 * 1024 * 1024
        assert row["memory_used_bytes"] > 0 or not row["models"]
    models = {m["name"]: m for m in body["models"]}
    for model, replica in served.items():
        (v1,) = [v for v in models[model]["versions"] if v["version"] == 1]
        holding = {p["replica"]: p["state"] for p in v1["replicas"]}
        assert holding.get(replica) == "AVAILABLE", (model, replica, holding)
        assert replica in models[model]["replicas"]
        assert f"{model}:1" in rows[replica]["models"]
        assert set(holding) <= replicas
    assert sum(r["requests"] for r in rows.values()) >= len(PLACED)
    # Merged counters: the replicas close a history point every 5 s; the gateway adds them up.
    deadline = time.monotonic() + 30
    while True:
        (v1,) = [v for v in _model(_status(gateway), "twin_0")["versions"] if v["version"] == 1]
        if v1["requests_per_second"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert v1["requests_per_second"] > 0 and v1["p50_ms"] is not None
    events = httpx.get(f"{gateway.url}/status/events", timeout=30).json()["events"]
    messages = [e["message"] for e in events]
    for replica in replicas:
        assert any(m.startswith(f"replica {replica} is up") for m in messages), messages
    loaded = [m for m in messages if "version 1 loaded" in m and m.startswith("replica ")]
    assert loaded, messages
    history = httpx.get(f"{gateway.url}/status/history?model=twin_0", timeout=30)
    assert history.status_code == 200, history.text
    series = history.json()["models"]["twin_0"]["requests_per_second"]
    assert any(v for v in series if v is not None)
    # The answer is the shape the gateway's OpenAPI document states.
    jsonschema = pytest.importorskip("jsonschema")
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    assert "Replica" in document["components"]["schemas"]
    status_schema = {"$ref": "#/components/schemas/Status", "components": document["components"]}
    jsonschema.Draft202012Validator(status_schema).validate(_status(gateway))


def _model(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in body["models"] if m["name"] == name)


def test_the_dashboard_shows_replicas_and_where_models_live(gateway: BackgroundGateway) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    with httpx.Client(timeout=60) as client:
        served = _served_by(gateway, client, "twin_0")
    replicas = sorted(gateway.server.service.router.replica_ids())
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            recorder = Recorder(page)
            response = page.goto(gateway.url + "/dashboard")
            assert response is not None and response.ok
            page.wait_for_function(
                "n => document.querySelectorAll('#replicas tbody tr[data-replica]').length === n",
                arg=len(replicas),
                timeout=30_000,
            )
            shown = page.eval_on_selector_all(
                "#replicas tbody tr[data-replica]", "rows => rows.map(r => r.dataset.replica)"
            )
            assert sorted(shown) == replicas
            assert f"{len(replicas)} replicas" in page.inner_text("#summary")
            row = page.locator(f"#replicas tbody tr[data-replica='{served}']")
            assert "up" in row.inner_text() and "twin_0:1" in row.inner_text()
            assert page.is_visible("#models th[data-key='replicas']")
            cell = page.locator(
                "#models tbody tr[data-model='twin_0'][data-version='1'] .placements"
            )
            assert served in cell.inner_text()
            page.click("#models th[data-key='replicas']")  # sortable like every column
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "cluster-dashboard.png"))
            page.screenshot(path=str(CLUSTER_SHOT))  # docs/cluster.md's, kept true by this test
            assert recorder.errors == [], recorder.errors
            outside = [u for u in recorder.urls if not u.startswith(gateway.url + "/")]
            assert outside == [], outside
        finally:
            browser.close()
    assert 10_000 < CLUSTER_SHOT.stat().st_size < 400 * 1024
