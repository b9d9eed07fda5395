"""A REST client that disconnects while its request waits in the batch queue: the request is
dropped before it runs (over a real socket, through uvicorn), and the server keeps serving."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np

from tfmux.config import BatchingConfig, ServerConfig

from .fakes import FakeLoader, FakeModel, make_repository, model_config, wait_until
from .harness import BackgroundServer


def _raw_post(port: int, path: str, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def _queued(server: BackgroundServer) -> int:
    mv = server.server.manager.get("m").versions[1]
    return sum(b.statistics().queued for b in list(mv.batchers.values()))


def _connections(server: BackgroundServer) -> int:
    http = server.server._http
    assert http is not None
    return len(http.server_state.connections)


def test_a_disconnected_clients_queued_request_never_runs(tmp_path: Path) -> None:
    gate = threading.Event()
    loader = FakeLoader(lambda config, path: FakeModel(run_gate=gate))
    make_repository(tmp_path, {"m": [1]})
    config = ServerConfig(
        models=[model_config("m", tmp_path / "m")],
        batching=BatchingConfig(max_inflight_batches=1),
    )
    with BackgroundServer(config, loader=loader) as server:
        model = loader.model(tmp_path / "m" / "1")
        first: Future[httpx.Response] = Future()

        def ask() -> None:
            body = json.dumps({"instances": [[1.0, 2.0, 3.0]]})
            with httpx.Client(base_url=server.url, timeout=30) as client:
                first.set_result(client.post("/v1/models/m:predict", content=body))

        threading.Thread(target=ask).start()
        wait_until(model.run_started.is_set, "the first request to run")
        port = server.server.http_port
        assert port is not None
        doomed = _raw_post(port, "/v1/models/m:predict", b'{"instances": [[500, 500, 500]]}')
        wait_until(lambda: _queued(server) == 1, "the second request to queue")
        doomed.close()
        wait_until(lambda: _connections(server) == 1, "the server to see the disconnect")

        gate.set()
        assert first.result(30).status_code == 200
        with httpx.Client(base_url=server.url, timeout=30) as client:
            after = client.post("/v1/models/m:predict", json={"instances": [[7.0, 8.0, 9.0]]})
            assert after.json() == {"predictions": [[7.0, 8.0, 9.0]]}
            metrics = client.get("/metrics").text

    assert not any(np.isin(500.0, inputs["x"]).any() for _, inputs, _ in model.calls)
    assert [len(inputs["x"]) for _, inputs, _ in model.calls] == [1, 1]
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("tfmux_requests_dropped_total") and 'reason="cancelled"' in line
    ]
    assert dropped and dropped[0].endswith(" 1.0"), dropped
