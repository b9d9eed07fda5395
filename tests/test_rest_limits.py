"""The REST port's limits over real sockets: idle and slow (slowloris) connections, huge
headers, slow and endless bodies, and the connection cap. Each is followed by a good request.

Every wait here is bounded by a socket timeout far above the configured limit: the tests check
what the server answers, not how fast.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from benchmarks import attacks_rest

from tfmux.config import ModelConfig, ServerConfig
from tfmux.transports import rest_guard

from .harness import BackgroundServer

pytestmark = pytest.mark.tf

ROWS = [[1.0, 2.0, 3.0]]
PREDICT = b"POST /v1/models/binary:predict HTTP/1.1\r\nhost: t\r\n"
WAIT = 20.0  # socket timeout: far above every limit configured here


def config(model_root: Path, **limits: object) -> ServerConfig:
    return ServerConfig(
        models=[ModelConfig(name="binary", base_path=model_root / "binary")],
        max_body_bytes=64 * 1024,
        **limits,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def strict(model_root: Path) -> Iterator[BackgroundServer]:
    """Short timeouts and a small header limit."""
    limits = {
        "http_header_timeout_seconds": 0.5,
        "http_body_timeout_seconds": 0.5,
        "http_keep_alive_seconds": 0.5,
        "http_max_header_bytes": 4096,
    }
    with BackgroundServer(config(model_root, **limits)) as server:
        yield server


@pytest.fixture(scope="module")
def capped(model_root: Path) -> Iterator[BackgroundServer]:
    """At most three REST connections."""
    with BackgroundServer(config(model_root, http_max_connections=3)) as server:
        yield server


def connect(server: BackgroundServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server.http_port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def good(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url, timeout=WAIT) as http:
        r = http.post("/v1/models/binary:predict", json={"instances": ROWS})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def good_once_closed(server: BackgroundServer) -> None:
    """A good request, once the server has seen closed connections go (503 until then)."""
    for _ in range(200):
        with httpx.Client(base_url=server.url, timeout=WAIT) as http:
            r = http.post("/v1/models/binary:predict", json={"instances": ROWS})
        if r.status_code != 503:
            break
        time.sleep(0.05)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_a_connection_that_sends_nothing_is_closed(strict) -> None:
    with connect(strict) as sock:
        assert read_until_closed(sock) == b""  # closed without an answer: nothing was asked
    good(strict)


def test_headers_sent_slowly_get_408(strict) -> None:
    with connect(strict) as sock:
        sock.sendall(PREDICT)
        answer = b""
        for _ in range(int(WAIT / 0.1)):  # a header byte every 100 ms, never finishing
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        answer = read_until_closed(sock)
        assert status(answer) == 408 and b"headers not received" in answer
    good(strict)


def test_a_body_that_stalls_gets_408(strict) -> None:
    with connect(strict) as sock:
        sock.sendall(PREDICT + b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        answer = read_until_closed(sock)
        assert status(answer) == 408 and b"no request body data" in answer
    good(strict)


def test_huge_headers_get_431(strict) -> None:
    with connect(strict) as sock:  # complete, in one piece
        sock.sendall(PREDICT + b"x-big: " + b"a" * 8000 + b"\r\ncontent-length: 0\r\n\r\n")
        answer = read_until_closed(sock)
        assert status(answer) == 431 and b"exceed 4096 bytes" in answer
    with connect(strict) as sock:  # a header line that never ends
        sock.sendall(PREDICT + b"x-big: ")
        for _ in range(10):
            try:
                sock.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_until_closed(sock)
        assert status(answer) == 431
    gate = strict.server._http.gate  # type: ignore[union-attr]
    assert "127.0.0.1" in gate._addresses  # abuse is remembered for the client's address
    good(strict)


def test_a_long_keep_alive_session_is_not_disturbed(strict) -> None:
    """Requests on one connection, each well within the limits, are all answered."""
    with httpx.Client(base_url=strict.url, timeout=WAIT) as http:
        for _ in range(20):
            r = http.post("/v1/models/binary:predict", json={"instances": ROWS})
            assert r.status_code == 200


def test_an_endless_chunked_body_is_stopped(strict, monkeypatch) -> None:
    monkeypatch.setattr(rest_guard, "LINGER_SECONDS", 0.5)
    with connect(strict) as sock:
        sock.sendall(PREDICT + b"transfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (8192, b"1" * 8192)
        sent = 0
        stopped = False
        for _ in range(100_000):  # ~800 MiB at most; the server stops it long before
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                stopped = True
                break
            sent += len(chunk)
            time.sleep(0.001)
        assert stopped, f"the server read {sent} bytes of an endless body"
        assert sent > 64 * 1024  # it answered 413 at the limit, then stopped reading
    good(strict)


def test_a_huge_declared_body_gets_413_at_once(strict) -> None:
    with connect(strict) as sock:
        sock.sendall(PREDICT + b"content-length: 1073741824\r\n\r\n" + b"1" * 1024)
        answer = b""
        while b"exceeds the limit" not in answer and (chunk := sock.recv(65536)):
            answer += chunk  # answered while the client has sent 1 KiB of its 1 GiB
        assert status(answer) == 413 and b"exceeds the limit" in answer
    good(strict)


def test_connections_past_the_cap_get_503_and_close(capped) -> None:
    held = [connect(capped) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept them
        with connect(capped) as extra:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
            answer = read_until_closed(extra)
            assert status(answer) == 503 and b"too many connections" in answer
            assert b"retry-after: 1" in answer.lower()
        held.pop().close()
        good_once_closed(capped)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("name", sorted(attacks_rest.ATTACKS))
def test_soak_attacks_run_and_the_server_keeps_serving(strict, name) -> None:
    """Each REST attack of the soak benchmark (benchmarks/soak.py), for half a second: it reports
    what the server answered, and a good request works right after. (The soak itself starts
    `tfmux serve` and a client process: minutes on a busy machine, so it is not a test.)"""
    result = attacks_rest.ATTACKS[name]("127.0.0.1", strict.server.http_port or 0, 0.5)
    assert result.sent > 0
    if name == "bogus_names":
        assert result.statuses.get(404, 0) > 0
    if name == "huge_bodies":
        assert result.statuses.get(413, 0) > 0 or result.closed_by_server > 0
    good_once_closed(strict)
