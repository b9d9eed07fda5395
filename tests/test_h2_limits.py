"""Each limit of tfmux's own HTTP/2 server against the attack it answers, as raw frames over a
real socket to a real server; after each, a well-behaved grpcio call must still be served.

Servers here use small limits (set through ``H2Limits``, as ``server.h2`` sets them) so that
each attack needs few frames; docs/grpc.md lists the defaults.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tfmux.config import ServerConfig
from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.stats import H2Collector

from .fakes import wait_until
from .h2util import LimitedServer, Raw, grpc_message

KiB = 1024
MiB = 1024 * KiB
LIMITS = {
    "max_concurrent_streams": 8,
    "preface_timeout_seconds": 0.5,
    "idle_timeout_seconds": 1.5,
    "incomplete_request_timeout_seconds": 1.0,
    "max_header_block_bytes": 4 * KiB,
    "max_continuation_frames": 4,
    "stream_window_bytes": 256 * KiB,
    "connection_buffer_bytes": 1 * MiB,
    "flood_window_seconds": 60.0,
    "max_resets": 20,
    "max_pings": 20,
    "max_settings": 5,
    "max_empty_frames": 10,
    "max_control_frames": 50,
}


@pytest.fixture(scope="module")
def served() -> Iterator[LimitedServer]:
    server = LimitedServer(**LIMITS)
    yield server
    server.close()


def closed(served: LimitedServer, reason: str) -> int:
    return served.on_loop(lambda: served.stats.closed[reason])


def _open(raw: Raw, sid: int) -> bytes:
    return f.frame(f.HEADERS, f.END_HEADERS, sid, raw.block())


# -- header blocks ---------------------------------------------------------------------


def test_too_many_continuation_frames(served: LimitedServer) -> None:
    raw = Raw(served.port)
    block = raw.block()
    raw.send(f.frame(f.HEADERS, 0, 1, block[:1]), f.frame(f.CONTINUATION, 0, 1, block[1:2]) * 5)
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert closed(served, "header_block_too_large") >= 1
    assert served.good_call() == b"still serving"


@pytest.mark.parametrize("split", [True, False])
def test_header_block_over_the_size_limit(served: LimitedServer, split: bool) -> None:
    raw = Raw(served.port)
    big = raw.block(**{"x-padding": "p" * 9000})
    if split:
        raw.send(f.frame(f.HEADERS, 0, 1, big[:3000]), f.frame(f.CONTINUATION, 0, 1, big[3000:]))
    else:
        raw.send(f.frame(f.HEADERS, f.END_HEADERS, 1, big))
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert served.good_call() == b"still serving"


# -- floods ---------------------------------------------------------------------------------


def test_empty_data_frames_flood(served: LimitedServer) -> None:
    raw = Raw(served.port)
    raw.send(_open(raw, 1), f.frame(f.DATA, 0, 1) * 11)
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert closed(served, "flood_empty_frames") >= 1
    assert served.good_call() == b"still serving"


def test_rapid_reset(served: LimitedServer) -> None:
    raw = Raw(served.port)
    triples = [
        _open(raw, sid)
        + f.frame(f.DATA, f.END_STREAM, sid, grpc_message(b"x"))
        + f.rst_stream(sid, f.CANCEL)
        for sid in range(1, 2 * 21, 2)
    ]
    raw.send(*triples)
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert closed(served, "flood_resets") >= 1
    assert served.good_call() == b"still serving"


def test_a_request_reset_in_the_same_backlog_never_starts_its_handler() -> None:
    """Go's answer to rapid reset (CVE-2023-44487): requests are handed to handlers only once
    everything received is parsed, even when that takes several slices of work, so a reset
    already in the receive buffer cancels its request before the handler starts."""
    server = LimitedServer(max_resets=10_000)
    try:
        raw = Raw(server.port)
        sids = range(1, 2 * 100, 2)  # 100 requests: several slices of parsing (SLICE_WORK)
        requests = [raw.request(sid, b"x", "/t.Test/tally") for sid in sids]
        raw.send(b"".join(requests) + b"".join(f.rst_stream(sid, f.CANCEL) for sid in sids))
        raw.send(raw.request(201, b"after", "/t.Test/tally"))
        frames = raw.frames(lambda fr: fr[0] == f.HEADERS and fr[1] & f.END_STREAM and fr[2] == 201)
        answered = {sid for kind, _, sid, _ in frames if kind in (f.HEADERS, f.DATA)}
        assert answered == {201}, f"reset requests were answered: {sorted(answered)}"
        assert server.on_loop(lambda: server.started) == 1  # only the request not reset
        raw.close()
    finally:
        server.close()


@pytest.mark.parametrize(
    ("flood", "reason"),
    [
        (f.frame(f.PING, 0, 0, b"12345678") * 21, "flood_pings"),
        (f.frame(f.SETTINGS, 0, 0) * 6, "flood_settings"),
        (f.window_update(0, 1) * 51, "flood_control_frames"),
        (f.frame(f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10") * 51, "flood_control_frames"),
        (f.frame(0x20, 0, 0, b"unknown") * 51, "flood_control_frames"),
    ],
    ids=["ping", "settings", "window_update", "priority", "unknown_type"],
)
def test_control_frame_floods(served: LimitedServer, flood: bytes, reason: str) -> None:
    before = closed(served, reason)
    raw = Raw(served.port)
    raw.send(flood)
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert closed(served, reason) == before + 1
    assert served.good_call() == b"still serving"


def test_a_client_that_does_not_read_stops_being_read() -> None:
    served = LimitedServer(write_buffer_high_bytes=16 * KiB, max_pings=10**7)
    try:
        raw = Raw(served.port, rcvbuf=4096)
        raw.sock.settimeout(None)
        sent = [0]

        def flood() -> None:  # PINGs, never reading the answers, until the socket is closed
            batch = f.frame(f.PING, 0, 0, b"12345678") * 1000
            try:
                while sent[0] < 200 * 1024 * 1024:
                    raw.sock.sendall(batch)
                    sent[0] += len(batch)
            except OSError:
                pass

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        hits = lambda: served.on_loop(lambda: served.stats.hits["write_backpressure"])  # noqa: E731
        wait_until(lambda: hits() >= 1, "the server to stop reading the client", timeout=60)

        def unsent() -> int:
            (connection,) = served.server._dispatcher.connections
            assert connection.transport is not None
            return int(connection.transport.get_write_buffer_size())

        # Replies wait in memory only up to the high-water mark plus one read's answers,
        # however long the client goes on sending.
        assert unsent() <= 16 * KiB + 512 * KiB
        time.sleep(0.5)
        assert unsent() <= 16 * KiB + 512 * KiB and sender.is_alive()
        raw.sock.shutdown(2)
        raw.close()
        sender.join(10)
        assert served.good_call() == b"still serving"
    finally:
        served.close()


# -- streams and buffered bytes -------------------------------------------------------


def test_streams_beyond_the_advertised_maximum_are_refused(served: LimitedServer) -> None:
    raw = Raw(served.port)
    settings = raw.frames(lambda fr: fr[0] == f.SETTINGS and not fr[1] & f.ACK)[-1][3]
    advertised = {
        int.from_bytes(settings[i : i + 2], "big"): int.from_bytes(settings[i + 2 : i + 6], "big")
        for i in range(0, len(settings), 6)
    }
    assert advertised[f.MAX_CONCURRENT_STREAMS] == 8
    raw.send(*(_open(raw, sid) for sid in range(1, 2 * 9, 2)))
    assert raw.rst(17) == f.REFUSED_STREAM
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, grpc_message(b"first")))
    status, frames = raw.status(1)
    assert status == 0 and grpc_message(b"first") in [p for t, _, _, p in frames]
    raw.close()
    assert served.good_call() == b"still serving"


def test_unfinished_uploads_are_bounded_then_timed_out(served: LimitedServer) -> None:
    """Eight streams upload 1 MiB each as fast as their windows allow and never finish: what
    the server lets them send stays within the connection cap plus the oldest stream's
    message (which may always complete); the timeout then ends every one."""
    raw = Raw(served.port)
    raw.frames(lambda fr: fr[0] == f.SETTINGS)
    sids = list(range(1, 17, 2))
    credit = dict.fromkeys(sids, 65_536)
    left = dict.fromkeys(sids, 1 * MiB)
    raw.send(*(_open(raw, sid) for sid in sids))
    sent = 0
    deadline = time.monotonic() + 0.6
    raw.sock.settimeout(0.05)
    while time.monotonic() < deadline:
        for sid in sids:
            while credit[sid] > 0 and left[sid] > 0:
                n = min(credit[sid], left[sid], 16 * KiB)
                raw.send(f.frame(f.DATA, 0, sid, b"\0" * n))
                credit[sid] -= n
                left[sid] -= n
                sent += n
        try:
            raw.buf += raw.sock.recv(1 << 16)
        except TimeoutError:
            continue
        while len(raw.buf) >= 9 and len(raw.buf) >= 9 + int.from_bytes(raw.buf[:3], "big"):
            length = int.from_bytes(raw.buf[:3], "big")
            ftype, sid = raw.buf[3], int.from_bytes(raw.buf[5:9], "big")
            if ftype == f.WINDOW_UPDATE and sid in credit:
                credit[sid] += int.from_bytes(raw.buf[9:13], "big")
            raw.buf = raw.buf[9 + length :]
    raw.sock.settimeout(10)
    held = served.on_loop(lambda: served.server.shared.buffered)
    # Bytes held or promised: the cap, exceeded only by the oldest stream's own message.
    assert held <= 1 * MiB + 1 * MiB + 256 * KiB
    assert left[1] == 0 and sent <= held < 8 * MiB
    assert served.on_loop(lambda: served.stats.hits["connection_buffer"]) >= 1
    statuses = []
    for _ in sids:  # the incomplete-request timeout answers each, then resets it
        frames = raw.frames(lambda fr: fr[0] == f.HEADERS and fr[1] & f.END_STREAM > 0)
        statuses.append(dict(raw.decoder.decode(frames[-1][3]))["grpc-status"])
    assert statuses == ["4"] * len(sids)  # DEADLINE_EXCEEDED
    wait_until(lambda: served.on_loop(lambda: served.server.shared.buffered) == 0, "release")
    raw.close()
    assert served.good_call() == b"still serving"


def test_new_streams_are_refused_over_the_server_wide_cap() -> None:
    served = LimitedServer(server_buffer_bytes=1 * MiB, connection_buffer_bytes=1 * MiB)
    try:
        holder = Raw(served.port)
        holder.send(_open(holder, 1), f.frame(f.DATA, 0, 1, b"\0" * 65_536))
        while served.on_loop(lambda: served.server.shared.buffered) < 1 * MiB:
            window = holder.frames(lambda fr: fr[0] == f.WINDOW_UPDATE and fr[2] == 1)[-1]
            grant = int.from_bytes(window[3], "big")
            for offset in range(0, grant, 16 * KiB):
                holder.send(f.frame(f.DATA, 0, 1, b"\0" * min(16 * KiB, grant - offset)))
        other = Raw(served.port)
        other.send(other.request(1, b"refused"))
        assert other.rst(1) == f.REFUSED_STREAM
        assert served.on_loop(lambda: served.stats.hits["server_buffer"]) >= 1
        holder.close()
        wait_until(lambda: served.on_loop(lambda: served.server.shared.buffered) == 0, "release")
        assert served.good_call() == b"still serving"
    finally:
        served.close()


def test_gzip_bomb_stops_at_the_message_limit(served: LimitedServer) -> None:
    raw = Raw(served.port)
    bomb = gzip.compress(b"\0" * (8 * MiB))  # the limit is 4 MiB
    headers = raw.block(**{"grpc-encoding": "gzip"})
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, headers),
        f.frame(f.DATA, f.END_STREAM, 1, grpc_message(bomb, compressed=True)),
    )
    status, _ = raw.status(1)
    assert status == 8  # RESOURCE_EXHAUSTED
    assert served.on_loop(lambda: served.stats.hits["inflated_too_large"]) >= 1
    fine = gzip.compress(b"small enough")
    raw.send(
        f.frame(f.HEADERS, f.END_HEADERS, 3, raw.block(**{"grpc-encoding": "gzip"})),
        f.frame(f.DATA, f.END_STREAM, 3, grpc_message(fine, compressed=True)),
    )
    status, frames = raw.status(3)
    assert status == 0 and grpc_message(b"small enough") in [p for _, _, _, p in frames]
    raw.close()
    assert served.good_call() == b"still serving"


# -- timeouts and the connection limit --------------------------------------------------


def test_a_connection_without_preface_is_closed(served: LimitedServer) -> None:
    before = closed(served, "preface_timeout")
    raw = Raw(served.port, preface=False)
    raw.expect_closed()
    assert closed(served, "preface_timeout") == before + 1
    assert served.good_call() == b"still serving"


def test_an_idle_connection_gets_goaway(served: LimitedServer) -> None:
    raw = Raw(served.port)
    assert raw.goaway() == f.NO_ERROR
    assert closed(served, "idle_timeout") >= 1
    assert served.good_call() == b"still serving"


def test_connections_beyond_the_limit_are_refused() -> None:
    served = LimitedServer(max_connections=2)
    try:
        holders = [Raw(served.port), Raw(served.port)]
        for holder in holders:
            holder.frames(lambda fr: fr[0] == f.SETTINGS)
        late = Raw(served.port)
        assert late.goaway() == f.NO_ERROR
        assert served.on_loop(lambda: served.stats.closed["connection_limit"]) == 1
        for holder in holders:
            holder.close()
        connections = served.server._dispatcher.connections
        wait_until(lambda: not served.on_loop(lambda: len(connections)), "the holders to go")
        assert served.good_call() == b"still serving"
    finally:
        served.close()


# -- settings and metrics -----------------------------------------------------------------


def test_limits_are_server_settings_and_counted_in_metrics(served: LimitedServer) -> None:
    config = ServerConfig.model_validate({"h2": {"max_resets": 5, "max_connections": 10}})
    assert (config.h2.max_resets, config.h2.max_connections) == (5, 10)
    assert ServerConfig().h2.max_concurrent_streams == 256
    with pytest.raises(ValueError):
        ServerConfig.model_validate({"h2": {"max_pings": 0}})
    registry = CollectorRegistry()
    registry.register(H2Collector(served.stats))
    text = generate_latest(registry).decode()
    assert 'tfmux_grpc_connections_closed_total{reason="flood_pings"} 1.0' in text
    assert 'tfmux_grpc_limit_hits_total{limit="max_concurrent_streams"}' in text


def test_many_good_clients_at_once_are_not_limited(served: LimitedServer) -> None:
    errors: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(5):
                assert served.good_call() == b"still serving"
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
