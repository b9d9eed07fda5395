"""The state an HTTP/2 connection shares between reading and writing: its streams, send
windows, receive budget, flood guard and closing, and the control frames (SETTINGS, PING,
WINDOW_UPDATE, RST_STREAM, GOAWAY, PRIORITY) that act on it. ``connection.H2Connection`` adds
the reading side.
"""

from __future__ import annotations

import asyncio
import time

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.budget import ReceiveBudget
from tfmux.transports.h2.guard import CONTROL, PINGS, RESETS, SETTINGS, FloodGuard, Shared
from tfmux.transports.h2.stream import Sender, Stream

UNAVAILABLE = 14
# After a connection error the server sends GOAWAY and its FIN, then reads and discards what
# the client still sends for this long before closing: closing with unread bytes would reset
# the connection (TCP RST) and the client could lose the GOAWAY and its reason. Go's net/http2
# waits 1 s the same way. A client that sends more than LINGER_BYTES meanwhile is not reading
# (a flood): it is closed then.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
_SETTINGS_ACK = f.frame(f.SETTINGS, f.ACK, 0)


def _due(stream: Stream) -> bool:
    """The stream's deadline (grpc-timeout) has passed or nearly: the last tenth of its
    timeout, or 50 ms. A reset then is a client giving up at its deadline, as the server
    would have answered it anyway (DEADLINE_EXCEEDED), not a reset that frees a stream early
    (rapid reset): it is counted as a control frame. So are resets of streams already answered
    (a client's late cancel)."""
    deadline = stream.deadline
    if deadline is None:
        return False
    slack = max(0.1 * (deadline - stream.opened), 0.05)
    return time.monotonic() >= deadline - slack


class ConnectionState:
    """Streams, windows, writes and closing of one connection."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0
        self.going_away = False
        self.closed_reason: str | None = None
        self.draining = False  # GOAWAY sent after an error: reads are discarded until closed
        self.discarded = 0  # bytes discarded while draining
        self.peer = ""
        self.address: str | None = None  # the client's host (TCP), for admission
        self.out: list[bytes] | None = None  # collects writes while a read is parsed
        self.guard = FloodGuard(shared.limits)
        self.sender = Sender(self._write, self._finish, self.guard.payload)
        self.budget = ReceiveBudget(shared, self._write, lambda: self.peer)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        raise NotImplementedError

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == f.WINDOW_UPDATE:
            self.guard.count(CONTROL)
            self._on_window_update(sid, payload)
        elif ftype == f.SETTINGS:
            self.guard.count(CONTROL if flags & f.ACK else SETTINGS)
            self._on_settings(flags, sid, payload)
        elif ftype == f.PING:
            self.guard.count(CONTROL if flags & f.ACK else PINGS)
            if sid != 0:
                raise f.H2Error(f.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "PING length")
            if not flags & f.ACK:
                self._write(f.frame(f.PING, f.ACK, 0, payload))
        elif ftype == f.RST_STREAM:
            stream = self.streams.get(sid)
            self.guard.count(RESETS if stream is not None and not _due(stream) else CONTROL)
            self._on_rst_stream(sid, payload)
        elif ftype == f.CONTINUATION:
            self._on_continuation(sid, flags, payload)
        elif ftype == f.GOAWAY:
            self.guard.count(CONTROL)
            if sid != 0:
                raise f.H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.shutdown()  # ours in return: streams opened after it are not processed
        elif ftype == f.PUSH_PROMISE:
            raise f.H2Error(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == f.PRIORITY:
            self.guard.count(CONTROL)
            self._on_priority(sid, payload)
        else:
            self.guard.count(CONTROL)  # unknown frame types are ignored

    def _on_window_update(self, sid: int, payload: bytes) -> None:
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
            elif stream.window + increment > f.MAX_WINDOW:
                self._reset(stream, f.FLOW_CONTROL_ERROR)
            else:
                self.sender.stream_window(stream, increment)
        elif sid > self.last_sid:
            raise f.H2Error(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "RST_STREAM length")
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._drop(stream)
            stream.stop()
            self._maybe_close()
        elif sid > self.last_sid:
            raise f.H2Error(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")

    def _on_priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5 or f.u32(payload) & 0x7FFFFFFF == sid:
            code = f.FRAME_SIZE_ERROR if len(payload) != 5 else f.PROTOCOL_ERROR
            stream = self.streams.get(sid)
            if stream is not None:
                self._reset(stream, code)
            else:
                self._write(f.rst_stream(sid, code))

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

    # -- writing and closing ---------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.out is not None:
            self.out.append(data)
        elif self.transport is not None and not self.transport.is_closing() and not self.draining:
            self.transport.write(data)

    def _drop(self, stream: Stream) -> None:
        """The stream left ``streams``: its bytes and send queue are released."""
        self.sender.forget(stream)
        self.budget.release(stream, self.streams)

    def _reset(self, stream: Stream, code: int) -> None:
        self.streams.pop(stream.id, None)
        self._drop(stream)
        stream.stop()
        self._write(f.rst_stream(stream.id, code))
        self._maybe_close()

    def _finish(self, stream: Stream) -> None:
        """The sender wrote the stream's last frame."""
        self.guard.answered()
        if stream.timer is not None:
            stream.timer.cancel()
        if self.streams.pop(stream.id, None) is not None:
            self.budget.release(stream, self.streams)
            if not stream.received_all:
                self._write(f.rst_stream(stream.id, f.NO_ERROR))  # answered before the upload
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self._flush_and_close()

    def _flush_and_close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.out and not self.draining:
            transport.write(b"".join(self.out))
            self.out.clear()
        transport.close()

    def _stop_streams(self) -> None:
        for stream in list(self.streams.values()):
            self.budget.release(stream, {})
            stream.stop()
        self.streams.clear()

    def _fail(self, code: int, message: str, reason: str) -> None:
        """A connection error: GOAWAY with ``code``, then close (counted under ``reason``)."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.shared.stats.connection_closed(reason, self.peer, message, self.address)
        self._write(f.goaway(self.last_sid, code, message.encode()[:256]))
        self._stop_streams()
        self.going_away = True
        self._linger()

    def _linger(self) -> None:
        """Send what is pending and the FIN, discard reads, close after ``LINGER_SECONDS``."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.draining:
            return
        if not transport.can_write_eof() or transport.get_write_buffer_size():
            self._flush_and_close()  # TLS (no half-close), or a client that is not reading
            return
        self.draining = True
        if self.out:
            transport.write(b"".join(self.out))
            self.out.clear()
        transport.write_eof()
        transport.resume_reading()  # paused or not: what arrives now is discarded
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self._end_linger)

    def _discard(self, length: int) -> None:
        """``length`` bytes arrived while draining: dropped, the connection closed past
        ``LINGER_BYTES``."""
        self.discarded += length
        if self.discarded > LINGER_BYTES:
            self._end_linger()

    def _end_linger(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size():
                transport.abort()  # a client that does not read does not get to hold us
            else:
                transport.close()

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY, no new streams; close once the in-flight ones are answered."""
        if not self.going_away:
            self.going_away = True
            self._write(f.goaway(self.last_sid, f.NO_ERROR))
        self._maybe_close()

    def abort(self) -> None:
        """Stop now: cancel every handler and close."""
        for stream in list(self.streams.values()):
            self.sender.status(stream, UNAVAILABLE, "server stopped")
            stream.stop()
        self._stop_streams()
        self.going_away = True
        self._flush_and_close()
