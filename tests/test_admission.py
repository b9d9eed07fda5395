"""Admission of new connections (transports/admission.py, transports/acceptor.py): the pure gate
with a fake clock, then both ports over real sockets: past the limit a few newcomers are
refused and the rest wait in the backlog until a slot frees; after abuse, newcomers are
throttled while open connections keep being served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from benchmarks import attacks_h2

from tfmux.config import ModelConfig, ServerConfig
from tfmux.transports.admission import AdmissionGate, AdmissionLimits, Admit, TokenBucket
from tfmux.transports.h2.limits import H2Limits

from .harness import BackgroundServer

WAIT = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(open_: list[int], clock: Clock, **limits: float) -> AdmissionGate:
    return AdmissionGate(AdmissionLimits(**limits), 3, lambda: open_[0], clock)


def test_below_the_limit_everyone_is_accepted() -> None:
    g = gate([2], Clock())
    assert [g.decide() for _ in range(100)] == [Admit.ACCEPT] * 100


def test_past_the_limit_refusals_are_rate_limited_and_the_rest_wait() -> None:
    clock, open_ = Clock(), [3]
    g = gate(open_, clock, refusals_per_second=2)
    assert [g.decide() for _ in range(4)] == [Admit.REFUSE, Admit.REFUSE, Admit.WAIT, Admit.WAIT]
    assert 0 < g.wait <= 0.05  # checked again soon: a slot may free before a token
    clock.now += 0.5
    assert g.decide() is Admit.REFUSE  # one token back after half a second
    open_[0] = 2
    assert g.decide() is Admit.ACCEPT  # a slot freed: accepted without a token


def test_abuse_past_the_burst_throttles_that_address_until_the_window_passes() -> None:
    clock = Clock()
    g = gate([0], clock, abuse_burst=3, abuse_window_seconds=10, throttled_accepts_per_second=2)
    for _ in range(3):
        g.note_abuse("10.0.0.1")
    assert g.throttled_addresses() == 0  # within the burst
    g.note_abuse("10.0.0.1")
    assert g.throttled_addresses() == 1 and not g.throttled  # that address, not everyone
    assert [g.admits("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert all(g.admits("10.0.0.2") for _ in range(100))  # other clients: as before
    assert g.decide() is Admit.ACCEPT  # (the decision before the accept is everyone's)
    clock.now += 0.5
    assert g.admits("10.0.0.1")  # the throttled rate (2 a second) lets one more in
    clock.now += 9.3
    assert g.throttled_addresses() == 1
    clock.now += 0.3
    assert g.throttled_addresses() == 0
    assert all(g.admits("10.0.0.1") for _ in range(10))
    assert g.counts == {"refused": 0, "waited": 0, "dropped": 1, "throttled": 1, "abuse": 4}


def test_abuse_while_throttled_keeps_the_address_throttled_and_spares_everyone() -> None:
    clock = Clock()
    g = gate([0], clock, abuse_burst=2, global_abuse_burst=5, abuse_window_seconds=10)
    for _ in range(1000):  # one attacker, reconnecting and abusing without end
        g.note_abuse("10.0.0.1")
        clock.now += 0.05
    assert g.throttled_addresses() == 1 and not g.throttled
    assert g.counts["throttled"] == 1


def test_abuse_from_many_addresses_throttles_every_newcomer() -> None:
    clock = Clock()
    g = gate([0], clock, abuse_burst=3, global_abuse_burst=8, throttled_accepts_per_second=2)
    for address in range(9):  # nine addresses, each within its own burst
        g.note_abuse(f"10.0.0.{address}")
    assert g.throttled and g.throttled_addresses() == 0
    assert [g.decide() for _ in range(3)] == [Admit.ACCEPT, Admit.ACCEPT, Admit.DROP]
    g.nobody_came()  # a decision that found no connection is taken back (and not counted)
    assert g.counts["dropped"] == 0
    clock.now += 10.1
    assert not g.throttled
    assert [g.decide() for _ in range(10)] == [Admit.ACCEPT] * 10


def test_the_addresses_remembered_are_bounded() -> None:
    from tfmux.transports.admission import MAX_ADDRESSES

    clock = Clock()
    g = gate([0], clock, abuse_burst=1, global_abuse_burst=10**9)
    g.note_abuse("first")
    g.note_abuse("first")
    assert g.throttled_addresses() == 1
    for address in range(MAX_ADDRESSES):  # as many others, each abusing once
        g.note_abuse(str(address))
    assert len(g._addresses) == MAX_ADDRESSES
    assert g.throttled_addresses() == 0  # the least recently abusive address was let go


def test_abuse_spread_out_below_the_rate_never_throttles() -> None:
    clock = Clock()
    g = gate([0], clock, abuse_burst=2, abuse_window_seconds=10)
    for _ in range(50):
        g.note_abuse("10.0.0.1")
        clock.now += 6.0  # one every 6 s: the bucket refills 0.2 a second
    assert not g.throttled and g.throttled_addresses() == 0


def test_an_opened_connection_is_counted_once_by_the_acceptor() -> None:
    """A connection is counted as pending until its protocol's ``connection_made``, then as
    open only. (Counting it also until its hand-over task finished, a few loop turns later,
    made the gate refuse a newcomer arriving in those turns although a slot was free.)"""
    from tfmux.transports.acceptor import Acceptor

    accepted: list[Admit] = []
    opened: list[asyncio.Protocol] = []
    clients: list[socket.socket] = []

    class Spy(AdmissionGate):
        def done(self, decision: Admit) -> None:  # a connection was accepted under decision
            accepted.append(decision)
            super().done(decision)

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(self)
            if len(clients) == 1:  # the second arrives while the first's hand-over finishes
                clients.append(socket.create_connection(clients[0].getpeername()))

    async def run() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        acceptor = Acceptor(listener, Protocol, Spy(AdmissionLimits(), 2, lambda: len(opened)))
        acceptor.start()
        clients.append(socket.create_connection(listener.getsockname()))
        deadline = time.monotonic() + WAIT
        while len(opened) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        acceptor.close()
        await acceptor.wait_closed()
        for client in clients:
            client.close()

    asyncio.run(run())
    assert accepted == [Admit.ACCEPT, Admit.ACCEPT]
    assert len(opened) == 2


# -- over real sockets -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(
        models=[ModelConfig(name="binary", base_path=model_root / "binary")],
        http_max_connections=4,
        h2=H2Limits(max_connections=4, max_pings=50),
        admission=AdmissionLimits(
            refusals_per_second=0.2,
            abuse_burst=3,
            abuse_window_seconds=3,
            throttled_accepts_per_second=2,
        ),
    )
    with BackgroundServer(config) as background:
        yield background


def rest(server: BackgroundServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server.http_port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


HEALTH = b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n"


def answers(socks: list[socket.socket], within: float) -> list[bytes]:
    """A health request on each; what came back on each within ``within`` seconds in all."""
    for sock in socks:
        sock.sendall(HEALTH)
    deadline = time.monotonic() + within
    got = []
    for sock in socks:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            got.append(b"")
        sock.settimeout(WAIT)
    return got


def predict(server: BackgroundServer, client: httpx.Client | None = None) -> None:
    body = {"instances": [[1.0, 2.0, 3.0]]}
    url = f"{server.url}/v1/models/binary:predict"
    answer = (client or httpx).post(url, json=body, timeout=WAIT)  # type: ignore[attr-defined]
    assert answer.status_code == 200, answer.text


@pytest.mark.tf
def test_rest_newcomers_past_the_limit_wait_in_the_backlog_then_get_in(server) -> None:
    uvicorn = server.server._http  # type: ignore[union-attr]
    gate = uvicorn.servers[0]._gate
    deadline = time.monotonic() + WAIT  # the harness's own health probes closed, a token there
    while uvicorn.server_state.connections or gate._refusals.wait(time.monotonic()) > 0:
        assert time.monotonic() < deadline, (len(uvicorn.server_state.connections), gate.counts)
        time.sleep(0.05)
    held = [rest(server) for _ in range(4)]
    assert all(b" 200 " in a for a in answers(held, WAIT))  # all four in, and served
    newcomers = [rest(server) for _ in range(8)]  # the kernel completes their handshakes
    got = answers(newcomers, 2.0)
    refused = [a for a in got if b" 503 " in a]
    waiting = [s for s, a in zip(newcomers, got, strict=True) if not a]
    assert 1 <= len(refused) <= 2, (got, gate.counts)  # one refused cleanly (then 1 per 5 s)
    assert len(refused) + len(waiting) == 8 and waiting
    for sock in held:
        sock.close()
    served = []
    for sock in waiting:  # slots free: each waiting newcomer is accepted and answered in turn
        served.append(sock.recv(65536))
        sock.close()  # (frees its slot for the next)
    assert sum(b" 200 " in a for a in served) >= len(waiting) - 1, served  # a token may refill
    for sock in newcomers:
        sock.close()
    time.sleep(0.3)
    predict(server)


@pytest.mark.tf
def _newcomers_admitted(port: int, source: str, count: int) -> int:
    """Of ``count`` new connections from ``source`` in a burst, those the server accepted (it
    sent its SETTINGS) rather than closed at once."""
    admitted = 0
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as other:
            other.sendall(attacks_h2.PREFACE)
            with contextlib.suppress(ConnectionResetError):
                admitted += len(other.recv(9)) > 0
    return admitted


@pytest.mark.tf
def test_grpc_ping_floods_throttle_the_attackers_newcomers_only(server) -> None:
    """Connections from the attacker's address are throttled; newcomers from another address
    (127.0.0.2: the whole of 127/8 is loopback) and open channels never notice."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    gate = server.server._grpc.gate  # type: ignore[union-attr]
    port = server.server.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # opened before the attack
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "binary"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0]], dtype=tf.float32))
        stub.Predict(request, timeout=WAIT)
        for _ in range(5):  # each is closed with GOAWAY(ENHANCE_YOUR_CALM) after 50 PINGs
            attacks_h2.ping_flood("127.0.0.1", port, 1.0, pings=4000)
        deadline = time.monotonic() + WAIT
        while gate.counts["abuse"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.throttled_addresses() == 1 and not gate.throttled, gate.counts
        # The attacker's newcomers in a burst: two get in, the rest are closed at once.
        assert 1 <= _newcomers_admitted(port, "127.0.0.1", 10) <= 4, gate.counts
        assert gate.counts["dropped"] >= 5
        assert _newcomers_admitted(port, "127.0.0.2", 10) == 10, gate.counts  # everyone else
        metrics = httpx.get(f"{server.url}/metrics", timeout=WAIT).text
        assert 'tfmux_admission_throttled_addresses{port="grpc"} 1.0' in metrics
        assert 'tfmux_admission_throttled{port="grpc"} 0.0' in metrics
        assert 'tfmux_admission_throttled_addresses{port="rest"} 0.0' in metrics
        line = r'tfmux_admission_events_total\{event="dropped",port="grpc"\} (\S+)'
        dropped = re.search(line, metrics)
        assert dropped is not None and float(dropped.group(1)) >= 5, metrics
        assert stub.Predict(request, timeout=WAIT).outputs  # the open channel never noticed
    time.sleep(3.1)  # the window passes without abuse
    assert gate.throttled_addresses() == 0


# -- the REST port's bulk-body budget ------------------------------------------------------


@pytest.fixture(scope="module")
def budgeted(model_root: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(
        models=[ModelConfig(name="binary", base_path=model_root / "binary")],
        http_bulk_bytes_per_second=16 * 1024 * 1024,
    )
    with BackgroundServer(config) as background:
        yield background


@pytest.mark.tf
def test_a_large_upload_waits_for_the_bulk_budget_and_is_answered(budgeted) -> None:
    """6 MiB (valid JSON padded with spaces) against a budget of 2 MiB/s with a 1 MiB burst,
    set on the running server (so the upload is surely faster than the budget, however busy
    the machine): the upload is held, released, read in full and answered, and a small
    request on another connection is served meanwhile."""
    protocol = budgeted.server._http.config.http_protocol_class  # type: ignore[union-attr]

    async def tight() -> None:
        now = asyncio.get_running_loop().time()
        protocol.bulk = TokenBucket(2 * 1024 * 1024, 1024 * 1024, now)

    budgeted.call(tight())
    body = b'{"instances": [[1.0, 2.0, 3.0]]' + b" " * (6 * 1024 * 1024) + b"}"
    url = f"{budgeted.url}/v1/models/binary:predict"
    holds = protocol.holds
    with httpx.Client(timeout=WAIT) as small, httpx.Client(timeout=WAIT) as large:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        upload = pool.submit(
            large.post, url, content=body, headers={"content-type": "application/json"}
        )
        predict(budgeted, small)  # served while the upload waits for the budget
        answer = upload.result(WAIT)
        pool.shutdown()
    assert answer.status_code == 200, answer.text
    assert protocol.holds > holds  # it did wait for the budget
