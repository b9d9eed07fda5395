"""Property fuzzing of the HTTP/2 frame parser and connection state machine.

Random bytes, generated frame sequences (valid requests mixed with every frame type, random
flags, stream ids and lengths) and byte-level mutations of them are fed to a connection, in
random read sizes. Whatever arrives, the connection may only answer with the project's own
protocol errors (GOAWAY with an RFC 9113 code other than INTERNAL_ERROR, RST_STREAM): an
unhandled exception is logged as "HTTP/2 connection failed" and fails the test. The same
sequences then go over real sockets to a real server, which must keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import hpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tfmux.transports.h2 import H2GrpcServer
from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.limits import H2Limits

from .h2util import UNTHROTTLED, LimitedServer, Raw, echo, grpc_message, hang

ALLOWED_GOAWAY = {
    f.NO_ERROR,
    f.PROTOCOL_ERROR,
    f.FLOW_CONTROL_ERROR,
    f.STREAM_CLOSED,
    f.FRAME_SIZE_ERROR,
    f.COMPRESSION_ERROR,
    f.ENHANCE_YOUR_CALM,
}
# No "explain" phase: it traces every line, far too slow on a shared 2-core machine.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    phases=PHASES,
)


class Transport:
    """What an asyncio transport gives a connection, recording the writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        assert not self.eof, "write after write_eof"
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[asyncio.AbstractEventLoop, H2GrpcServer, Failures]]:
    loop = asyncio.new_event_loop()
    server = H2GrpcServer(1 << 20, H2Limits(max_concurrent_streams=16), admission=UNTHROTTLED)
    handlers = {
        "echo": grpc.unary_unary_rpc_method_handler(echo),
        "hang": grpc.unary_unary_rpc_method_handler(hang),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Test", handlers),))
    failures = Failures()
    logger = logging.getLogger("tfmux.grpc")
    logger.addHandler(failures)
    yield loop, server, failures
    logger.removeHandler(failures)
    loop.close()


def written_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The server's output as frames; it must be well-formed."""
    frames = []
    pos = 24 if data.startswith(f.PREFACE) else 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a truncated frame header was written"
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big")
        assert pos + 9 + length <= len(data), "a truncated frame was written"
        frames.append((ftype, flags, sid, bytes(data[pos + 9 : pos + 9 + length])))
        pos += 9 + length
    return frames


def feed(
    harness: tuple[asyncio.AbstractEventLoop, H2GrpcServer, Failures],
    data: bytes,
    cuts: list[int],
) -> list[tuple[int, int, int, bytes]]:
    loop, server, failures = harness

    async def run() -> bytes:
        connection: Any = server._connection()
        transport = Transport()
        connection.connection_made(transport)
        try:
            bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
            for start, end in itertools.pairwise(bounds):
                if transport.closing or transport.eof:
                    break
                connection.data_received(data[start:end])
                await asyncio.sleep(0)
            for _ in range(3):  # slices still queued, handlers started
                await asyncio.sleep(0)
        finally:
            transport.closing = False  # abort() may still write its answers
            connection.abort()
            connection.connection_lost(None)
        await asyncio.sleep(0)
        return bytes(transport.written)

    failures.records.clear()
    written = loop.run_until_complete(run())
    assert not failures.records, failures.records[0].getMessage()
    frames = written_frames(written)
    for ftype, _, _, payload in frames:
        if ftype == f.GOAWAY:
            assert int.from_bytes(payload[4:8], "big") in ALLOWED_GOAWAY
    return frames


START = f.PREFACE + f.frame(f.SETTINGS, 0, 0)
REQUEST_BLOCKS = [
    bytes(hpack.Encoder().encode(fields))
    for fields in (
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/t.Test/echo"),
            (":authority", "t"),
            ("content-type", "application/grpc"),
        ],
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/t.Test/hang"),
            (":authority", "t"),
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip"),
            ("grpc-timeout", "1S"),
        ],
        [(":method", "GET"), (":path", "/"), (":scheme", "http")],
    )
]

stream_ids = st.sampled_from([0, 1, 3, 5, 7, 2, 0x7FFFFFFF])
payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(REQUEST_BLOCKS),
    st.builds(grpc_message, st.binary(max_size=32)),
    st.builds(lambda n: n.to_bytes(4, "big"), st.integers(0, 2**32 - 1)),
    st.builds(
        lambda k, v: k.to_bytes(2, "big") + v.to_bytes(4, "big"),
        st.integers(0, 8),
        st.integers(0, 2**32 - 1),
    ),
)
frame_strategy = st.builds(
    f.frame,
    st.integers(0, 12),  # every frame type and a few unknown ones
    st.integers(0, 255),
    stream_ids,
    payloads,
)


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(0, 600), max_size=4))
def test_random_bytes_after_the_preface(harness: Any, noise: bytes, cuts: list[int]) -> None:
    feed(harness, START + noise, cuts)


@FUZZ
@given(st.binary(max_size=128))
def test_random_bytes_instead_of_the_preface(harness: Any, noise: bytes) -> None:
    frames = feed(harness, noise, [])
    assert all(ftype in (f.SETTINGS, f.WINDOW_UPDATE, f.GOAWAY) for ftype, *_ in frames)


@FUZZ
@given(
    st.lists(frame_strategy, max_size=24),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    st.lists(st.integers(0, 4000), max_size=4),
)
def test_generated_and_mutated_frame_sequences(
    harness: Any,
    frames: list[bytes],
    mutations: list[tuple[int, int]],
    cuts: list[int],
) -> None:
    data = bytearray(START + b"".join(frames))
    for position, value in mutations:  # flip bytes anywhere after the preface
        if len(data) > 24:
            data[24 + position % (len(data) - 24)] = value
    feed(harness, bytes(data), cuts)


@FUZZ
@given(st.lists(frame_strategy, max_size=12))
def test_valid_request_after_any_frames_is_answered_or_refused(
    harness: Any, frames: list[bytes]
) -> None:
    """If the generated frames leave the connection open, a request on a fresh stream id
    afterwards gets an answer, a reset or a GOAWAY: never silence or a crash."""
    data = START + b"".join(frames)
    request = f.frame(f.HEADERS, f.END_HEADERS, 0x7FFFFFFD, REQUEST_BLOCKS[0])
    request += f.frame(f.DATA, f.END_STREAM, 0x7FFFFFFD, grpc_message(b"hi"))
    written = feed(harness, data + request, [])
    answered = [fr for fr in written if fr[2] == 0x7FFFFFFD or fr[0] == f.GOAWAY]
    assert answered


@settings(max_examples=25, deadline=None, database=None, phases=PHASES)
@given(st.lists(frame_strategy, min_size=1, max_size=16))
def test_real_server_keeps_serving_after_fuzzed_connections(frames: list[bytes]) -> None:
    served = _real()
    raw = Raw(served.port)
    try:
        raw.send(*frames)
        raw.send(f.frame(f.PING, 0, 0, b"the end!"))
        raw.sock.settimeout(2)
        # Closed (after its GOAWAY), or busy with a hanging call: both fine.
        with contextlib.suppress(AssertionError, TimeoutError, ConnectionResetError):
            raw.frames(lambda fr: fr[0] == f.GOAWAY or fr[3] == b"the end!")
    finally:
        raw.close()
    assert served.good_call() == b"still serving"


_REAL: list[LimitedServer] = []


def _real() -> LimitedServer:
    if not _REAL:
        _REAL.append(LimitedServer())
    return _REAL[0]


def teardown_module() -> None:
    for served in _REAL:
        served.close()
