"""The flood guard charges only frames that useful work did not earn: a busy, well-behaved
grpcio client (thousands of calls, 64 at once, 20 MB messages, cancelled calls) on one channel
is never sent GOAWAY, although it sends far more WINDOW_UPDATEs, PINGs and resets than the
guard's limits allow for nothing; floods are still answered GOAWAY(ENHANCE_YOUR_CALM), also
from a connection that earned some credit first.

The server's flood limits are small here (as ``server.h2`` would set them) so that the
client passes them within seconds; the window is long, so nothing is forgiven by time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from benchmarks import attacks_h2

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.guard import CONTROL, PINGS, RESETS

from .h2util import LimitedServer, Raw, grpc_message

MB = 1000 * 1000
FLOOD_LIMITS = {
    "flood_window_seconds": 600.0,
    "max_resets": 5,
    "max_pings": 5,
    "max_settings": 5,
    "max_empty_frames": 5,
    "max_control_frames": 10,
}
OPTIONS = [
    ("grpc.max_send_message_length", 32 * MB),
    ("grpc.max_receive_message_length", 32 * MB),
]


@pytest.fixture(scope="module")
def served() -> Iterator[LimitedServer]:
    server = LimitedServer(max_message=32 * MB, **FLOOD_LIMITS)
    yield server
    server.close()


def _closed(served: LimitedServer) -> dict[str, int]:
    return served.on_loop(lambda: {k: v for k, v in served.stats.closed.items() if v})


def _counted(served: LimitedServer) -> dict[int, int]:
    """Frames of each kind the one connection's guard counted (all in one window)."""

    def read() -> dict[int, int]:
        (connection,) = served.server._dispatcher.connections
        return {kind: connection.guard.counted(kind) for kind in (RESETS, PINGS, CONTROL)}

    return served.on_loop(read)


def test_a_busy_grpcio_client_is_never_sent_goaway(served: LimitedServer) -> None:
    before = _closed(served)
    channel = grpc.insecure_channel(f"127.0.0.1:{served.port}", options=OPTIONS)
    echo = channel.unary_unary("/t.Test/echo")
    hang = channel.unary_unary("/t.Test/hang")
    try:
        for i in range(2000):  # back to back
            assert echo(b"%d" % i, timeout=10) == b"%d" % i
        with ThreadPoolExecutor(64) as pool:  # 64 at once
            answers = list(pool.map(lambda i: echo(b"c" * i, timeout=30), range(3000)))
        assert [len(a) for a in answers] == list(range(3000))
        big = bytes(range(256)) * (20 * MB // 256)
        for _ in range(3):  # 20 MB each way
            assert echo(big, timeout=60) == big
        cancelled = 0
        for _ in range(40):  # calls the client gives up on, between answered ones
            future = hang.future(b"wait", timeout=30)
            assert echo(b"answered", timeout=10) == b"answered"
            future.cancel()
            cancelled += future.cancelled()
        assert cancelled == 40

        def short_deadline(i: int) -> grpc.StatusCode:  # the client gives up at its deadline
            try:
                hang(b"wait", timeout=0.05)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
            raise AssertionError("hang answered")

        with ThreadPoolExecutor(64) as pool:
            codes = set(pool.map(short_deadline, range(640)))
        assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
        counted = _counted(served)
        # The client did send what the limits alone would have stopped.
        assert counted[CONTROL] > 10 * FLOOD_LIMITS["max_control_frames"]
        assert counted[RESETS] > FLOOD_LIMITS["max_resets"]
        assert counted[PINGS] > FLOOD_LIMITS["max_pings"], counted
        assert echo(b"same connection", timeout=10) == b"same connection"
        assert len(served.on_loop(lambda: served.server._dispatcher.connections)) == 1
    finally:
        channel.close()
    assert _closed(served) == before  # no connection closed by the server, for any reason


def _request(raw: Raw, sid: int) -> bytes:
    return raw.request(sid, b"work")


def test_work_earns_resets_one_for_one_then_rapid_reset_is_stopped(
    served: LimitedServer,
) -> None:
    raw = Raw(served.port)
    answered = 20
    for sid in range(1, 2 * answered, 2):  # real requests, each answered
        raw.send(_request(raw, sid))
        assert raw.status(sid)[0] == 0
    first = 2 * answered + 1
    triples = [
        f.frame(f.HEADERS, f.END_HEADERS, sid, raw.block())
        + f.frame(f.DATA, f.END_STREAM, sid, grpc_message(b"x"))
        + f.rst_stream(sid, f.CANCEL)
        for sid in range(first, first + 2 * (answered + 10), 2)
    ]
    raw.send(*triples)
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert _closed(served).get("flood_resets", 0) >= 1
    # Within the allowance: 20 answers earned 20 resets beyond the limit of 5.
    assert served.good_call() == b"still serving"


@pytest.mark.parametrize(
    ("flood", "reason"),
    [
        (f.frame(f.PING, 0, 0, b"12345678"), "flood_pings"),
        (f.window_update(0, 1), "flood_control_frames"),
        (f.frame(f.SETTINGS, 0, 0), "flood_settings"),
        (f.frame(f.DATA, 0, 1), "flood_empty_frames"),
    ],
    ids=["ping", "window_update", "settings", "empty_data"],
)
def test_floods_beyond_what_work_earned_get_goaway(
    served: LimitedServer, flood: bytes, reason: str
) -> None:
    before = _closed(served).get(reason, 0)
    raw = Raw(served.port)
    for sid in range(1, 20, 2):  # ten answered requests earn some credit ...
        raw.send(_request(raw, sid))
        assert raw.status(sid)[0] == 0
    raw.send(f.frame(f.HEADERS, f.END_HEADERS, 21, raw.block()))
    raw.send(flood * 400)  # ... far less than this
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    assert _closed(served).get(reason, 0) == before + 1
    assert served.good_call() == b"still serving"


def test_many_cancelling_clients_at_once(served: LimitedServer) -> None:
    """Each of four channels cancels as many calls as it gets answered: none is cut off."""
    before = _closed(served)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                echo = channel.unary_unary("/t.Test/echo")
                hang = channel.unary_unary("/t.Test/hang")
                for _ in range(30):
                    future = hang.future(b"wait", timeout=30)
                    assert echo(b"ok", timeout=10) == b"ok"
                    future.cancel()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert _closed(served) == before


def test_the_goaway_reaches_a_client_that_goes_on_sending(served: LimitedServer) -> None:
    """After a connection error the server sends GOAWAY and FIN, and discards what still
    arrives for a moment before closing: closing on unread bytes resets the connection (TCP
    RST) and a client that is still sending, as rapid reset does, loses the GOAWAY."""
    for _ in range(6):
        result = attacks_h2.rapid_reset("127.0.0.1", served.port, 5.0, triples=5000)
        assert result.closed_by_server and result.goaway_code == f.ENHANCE_YOUR_CALM
    assert served.good_call() == b"still serving"
