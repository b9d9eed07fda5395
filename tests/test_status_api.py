"""The status API over real sockets and real SavedModels: GET /status, /status/history,
/status/events; bad parameters; the exposure rule; the OpenAPI entries; the examples of
docs/dashboard.md."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tfmux.config import ModelConfig, ServerConfig, ShadowConfig, TrafficConfig, VersionPolicy
from tfmux.dashboard import dashboard_access
from tfmux.exposure import is_loopback
from tfmux.transports import openapi
from tfmux.transports.rest import RestApp
from tfmux.transports.status_rest import StatusRest

from .harness import BackgroundServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "dashboard.md"
PREDICT = {"instances": [[1.0, 2.0, 3.0]]}


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[BackgroundServer]:
    def model(name: str, **fields: Any) -> ModelConfig:
        return ModelConfig(name=name, base_path=model_root / str(fields.pop("dir", name)), **fields)

    split = TrafficConfig(
        split={"stable": 75, "canary": 25}, shadow=ShadowConfig(target="canary", percent=100)
    )
    config = ServerConfig(
        models=[
            model("binary"),
            model("regression"),
            model(
                "versioned",
                version_policy=VersionPolicy(kind="all"),
                labels={"stable": 1, "canary": 3},
                traffic=split,
            ),
            model("corrupt"),
        ]
    )
    with BackgroundServer(config) as running:
        yield running


def get(server: BackgroundServer, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kw)


def close_point(server: BackgroundServer) -> None:
    """Sample now and close the open history interval (what the sampler does every 5 s)."""
    board = server.server.status_board
    assert board is not None
    server.call(_sample(board))


async def _sample(board: Any) -> None:
    board.sample(close=True)


def burst(server: BackgroundServer, name: str, count: int, body: Any = PREDICT) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            r = client.post(f"{server.url}/v1/models/{name}:predict", json=body)
            assert r.status_code == 200, r.text


def test_status_lists_models_versions_memory_and_failures(server: BackgroundServer) -> None:
    close_point(server)
    status = get(server, "/status").json()
    models = {m["name"]: m for m in status["models"]}
    assert set(models) == {"binary", "regression", "versioned", "corrupt"}
    (binary,) = models["binary"]["versions"]
    assert binary["state"] == "AVAILABLE" and binary["memory_bytes"] > 0
    assert binary["load_seconds"] > 0 and binary["error_code"] == "OK"
    (corrupt,) = models["corrupt"]["versions"]
    assert corrupt["state"] == "END" and "Corrupt SavedModel" in corrupt["error_message"]
    assert [v["version"] for v in models["versioned"]["versions"]] == [3, 2, 1]
    assert models["versioned"]["labels"] == {"stable": 1, "canary": 3}
    assert status["memory_used_bytes"] == sum(
        v["memory_bytes"] or 0 for m in status["models"] for v in m["versions"]
    )
    assert status["management_enabled"] and not status["admin_token_required"]
    kinds = {(e["kind"], e["model"]) for e in status["events"]}
    assert ("load", "binary") in kinds and ("failure", "corrupt") in kinds


def test_traffic_shows_in_history_and_rates(server: BackgroundServer) -> None:
    close_point(server)
    burst(server, "regression", 40)
    burst(server, "versioned", 20, {"instances": [1.0, 2.0]})
    close_point(server)
    history = get(server, "/status/history", params={"busiest": 1, "model": "binary"}).json()
    assert history["busiest"] == ["regression"]
    assert set(history["models"]) == {"regression", "binary"}
    regression = history["models"]["regression"]
    assert len(regression["requests_per_second"]) == history["points"] == 180
    # The sampler may have closed a point during the burst too: count the last two points.
    assert sum(v or 0 for v in regression["requests_per_second"][-2:]) == pytest.approx(40 / 5)
    assert max(v or 0 for v in regression["p50_ms"][-2:]) > 0
    assert 0 in regression["error_rate"][-2:] and 1 not in regression["error_rate"][-2:]
    assert history["models"]["binary"]["requests_per_second"][-1] == 0
    assert sum(v or 0 for v in history["overall"]["requests_per_second"][-2:]) >= 60 / 5
    status = get(server, "/status").json()
    versioned = next(m for m in status["models"] if m["name"] == "versioned")
    arms = {a["arm"]: a for a in versioned["arms"]}
    assert arms["stable"]["weight"] == 75 and arms["canary"]["version"] == 3
    assert sum(a["requests_per_second"] for a in arms.values()) > 0
    assert versioned["shadow"]["target"] == "canary"
    shadow = versioned["shadow"]
    assert shadow["agree"] + shadow["disagree"] + shadow["error"] + shadow["dropped"] > 0


def test_events_after(server: BackgroundServer) -> None:
    events = get(server, "/status/events").json()["events"]
    assert events and [e["id"] for e in events] == sorted(e["id"] for e in events)
    last = events[-1]["id"]
    assert get(server, f"/status/events?after={last}").json() == {"events": []}
    moved = httpx.post(
        f"{server.url}/v2/repository/models/versioned/traffic",
        json={"labels": {"canary": 2}},
        timeout=30,
    )
    assert moved.status_code == 200, moved.text
    close_point(server)
    (event,) = get(server, f"/status/events?after={last}").json()["events"]
    assert event["kind"] == "label" and event["model"] == "versioned"
    assert event["message"] == "label canary moved from version 3 to 2"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/status/history?busiest=many", 400),
        ("/status/history?busiest=51", 400),
        ("/status/history?" + "&".join(f"model=m{i}" for i in range(21)), 400),
        ("/status/history?" + "&".join(f"x{i}=1" for i in range(65)), 400),
        ("/status/events?after=-1", 400),
        ("/status/history?model=%FF", 200),  # a name no model has: just absent
        ("/status/history?model=nope", 200),
    ],
)
def test_bad_parameters_are_refused_and_the_server_goes_on(
    server: BackgroundServer, path: str, status: int
) -> None:
    response = get(server, path)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]
    else:
        assert response.json()["models"].keys() <= {"regression", "versioned", "binary"}
    assert get(server, "/status").status_code == 200


def test_methods_other_than_get_get_405(server: BackgroundServer) -> None:
    for path in ("/status", "/status/history", "/dashboard"):
        response = httpx.post(server.url + path, content=b"{}", timeout=30)
        assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert get(server, "/status").status_code == 200


def test_page_and_files_are_served_from_the_package(server: BackgroundServer) -> None:
    page = get(server, "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    scripts = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text)
    assert sorted(scripts) == ["/dashboard/app.css", "/dashboard/app.js"]
    total = len(page.content)
    for path in scripts:
        asset = get(server, path)
        assert asset.status_code == 200
        total += len(asset.content)
    assert total < 300 * 1024
    assert "http" not in get(server, "/dashboard/app.js").text.replace("http://", "")
    assert get(server, "/dashboard/secret.txt").status_code == 404


def test_exposure_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("host")
    assert dashboard_access("127.0.0.1", None, None).enabled
    assert dashboard_access("127.0.0.1", None, "t").token is None  # loopback: open
    beyond = dashboard_access("0.0.0.0", None, "t")
    assert beyond.enabled and beyond.token == "t"
    off = dashboard_access("0.0.0.0", None, None)
    assert not off.enabled and "--dashboard" in off.reason
    assert dashboard_access("0.0.0.0", True, None) == dashboard_access("0.0.0.0", True, "t")
    assert dashboard_access("0.0.0.0", True, None).token is None
    assert not dashboard_access("127.0.0.1", False, None).enabled


def test_token_mode_needs_the_admin_token(server: BackgroundServer) -> None:
    """Beyond loopback the status API needs the token: the same routes over an in-process
    ASGI transport (tests only listen on 127.0.0.1), with the running server's service."""
    access = dashboard_access("0.0.0.0", None, "s3cret")
    app = RestApp([StatusRest(server.server.service, access).route], 1024)

    async def calls() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tfmux") as client:
            return [
                (await client.get("/status")).status_code,
                (
                    await client.get("/status", headers={"Authorization": "Bearer wrong"})
                ).status_code,
                (
                    await client.get("/status/history", headers={"Authorization": "Bearer s3cret"})
                ).status_code,
                (
                    await client.get("/status", headers={"Authorization": "Bearer s3cret"})
                ).status_code,
                (await client.get("/dashboard")).status_code,  # the page itself holds no data
            ]

    assert server.call(calls()) == [401, 401, 200, 200, 200]


def test_dashboard_off(model_root: Path) -> None:
    config = ServerConfig(
        dashboard=False, models=[ModelConfig(name="binary", base_path=model_root / "binary")]
    )
    with BackgroundServer(config) as off:
        assert off.server.status_board is None and off.server.sampler is None
        for path in ("/status", "/status/history", "/dashboard"):
            response = get(off, path)
            assert response.status_code == 403 and "--no-dashboard" in response.json()["error"]
        ok = httpx.post(f"{off.url}/v1/models/binary:predict", json=PREDICT, timeout=30)
        assert ok.status_code == 200


def test_openapi_describes_the_status_api() -> None:
    document = openapi.document()
    for path in ("/status", "/status/history", "/status/events", "/dashboard"):
        assert "get" in document["paths"][path], path
    schemas = document["components"]["schemas"]
    assert {"Status", "History", "Event"} <= set(schemas)


def test_documented_answers_have_the_real_keys(server: BackgroundServer) -> None:
    """Each JSON example in docs/dashboard.md has exactly the keys of the real answer."""
    examples = re.findall(r"<!-- answer of (\S+) -->\n```json\n(.*?)```", DOC.read_text(), re.S)
    assert len(examples) == 3
    for path, text in examples:
        documented, real = json.loads(text), get(server, path).json()
        assert_same_keys(documented, real, path)


NAMED = ("labels", "models")  # maps keyed by label or model name, not by field


def assert_same_keys(documented: Any, real: Any, where: str) -> None:
    if isinstance(documented, dict) and where.endswith(NAMED):
        assert isinstance(real, dict), where
        if documented and real:
            assert_same_keys(next(iter(documented.values())), next(iter(real.values())), where)
    elif isinstance(documented, dict):
        assert isinstance(real, dict), where
        assert set(documented) == set(real), (where, set(documented) ^ set(real))
        for key, value in documented.items():
            assert_same_keys(value, real[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and real:
        assert isinstance(real, list), where
        first = documented[0]
        named = [r for r in real if isinstance(first, dict) and r.get("name") == first.get("name")]
        assert_same_keys(first, (named or real)[0], f"{where}[0]")


def test_documented_python_example_runs(server: BackgroundServer) -> None:
    import contextlib
    import io

    (example,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    code = example.replace("http://localhost:8501", server.url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/dashboard.md", "exec"), {})
    assert "corrupt v1: load failed: INVALID_ARGUMENT" in out.getvalue()
