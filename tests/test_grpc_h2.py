"""tfmux's own HTTP/2 gRPC server against real grpcio clients (and raw sockets for what
grpcio never sends): flow control, concurrency, deadlines, cancellation, errors, shutdown.

A small test service registered through a generic handler stands in for the servicers; no
TensorFlow needed. A few tests also run against grpc.aio, the fallback implementation.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import hpack
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tfmux.config import ServerConfig
from tfmux.transports.grpc_server import start_grpc_server
from tfmux.transports.h2 import H2GrpcServer
from tfmux.transports.h2 import frames as f

from .fakes import wait_until
from .harness import BackgroundServer

T = TypeVar("T")
MiB = 1024 * 1024
MAX_MESSAGE = 64 * MiB
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


class Service:
    """Unary methods over raw bytes, and what the server did with them."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.failures = 0
        self.gate: asyncio.Event | None = None

    async def echo(self, request: bytes, context: Any) -> bytes:
        return request

    async def big(self, request: bytes, context: Any) -> bytes:
        """An answer of ``int(request)`` bytes; a request's size is echoed into it."""
        return (b"%d;" % len(request)).ljust(int(request.split(b";")[0]), b"z")

    async def slow(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"late"

    async def gated(self, request: bytes, context: Any) -> bytes:
        self.gate = asyncio.Event()
        self.started.set()
        await self.gate.wait()
        return b"finished"

    async def fail(self, request: bytes, context: Any) -> bytes:
        self.failures += 1
        raise RuntimeError("the handler broke")

    async def meta(self, request: bytes, context: Any) -> bytes:
        remaining = context.time_remaining()
        pairs = sorted((k, v) for k, v in context.invocation_metadata() if k.startswith("x-"))
        return repr((pairs, remaining is not None and 0 < remaining <= 30)).encode()

    async def abort(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: ü 100%")
        raise AssertionError("abort returned")

    def register(self, server: Any) -> None:
        unary = {
            name: grpc.unary_unary_rpc_method_handler(getattr(self, name))
            for name in ("echo", "big", "slow", "gated", "fail", "meta", "abort")
        }
        unary["parsed"] = grpc.unary_unary_rpc_method_handler(
            self.echo, request_deserializer=_strict_ascii
        )
        unary["stream"] = grpc.stream_stream_rpc_method_handler(self.echo)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Test", unary),))


def _strict_ascii(data: bytes) -> bytes:
    bytes(data).decode("ascii")  # raises on anything else: a "malformed message"
    return bytes(data)


class Served:
    """A gRPC server of either implementation on its own event loop thread."""

    def __init__(self, implementation: str, host: str = "127.0.0.1") -> None:
        self.service = Service()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server, self.port = self.call(
            start_grpc_server(host, 0, MAX_MESSAGE, [self.service.register], implementation)  # type: ignore[arg-type]
        )
        self.address = f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=OPTIONS)

    def close(self) -> None:
        try:
            self.call(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    served = Served("tfmux")
    yield served
    served.close()


@pytest.fixture(scope="module")
def channel(served: Served) -> Iterator[grpc.Channel]:
    with served.channel() as channel:
        yield channel


def rpc(channel: grpc.Channel, name: str) -> Any:
    return channel.unary_unary(f"/t.Test/{name}")


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_large_request_and_response_use_flow_control_both_ways(channel: grpc.Channel) -> None:
    request = b"%d;" % (20 * MiB) + b"x" * (20 * MiB)
    answer = rpc(channel, "big")(request, timeout=60)
    assert len(answer) == 20 * MiB
    assert answer.startswith(b"%d;" % len(request)) and answer.endswith(b"z")


def test_64_concurrent_calls_on_one_channel(channel: grpc.Channel) -> None:
    echo = rpc(channel, "echo")
    futures = [echo.future(b"call %d" % i * (i + 1), timeout=30) for i in range(64)]
    assert [f.result() for f in futures] == [b"call %d" % i * (i + 1) for i in range(64)]


def test_metadata_and_deadline_reach_the_handler(channel: grpc.Channel) -> None:
    metadata = [("x-routing-key", "abc"), ("x-raw-bin", b"\x00\xff")]
    answer = rpc(channel, "meta")(b"", metadata=metadata, timeout=10)
    assert answer == repr(([("x-raw-bin", b"\x00\xff"), ("x-routing-key", "abc")], True)).encode()


def test_abort_sends_its_status_and_percent_encoded_message(channel: grpc.Channel) -> None:
    code, details = status_of(lambda: rpc(channel, "abort")(b"", timeout=10))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "no such thing: ü 100%")


def test_slow_handler_past_the_deadline_is_cancelled(served: Served, channel: grpc.Channel) -> None:
    served.service.started.clear()
    served.service.cancelled.clear()
    code, _ = status_of(lambda: rpc(channel, "slow")(b"", timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(served.service.cancelled.is_set, "the handler to be cancelled")


def test_client_cancellation_cancels_the_handler(served: Served, channel: grpc.Channel) -> None:
    served.service.started.clear()
    served.service.cancelled.clear()
    future = rpc(channel, "slow").future(b"")
    wait_until(served.service.started.is_set, "the handler to start")
    assert not served.service.cancelled.is_set()
    future.cancel()
    wait_until(served.service.cancelled.is_set, "the handler to be cancelled")
    assert rpc(channel, "echo")(b"still here", timeout=10) == b"still here"


def test_unknown_and_streaming_methods_are_unimplemented(channel: grpc.Channel) -> None:
    code, _ = status_of(lambda: channel.unary_unary("/t.Test/nope")(b"", timeout=10))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    stream = channel.stream_stream("/t.Test/stream")
    code, details = status_of(lambda: list(stream(iter([b"a", b"b"]), timeout=10)))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "/t.Test/stream" in details


def test_a_raising_handler_answers_unknown_and_the_next_call_works(
    served: Served, channel: grpc.Channel
) -> None:
    code, details = status_of(lambda: rpc(channel, "fail")(b"", timeout=10))
    assert code == grpc.StatusCode.UNKNOWN and "the handler broke" in details
    assert rpc(channel, "echo")(b"next", timeout=10) == b"next"


def test_a_malformed_request_message_is_internal(channel: grpc.Channel) -> None:
    code, _ = status_of(lambda: rpc(channel, "parsed")(b"\xff\xfe", timeout=10))
    assert code == grpc.StatusCode.INTERNAL
    assert rpc(channel, "parsed")(b"fine", timeout=10) == b"fine"


def test_message_over_the_limit_is_resource_exhausted(served: Served) -> None:
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE)]
    with grpc.insecure_channel(served.address, options=options) as channel:
        code, _ = status_of(lambda: rpc(channel, "echo")(b"x" * (MAX_MESSAGE + 1), timeout=60))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc(channel, "echo")(b"small", timeout=10) == b"small"


def test_gzip_compressed_requests_are_read(channel: grpc.Channel) -> None:
    body = b"compress me " * 1000
    assert rpc(channel, "echo")(body, timeout=10, compression=grpc.Compression.Gzip) == body


def test_garbage_closes_that_connection_and_the_server_keeps_serving(
    served: Served, channel: grpc.Channel
) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
        received = b""
        while chunk := sock.recv(65536):  # the server answers (SETTINGS, GOAWAY) and closes
            received += chunk
    assert b"\x07\x00\x00\x00\x00\x00" in received  # a GOAWAY frame header on stream 0
    assert rpc(channel, "echo")(b"alive", timeout=10) == b"alive"


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("implementation", ["tfmux", "grpcio"])
def test_both_implementations_serve_and_stop_gracefully(implementation: str) -> None:
    # The IPv6 wildcard also takes IPv4 (dual stack), as a tfmux server on "::" must.
    served = Served(implementation, host="::" if _ipv6() else "0.0.0.0")
    try:
        with served.channel() as channel:
            assert rpc(channel, "echo")(b"hello", timeout=10) == b"hello"
            code, _ = status_of(lambda: rpc(channel, "slow")(b"", timeout=0.3))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            served.service.started.clear()
            in_flight = rpc(channel, "gated").future(b"", timeout=30)
            wait_until(served.service.started.is_set, "the gated call to start")
            stopping = asyncio.run_coroutine_threadsafe(served.server.stop(30), served.loop)
            time.sleep(0.2)
            assert not stopping.done() and not in_flight.done()
            gate = served.service.gate
            assert gate is not None
            served.loop.call_soon_threadsafe(gate.set)
            assert in_flight.result(30) == b"finished"
            stopping.result(30)
        with served.channel() as channel:
            code, _ = status_of(lambda: rpc(channel, "echo")(b"late", timeout=2))
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        served.loop.call_soon_threadsafe(served.loop.stop)


# -- raw HTTP/2: what grpcio never sends --------------------------------------------------


class RawClient:
    """Frames by hand over a socket, with an HPACK encoder/decoder of its own."""

    def __init__(self, port: int, settings: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.sock.sendall(f.PREFACE + f.frame(f.SETTINGS, 0, 0, settings))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def request_block(self, path: str) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )

    def frames(self, until: Callable[[int, int, int], bool]) -> list[tuple[int, int, int, bytes]]:
        """Frames read until ``until(type, flags, stream)`` holds for one."""
        out = []
        while True:
            while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
                chunk = self.sock.recv(65536)
                assert chunk, "the server closed the connection"
                self.buf += chunk
            length = int.from_bytes(self.buf[:3], "big")
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big")
            out.append((ftype, flags, sid, self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            if until(ftype, flags, sid):
                return out


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def test_padding_priority_continuation_and_ping(served: Served) -> None:
    client = RawClient(served.port)
    block = client.request_block("/t.Test/echo")
    first = b"\x03" + b"\x00\x00\x00\x00\x10" + block[:5] + b"pad"  # pad length, priority
    data = b"\x02" + grpc_message(b"raw call") + b"\x00\x00"
    client.send(
        f.frame(f.PING, 0, 0, b"12345678"),
        f.frame(f.HEADERS, f.PADDED | f.PRIORITY_FLAG, 1, first),
        f.frame(f.CONTINUATION, 0, 1, block[5:9]),
        f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[9:]),
        f.frame(f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        f.frame(f.DATA, f.PADDED | f.END_STREAM, 1, data),
    )
    frames = client.frames(lambda t, fl, sid: t == f.HEADERS and fl & f.END_STREAM > 0)
    assert (f.PING, f.ACK, 0, b"12345678") in frames
    assert [p for t, _, sid, p in frames if t == f.DATA and sid == 1] == [grpc_message(b"raw call")]
    trailers = client.decoder.decode([p for t, _, _, p in frames if t == f.HEADERS][-1])
    assert ("grpc-status", "0") in [(str(name), str(value)) for name, value in trailers]
    client.sock.close()


def test_a_response_larger_than_the_window_waits_for_window_updates(served: Served) -> None:
    window = 1000
    client = RawClient(
        served.port, settings=f.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + window.to_bytes(4, "big")
    )
    client.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, client.request_block("/t.Test/big")),
        f.frame(f.DATA, f.END_STREAM, 1, grpc_message(b"5000;")),
    )
    frames = client.frames(lambda t, fl, sid: t == f.DATA and sid == 1)
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):  # nothing more until the window opens
        frames += client.frames(lambda t, fl, sid: sid == 1)
    client.sock.settimeout(10)
    sent = sum(len(p) for t, _, sid, p in frames if t == f.DATA and sid == 1)
    assert sent == window
    client.send(f.window_update(1, 10_000))
    frames = client.frames(lambda t, fl, sid: t == f.HEADERS and fl & f.END_STREAM > 0)
    rest = b"".join(p for t, _, sid, p in frames if t == f.DATA and sid == 1)
    assert sent + len(rest) == 5005
    client.sock.close()


def test_reset_stream_cancels_the_handler(served: Served) -> None:
    served.service.started.clear()
    served.service.cancelled.clear()
    client = RawClient(served.port)
    client.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, client.request_block("/t.Test/slow")),
        f.frame(f.DATA, f.END_STREAM, 1, grpc_message(b"")),
    )
    wait_until(served.service.started.is_set, "the handler to start")
    client.send(f.rst_stream(1, f.CANCEL))
    wait_until(served.service.cancelled.is_set, "the handler to be cancelled")
    client.send(
        f.frame(f.HEADERS, f.END_HEADERS, 3, client.request_block("/t.Test/echo")),
        f.frame(f.DATA, f.END_STREAM, 3, grpc_message(b"after")),
    )
    frames = client.frames(lambda t, fl, sid: t == f.HEADERS and fl & f.END_STREAM > 0)
    assert [sid for t, _, sid, _ in frames if t in (f.DATA, f.HEADERS)] == [3, 3, 3]
    client.sock.close()


MALFORMED = {
    "frame larger than allowed": (f.frame_header(2**24 - 1, f.DATA, 0, 1), f.FRAME_SIZE_ERROR),
    "HEADERS on stream 0": (f.frame(f.HEADERS, f.END_HEADERS, 0, b"\x82"), f.PROTOCOL_ERROR),
    "undecodable HPACK": (f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\x50"), f.COMPRESSION_ERROR),
    "DATA on an idle stream": (f.frame(f.DATA, 0, 5, b"abc"), f.PROTOCOL_ERROR),
    "SETTINGS of 5 bytes": (f.frame(f.SETTINGS, 0, 0, b"\x00" * 5), f.FRAME_SIZE_ERROR),
    "connection window overflow": (f.window_update(0, 2**31 - 1) * 2, f.FLOW_CONTROL_ERROR),
    "CONTINUATION alone": (f.frame(f.CONTINUATION, f.END_HEADERS, 1, b"\x82"), f.PROTOCOL_ERROR),
    "PUSH_PROMISE": (f.frame(f.PUSH_PROMISE, 0, 1, b"\x00" * 4), f.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_protocol_errors_end_the_connection_with_goaway(
    served: Served, channel: grpc.Channel, case: str
) -> None:
    data, code = MALFORMED[case]
    client = RawClient(served.port)
    client.send(data)
    frames = client.frames(lambda t, fl, sid: t == f.GOAWAY)
    assert int.from_bytes(frames[-1][3][4:8], "big") == code
    assert client.sock.recv(65536) == b""  # then closed
    client.sock.close()
    assert rpc(channel, "echo")(b"alive", timeout=10) == b"alive"


@pytest.mark.parametrize("implementation", ["tfmux", "grpcio"])
def test_the_server_setting_chooses_the_implementation(implementation: str) -> None:
    config = ServerConfig(grpc_implementation=implementation)  # type: ignore[arg-type]
    with BackgroundServer(config) as background:
        server = background.server
        assert isinstance(server._grpc, H2GrpcServer) == (implementation == "tfmux")
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
