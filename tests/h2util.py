"""Helpers for the HTTP/2 server tests: a server with chosen limits on its own event loop
thread, and a raw-frame client that reads what the server answers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
import hpack

from tfmux.transports.admission import AdmissionLimits
from tfmux.transports.h2 import H2GrpcServer
from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.limits import H2Limits

T = TypeVar("T")
Frame = tuple[int, int, int, bytes]  # type, flags, stream, payload


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def hang(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(60)
    return b""


UNTHROTTLED = AdmissionLimits(abuse_burst=1_000_000, global_abuse_burst=1_000_000)


class LimitedServer:
    """tfmux's own gRPC server with ``limits`` (an echo, a hanging and a counting method)."""

    def __init__(self, max_message: int = 4 * 1024 * 1024, **limits: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        # These tests break limits on connection after connection on purpose: admission's
        # throttling after abuse (tested in test_admission.py) would refuse their newcomers.
        self.server = H2GrpcServer(max_message, H2Limits(**limits), admission=UNTHROTTLED)
        self.started = 0  # calls of /t.Test/tally whose handler ran

        async def tally(request: bytes, context: Any) -> bytes:
            self.started += 1
            return request

        handlers = {
            "echo": grpc.unary_unary_rpc_method_handler(echo),
            "hang": grpc.unary_unary_rpc_method_handler(hang),
            "tally": grpc.unary_unary_rpc_method_handler(tally),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Test", handlers),)
        )
        self.port = self.call(self.server.start("127.0.0.1", 0))
        self.stats = self.server.stats

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, function: Callable[[], T]) -> T:
        """``function()`` run on the server's loop (to read its state safely)."""

        async def run() -> T:
            return function()

        return self.call(run())

    def good_call(self) -> bytes:
        """A well-behaved grpcio call on a new channel."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            return bytes(channel.unary_unary("/t.Test/echo")(b"still serving", timeout=10))

    def close(self) -> None:
        try:
            self.call(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


class Raw:
    """Frames by hand over a socket, with an HPACK encoder/decoder of its own."""

    def __init__(self, port: int, preface: bool = True, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        if preface:
            self.sock.sendall(f.PREFACE + f.frame(f.SETTINGS, 0, 0))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def block(self, path: str = "/t.Test/echo", **extra: str) -> bytes:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra.items(),
        ]
        return bytes(self.encoder.encode(headers))

    def request(self, sid: int, message: bytes, path: str = "/t.Test/echo") -> bytes:
        """HEADERS + DATA(END_STREAM) of a one-message call."""
        return f.frame(f.HEADERS, f.END_HEADERS, sid, self.block(path)) + f.frame(
            f.DATA, f.END_STREAM, sid, grpc_message(message)
        )

    def frames(self, until: Callable[[Frame], bool]) -> list[Frame]:
        """Frames read until ``until(frame)`` holds for one; AssertionError if the server
        closes first."""
        out = []
        while True:
            while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
                chunk = self.sock.recv(1 << 16)
                assert chunk, f"the server closed the connection after {out}"
                self.buf += chunk
            length = int.from_bytes(self.buf[:3], "big")
            frame = (
                self.buf[3],
                self.buf[4],
                int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF,
                self.buf[9 : 9 + length],
            )
            self.buf = self.buf[9 + length :]
            out.append(frame)
            if until(frame):
                return out

    def goaway(self) -> int:
        """The error code of the server's GOAWAY; then the connection must close."""
        frames = self.frames(lambda fr: fr[0] == f.GOAWAY)
        self.expect_closed()
        return int.from_bytes(frames[-1][3][4:8], "big")

    def expect_closed(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return
            if not chunk:
                return

    def rst(self, sid: int) -> int:
        """The error code of the server's RST_STREAM on ``sid``."""
        frames = self.frames(lambda fr: fr[0] == f.RST_STREAM and fr[2] == sid)
        return int.from_bytes(frames[-1][3], "big")

    def status(self, sid: int) -> tuple[int, list[Frame]]:
        """The grpc-status of the call on ``sid``, and the frames read up to it."""
        frames = self.frames(lambda fr: fr[0] == f.HEADERS and fr[1] & f.END_STREAM > 0)
        trailers = dict(self.decoder.decode(frames[-1][3]))
        assert frames[-1][2] == sid
        return int(trailers["grpc-status"]), frames

    def close(self) -> None:
        self.sock.close()


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(payload).to_bytes(4, "big") + payload


def setting(key: int, value: int) -> bytes:
    return key.to_bytes(2, "big") + value.to_bytes(4, "big")
