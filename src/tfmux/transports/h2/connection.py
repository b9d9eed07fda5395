"""One HTTP/2 connection (h2c with prior knowledge, as gRPC clients speak it) as an asyncio
Protocol: frames are parsed straight from the receive buffer, complete requests are handed to
the gRPC dispatcher, and control frames written in one batch per read.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Protocol, cast

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.control import ConnectionState
from tfmux.transports.h2.headers import HeaderDecoder
from tfmux.transports.h2.stream import Stream

log = logging.getLogger("tfmux.grpc.h2")

MAX_STREAMS = 1024
STREAM_WINDOW = 16 * 1024 * 1024  # our SETTINGS_INITIAL_WINDOW_SIZE
CONNECTION_WINDOW = 256 * 1024 * 1024
MAX_RECV_FRAME = 1024 * 1024  # our SETTINGS_MAX_FRAME_SIZE
MAX_HEADER_BLOCK = 256 * 1024  # HEADERS + CONTINUATION bytes we buffer for one block
RESOURCE_EXHAUSTED = 8
_SERVER_PREFACE = f.settings(
    {
        f.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        f.MAX_FRAME_SIZE: MAX_RECV_FRAME,
        f.ENABLE_PUSH: 0,
    }
) + f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW)


class Dispatcher(Protocol):
    """What a connection hands complete requests to (the gRPC layer)."""

    max_message: int

    def opened(self, connection: H2Connection) -> None: ...

    def dispatch(self, connection: H2Connection, stream: Stream) -> None: ...

    def closed(self, connection: H2Connection) -> None: ...


class H2Connection(ConnectionState, asyncio.Protocol):
    """The reading side: preface, frame parsing, HEADERS/CONTINUATION/DATA into streams."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._limit = dispatcher.max_message + 5
        self._buf = bytearray()
        self._preface = False
        self._decoder = HeaderDecoder()
        self._cont: tuple[int, int, list[bytes]] | None = None  # sid, flags, block so far
        self._recv_window = CONNECTION_WINDOW
        self._recv_unacked = 0

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
            self.peer = (
                f"ipv6:[{address[0]}]:{address[1]}"
                if sock.family == socket.AF_INET6
                else f"ipv4:{address[0]}:{address[1]}"
            )
        transport.write(_SERVER_PREFACE)

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self.streams.values():
            stream.stop()
        self.streams.clear()
        self.transport = None
        self._dispatcher.closed(self)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        out: list[bytes] = []
        self.out = out
        try:
            if self._buf:
                self._buf += data
                consumed = self._parse(self._buf)
                del self._buf[:consumed]
            else:
                consumed = self._parse(data)
                if consumed < len(data):
                    self._buf += data[consumed:]
        except f.H2Error as exc:
            self._fail(exc.code, str(exc))
        except Exception as exc:  # a bug must cost one connection, never the server
            log.exception("HTTP/2 connection failed")
            self._fail(f.INTERNAL_ERROR, f"{type(exc).__name__}")
        finally:
            self.out = None
            if out and self.transport is not None:
                self.transport.write(b"".join(out))

    # -- frames --------------------------------------------------------------------------

    def _parse(self, buf: bytes | bytearray) -> int:
        pos = 0
        n = len(buf)
        if not self._preface:
            if bytes(buf[:24]) != f.PREFACE[: min(n, 24)]:
                raise f.H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            if n < 24:
                return 0
            self._preface = True
            pos = 24
        with memoryview(buf) as view:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = f.FRAME_HEADER.unpack_from(buf, pos)
                length = (hi << 8) | lo
                if length > MAX_RECV_FRAME:
                    raise f.H2Error(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                start = pos + 9
                end = start + length
                if end > n:
                    break
                pos = end
                sid &= 0x7FFFFFFF
                if self._cont is not None and ftype != f.CONTINUATION:
                    raise f.H2Error(f.PROTOCOL_ERROR, "expected CONTINUATION")
                if ftype == f.DATA:
                    self._on_data(view, start, end, flags, sid)
                elif ftype == f.HEADERS:
                    self._on_headers(view, start, end, flags, sid)
                else:
                    self._on_control(ftype, flags, sid, bytes(view[start:end]))
        return pos

    def _on_data(self, view: memoryview, start: int, end: int, flags: int, sid: int) -> None:
        length = end - start
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_window -= length
        if self._recv_window < 0:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "peer overran the connection window")
        self._recv_unacked += length
        if self._recv_unacked >= CONNECTION_WINDOW // 2:
            self._write(f.window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.received_all:
            if sid > self.last_sid:
                raise f.H2Error(f.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream already answered or reset: flow control counted, data dropped
        if flags & f.PADDED:
            end -= _padding(view, start, end)
            start += 1
        stream.body += view[start:end]
        if len(stream.body) > self._limit:
            self.sender.status(
                stream,
                RESOURCE_EXHAUSTED,
                f"Received message larger than max ({len(stream.body) - 5} vs. {self._limit - 5})",
            )  # the stream is finished: RST_STREAM(NO_ERROR) stops the upload
        elif flags & f.END_STREAM:
            stream.received_all = True
            self._dispatcher.dispatch(self, stream)
        else:
            stream.recv_unacked += length
            if stream.recv_unacked >= STREAM_WINDOW // 2:
                self._write(f.window_update(sid, stream.recv_unacked))
                stream.recv_unacked = 0

    def _on_headers(self, view: memoryview, start: int, end: int, flags: int, sid: int) -> None:
        if sid == 0 or not sid & 1:
            raise f.H2Error(f.PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        if flags & f.PADDED:
            end -= _padding(view, start, end)
            start += 1
        if flags & f.PRIORITY_FLAG:
            start += 5
        if end < start:
            raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS shorter than its padding and priority")
        block = bytes(view[start:end])
        if flags & f.END_HEADERS:
            self._on_header_block(sid, flags, block)
        else:
            self._cont = (sid, flags, [block])

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self._cont is None or self._cont[0] != sid:
            raise f.H2Error(f.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        parts = self._cont[2]
        parts.append(payload)
        if sum(map(len, parts)) > MAX_HEADER_BLOCK:
            raise f.H2Error(f.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            first_flags = self._cont[1]
            self._cont = None
            self._on_header_block(sid, first_flags, b"".join(parts))

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        head = self._decoder.decode(block)  # always: the HPACK table must follow the peer
        stream = self.streams.get(sid)
        if stream is not None:  # trailers ending the request
            if stream.received_all or not flags & f.END_STREAM:
                self._reset(stream, f.PROTOCOL_ERROR)
            else:
                stream.received_all = True
                self._dispatcher.dispatch(self, stream)
            return
        if sid <= self.last_sid:
            self._write(f.rst_stream(sid, f.STREAM_CLOSED))
            return
        self.last_sid = sid
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        if head.problem is not None:
            self.sender.headers(sid, f.http_status_block(head.problem), end_stream=True)
            if not flags & f.END_STREAM:
                self._write(f.rst_stream(sid, f.NO_ERROR))
            return
        stream = Stream(sid, head, self.sender.initial_window)
        if head.timeout is not None:
            stream.deadline = time.monotonic() + head.timeout
        self.streams[sid] = stream
        if flags & f.END_STREAM:
            stream.received_all = True
            self._dispatcher.dispatch(self, stream)


def _padding(view: memoryview, start: int, end: int) -> int:
    """The pad length of a PADDED frame (its first byte), checked against the frame."""
    if end <= start or view[start] >= end - start:
        raise f.H2Error(f.PROTOCOL_ERROR, "padding longer than the frame")
    return int(view[start])
