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
from tfmux.transports.h2.headers import HeaderDecoder
from tfmux.transports.h2.stream import Sender, Stream

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
_SETTINGS_ACK = f.frame(f.SETTINGS, f.ACK, 0)


class Dispatcher(Protocol):
    """What a connection hands complete requests to (the gRPC layer)."""

    max_message: int

    def dispatch(self, connection: H2Connection, stream: Stream) -> None: ...

    def closed(self, connection: H2Connection) -> None: ...


class H2Connection(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._limit = dispatcher.max_message + 5
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface = False
        self._decoder = HeaderDecoder()
        self._cont: tuple[int, int, list[bytes]] | None = None  # sid, flags, block so far
        self.streams: dict[int, Stream] = {}
        self._last_sid = 0
        self._recv_window = CONNECTION_WINDOW
        self._recv_unacked = 0
        self._out: list[bytes] | None = None  # collects writes while a read is parsed
        self.sender = Sender(self._write, self._finish)
        self.going_away = False
        self.peer = ""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
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
        self._transport = None
        self._dispatcher.closed(self)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        out: list[bytes] = []
        self._out = out
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
            self._out = None
            if out and self._transport is not None:
                self._transport.write(b"".join(out))

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
            if sid > self._last_sid:
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
        if sid <= self._last_sid:
            self._write(f.rst_stream(sid, f.STREAM_CLOSED))
            return
        self._last_sid = sid
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

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == f.WINDOW_UPDATE:
            if len(payload) != 4:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
            increment = f.u32(payload) & 0x7FFFFFFF
            if sid == 0:
                if increment == 0:
                    raise f.H2Error(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                self.sender.connection_window(increment)
            elif (stream := self.streams.get(sid)) is not None:
                if increment == 0:
                    self._reset(stream, f.PROTOCOL_ERROR)
                else:
                    self.sender.stream_window(stream, increment)
        elif ftype == f.SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == f.PING:
            if sid != 0 or len(payload) != 8:
                raise f.H2Error(f.PROTOCOL_ERROR, "malformed PING")
            if not flags & f.ACK:
                self._write(f.frame(f.PING, f.ACK, 0, payload))
        elif ftype == f.RST_STREAM:
            if sid == 0 or len(payload) != 4:
                raise f.H2Error(f.PROTOCOL_ERROR, "malformed RST_STREAM")
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self.sender.forget(stream)
                stream.stop()
                self._maybe_close()
            elif sid > self._last_sid:
                raise f.H2Error(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        elif ftype == f.CONTINUATION:
            self._on_continuation(sid, flags, payload)
        elif ftype == f.GOAWAY:
            self.going_away = True
            self._maybe_close()
        elif ftype == f.PUSH_PROMISE:
            raise f.H2Error(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == f.PRIORITY and len(payload) != 5:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "PRIORITY length")
        # PRIORITY and unknown frame types are ignored.

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        for key, value in f.parse_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                self.sender.set_initial_window(value, list(self.streams.values()))
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.sender.max_frame = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
        self._write(_SETTINGS_ACK)

    # -- writing and closing -------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _reset(self, stream: Stream, code: int) -> None:
        self.streams.pop(stream.id, None)
        self.sender.forget(stream)
        stream.stop()
        self._write(f.rst_stream(stream.id, code))
        self._maybe_close()

    def _finish(self, stream: Stream) -> None:
        """The sender wrote the stream's last frame."""
        if stream.timer is not None:
            stream.timer.cancel()
        if self.streams.pop(stream.id, None) is not None and not stream.received_all:
            self._write(f.rst_stream(stream.id, f.NO_ERROR))  # answered before the upload ended
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.going_away and not self.streams and self._transport is not None:
            self._flush_and_close()

    def _flush_and_close(self) -> None:
        if self._out:
            assert self._transport is not None
            self._transport.write(b"".join(self._out))
            self._out.clear()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, code: int, message: str) -> None:
        log.debug("closing HTTP/2 connection from %s: %s", self.peer, message)
        self._write(f.goaway(self._last_sid, code, message.encode()[:256]))
        for stream in self.streams.values():
            stream.stop()
        self.streams.clear()
        self.going_away = True
        self._flush_and_close()

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY, no new streams; close once the in-flight ones are answered."""
        if not self.going_away:
            self.going_away = True
            self._write(f.goaway(self._last_sid, f.NO_ERROR))
        self._maybe_close()

    def abort(self) -> None:
        """Stop now: cancel every handler and close."""
        for stream in list(self.streams.values()):
            self.sender.status(stream, 14, "server stopped")  # UNAVAILABLE
            stream.stop()
        self.streams.clear()
        self.going_away = True
        self._flush_and_close()


def _padding(view: memoryview, start: int, end: int) -> int:
    """The pad length of a PADDED frame (its first byte), checked against the frame."""
    if end <= start or view[start] >= end - start:
        raise f.H2Error(f.PROTOCOL_ERROR, "padding longer than the frame")
    return int(view[start])
