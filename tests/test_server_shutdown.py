"""Graceful shutdown of the composed server: stop accepting, finish in-flight, then unload."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from pathlib import Path

import httpx

from tfmux.config import ServerConfig

from .fakes import FakeLoader, FakeModel, make_repository, model_config, wait_until
from .harness import BackgroundServer


def test_stop_finishes_in_flight_requests_then_unloads(tmp_path: Path) -> None:
    gate = threading.Event()
    loader = FakeLoader(lambda config, path: FakeModel(run_gate=gate))
    make_repository(tmp_path, {"m": [1]})
    config = ServerConfig(models=[model_config("m", tmp_path / "m")])
    server = BackgroundServer(config, loader=loader)
    server.__enter__()
    model = loader.model(tmp_path / "m" / "1")
    answer: Future[httpx.Response] = Future()

    def ask() -> None:
        body = json.dumps({"instances": [[1.0, 2.0, 3.0]]})
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer.set_result(client.post("/v1/models/m:predict", content=body))

    threading.Thread(target=ask).start()
    wait_until(model.run_started.is_set, "the request to reach the model")
    stopping = asyncio.run_coroutine_threadsafe(server.server.stop(), server._loop)
    wait_until(lambda: server.server._http is not None and server.server._http.should_exit, "stop")
    assert not answer.done() and not model.closed and not stopping.done()

    gate.set()
    response = answer.result(30)
    assert response.status_code == 200
    assert response.json() == {"predictions": [[1.0, 2.0, 3.0]]}
    stopping.result(30)
    assert model.close_count == 1
    server._loop.call_soon_threadsafe(server._loop.stop)
