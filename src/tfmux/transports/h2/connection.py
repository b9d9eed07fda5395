"""One HTTP/2 connection (h2c with prior knowledge, as gRPC clients speak it) as an asyncio
Protocol: frames are parsed straight from the receive buffer, complete requests are handed to
the gRPC dispatcher, and control frames written in one batch per read. A client that does not
read its answers stops being read (``pause_writing``); ``tick`` enforces the timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol, cast

from tfmux.transports.admission import client_address
from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.guard import Shared
from tfmux.transports.h2.reading import FrameReader
from tfmux.transports.h2.stream import Stream

log = logging.getLogger("tfmux.grpc.h2")

DEADLINE_EXCEEDED = 4


class Dispatcher(Protocol):
    """What a connection hands complete requests to (the gRPC layer)."""

    shared: Shared

    def opened(self, connection: H2Connection) -> None: ...

    def dispatch(self, connection: H2Connection, stream: Stream) -> None: ...

    def closed(self, connection: H2Connection) -> None: ...


class H2Connection(FrameReader, asyncio.Protocol):
    """One connection: reads handed to the frame reader, backpressure, timeouts."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher.shared)
        self._dispatcher = dispatcher
        self._buf = bytearray()
        self.reading_paused = False
        self._slice_pending = False  # reading paused until the next slice is parsed

    def _dispatch(self, stream: Stream) -> None:
        self._dispatcher.dispatch(self, stream)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        # Registered here, not when accepted: a TLS connection whose handshake fails is never
        # made, so never lost, and would otherwise hold graceful shutdown for its whole grace.
        self._dispatcher.opened(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = transport.get_extra_info("peername") or ("?", 0)
            self.address = client_address(address)
            self.peer = (
                f"ipv6:[{address[0]}]:{address[1]}"
                if sock.family == socket.AF_INET6
                else f"ipv4:{address[0]}:{address[1]}"
            )
        transport.set_write_buffer_limits(high=self.shared.limits.write_buffer_high_bytes)
        transport.write(self.shared.preface)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_streams()
        self.transport = None
        self._dispatcher.closed(self)

    def pause_writing(self) -> None:
        """The client is not reading what we send: stop reading what it sends."""
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
            self.shared.stats.hit("write_backpressure", self.peer, "not reading")

    def resume_writing(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            if not self.transport.is_closing() and not self._slice_pending and not self.draining:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.draining:
            self._discard(len(data))
            return
        if self._buf or self._slice_pending:
            self._buf += data
            if not self._slice_pending:
                self._consume(self._buf)
        else:
            self._consume(data)

    def _consume(self, buf: bytes | bytearray) -> None:
        """Parse what ``buf`` holds (one slice of work at most), keep the rest in ``_buf``."""
        assert self.transport is not None
        out: list[bytes] = []
        self.out = out
        try:
            consumed = self._parse(buf)
            if buf is self._buf:
                del self._buf[:consumed]
            elif consumed < len(buf):
                self._buf += buf[consumed:]
            if self._sliced:  # more work than one slice: let other connections run first
                self._sliced = False
                self._slice_pending = True
                self.transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._next_slice)
            elif self._ready:  # the backlog is parsed: resets in it never start a handler
                self._dispatch_ready()
        except f.H2Error as exc:
            self._ready.clear()
            self._fail(exc.code, str(exc), exc.reason)
        except Exception as exc:  # a bug must cost one connection, never the server
            self._ready.clear()
            log.exception("HTTP/2 connection failed")
            self._fail(f.INTERNAL_ERROR, f"{type(exc).__name__}", "internal_error")
        finally:
            self.out = None
            if out and not self.transport.is_closing() and not self.draining:
                self.transport.write(b"".join(out))

    def _next_slice(self) -> None:
        self._slice_pending = False
        if self.transport is None or self.transport.is_closing() or self.draining:
            return
        self._consume(self._buf)
        transport = self.transport
        idle = not self._slice_pending and not self.reading_paused
        if idle and transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- timeouts (called about once a second by the server) ------------------------------

    def tick(self, now: float) -> None:
        limits = self.shared.limits
        if self.transport is None or self.transport.is_closing() or self.draining:
            return
        if not self._preface:
            if now - self.opened > limits.preface_timeout_seconds:
                self.out = None
                self._fail(f.PROTOCOL_ERROR, "no HTTP/2 preface in time", "preface_timeout")
            return
        if not self.streams:
            if now - self.last_stream > limits.idle_timeout_seconds and not self.going_away:
                self.closed_reason = "idle_timeout"
                self.shared.stats.connection_closed("idle_timeout", self.peer, "no streams")
                self.shutdown()
            return
        timeout = limits.incomplete_request_timeout_seconds
        for stream in list(self.streams.values()):
            if not stream.received_all and now - stream.opened > timeout:
                detail = f"request not received in full within {timeout:g} s"
                self.shared.stats.hit("incomplete_request_timeout", self.peer, detail)
                self.sender.status(stream, DEADLINE_EXCEEDED, detail)
        self.budget.regrant(self.streams)  # the server-wide cap may have room again
