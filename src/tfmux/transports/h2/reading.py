"""The reading side of an HTTP/2 connection: frames parsed straight from the receive buffer
(in slices of bounded work), HEADERS/CONTINUATION/DATA into streams, complete requests handed
on once the read is parsed. ``connection.H2Connection`` adds the asyncio Protocol around it.
"""

from __future__ import annotations

import time

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.control import ConnectionState
from tfmux.transports.h2.guard import EMPTY, MAX_RECV_FRAME, Shared
from tfmux.transports.h2.headers import HeaderDecoder
from tfmux.transports.h2.stream import Stream

RESOURCE_EXHAUSTED = 8
# Work one parse may do before yielding to other connections: frames count 1, header blocks
# (HPACK decoding, a new stream) 16 more. A read of many small frames is parsed in slices.
SLICE_WORK = 512
_HEADER_WORK = 16
_SELF_DEPENDENT = 0x100  # beyond the 8 flag bits: HEADERS whose priority names its own stream


class FrameReader(ConnectionState):
    """Preface, frames, header blocks and request bodies of one connection."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self._limit = shared.max_message + 5
        self._preface = False
        self._settings_seen = False
        self._decoder = HeaderDecoder(shared.limits.max_header_block_bytes)
        self._cont: tuple[int, int, list[bytes]] | None = None  # sid, flags, block so far
        self._cont_bytes = 0
        self._cont_frames = 0
        self.opened = self.last_stream = time.monotonic()
        self._ready: list[Stream] = []  # complete requests, until the backlog is parsed
        self._sliced = False  # the last parse stopped at its work budget

    def _dispatch(self, stream: Stream) -> None:
        raise NotImplementedError

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
        work = SLICE_WORK
        with memoryview(buf) as view:
            while n - pos >= 9:
                if self.going_away and (self.transport is None or self.transport.is_closing()):
                    break  # closed by what was just parsed (a GOAWAY): the rest is moot
                if work <= 0:
                    self._sliced = True
                    break
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
                if not self._settings_seen:
                    if ftype != f.SETTINGS or flags & f.ACK:
                        raise f.H2Error(f.PROTOCOL_ERROR, "the preface must end with SETTINGS")
                    self._settings_seen = True
                if self._cont is not None and ftype != f.CONTINUATION:
                    raise f.H2Error(f.PROTOCOL_ERROR, "expected CONTINUATION")
                work -= 1
                if ftype == f.DATA:
                    self._on_data(view, start, end, flags, sid)
                elif ftype == f.HEADERS:
                    work -= _HEADER_WORK
                    self._on_headers(view, start, end, flags, sid)
                else:
                    self._on_control(ftype, flags, sid, bytes(view[start:end]))
        return pos

    def _on_data(self, view: memoryview, start: int, end: int, flags: int, sid: int) -> None:
        length = end - start
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        self.budget.take(length)
        if not length and not flags & f.END_STREAM:
            self.guard.count(EMPTY)
        stream = self.streams.get(sid)
        if stream is None or stream.received_all:
            if sid > self.last_sid:
                raise f.H2Error(f.PROTOCOL_ERROR, "DATA on an idle stream")
            self.budget.give_back(length)  # dropped
            if stream is not None:  # half-closed (remote)
                self._reset(stream, f.STREAM_CLOSED)
            return  # a stream already answered or reset: data dropped
        if length > stream.recv_credit:
            self.budget.give_back(length)
            self._reset(stream, f.FLOW_CONTROL_ERROR)
            return
        if flags & f.PADDED:
            end -= _padding(view, start, end)
            start += 1
        stream.body += view[start:end]
        self.guard.payload(end - start)
        self.budget.received(stream, length, end - start)
        self.budget.give_back(length)
        declared = stream.head.content_length
        if declared is not None and len(stream.body) > declared:
            self._reset(stream, f.PROTOCOL_ERROR)  # more DATA than content-length says
        elif len(stream.body) > self._limit:
            detail = (
                f"Received message larger than max ({len(stream.body) - 5} vs. {self._limit - 5})"
            )
            self.shared.stats.hit("message_too_large", self.peer, detail)
            self.sender.status(stream, RESOURCE_EXHAUSTED, detail)  # RST(NO_ERROR) stops it
        elif flags & f.END_STREAM:
            self._complete(stream)
        else:
            self.budget.grant(stream, self.streams)

    def _complete(self, stream: Stream) -> None:
        """The request is in: the application takes its bytes once everything received so
        far is parsed, all slices of it: a stream whose reset is already in the receive
        buffer never starts its handler (rapid reset, CVE-2023-44487)."""
        declared = stream.head.content_length
        if declared is not None and declared != len(stream.body):
            self._reset(stream, f.PROTOCOL_ERROR)  # RFC 9113 §8.1.1: malformed
            return
        stream.received_all = True
        self.budget.release(stream, self.streams)
        self._ready.append(stream)

    def _dispatch_ready(self) -> None:
        ready, self._ready = self._ready, []
        for stream in ready:
            if not stream.closed:
                self._dispatch(stream)

    def _on_headers(self, view: memoryview, start: int, end: int, flags: int, sid: int) -> None:
        if sid == 0 or not sid & 1:
            raise f.H2Error(f.PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        if start == end and not flags & f.END_HEADERS:
            self.guard.count(EMPTY)
        if flags & f.PADDED:
            end -= _padding(view, start, end)
            start += 1
        if flags & f.PRIORITY_FLAG:
            if end - start >= 4 and f.u32(bytes(view[start : start + 4])) & 0x7FFFFFFF == sid:
                flags |= _SELF_DEPENDENT  # decoded all the same (HPACK state), then reset
            start += 5
        if end < start:
            raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS shorter than its padding and priority")
        if end - start > self.shared.limits.max_header_block_bytes:
            raise _too_large(f"header block over {self.shared.limits.max_header_block_bytes}")
        block = bytes(view[start:end])
        if flags & f.END_HEADERS:
            self._on_header_block(sid, flags, block)
        else:
            self._cont = (sid, flags, [block])
            self._cont_bytes = len(block)
            self._cont_frames = 0

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self._cont is None or self._cont[0] != sid:
            raise f.H2Error(f.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        if not payload and not flags & f.END_HEADERS:
            self.guard.count(EMPTY)
        limits = self.shared.limits
        self._cont_frames += 1
        self._cont_bytes += len(payload)
        if self._cont_frames > limits.max_continuation_frames:
            raise _too_large(f"more than {limits.max_continuation_frames} CONTINUATION frames")
        if self._cont_bytes > limits.max_header_block_bytes:
            raise _too_large(f"header block over {limits.max_header_block_bytes} bytes")
        parts = self._cont[2]
        parts.append(payload)
        if flags & f.END_HEADERS:
            first_flags = self._cont[1]
            self._cont = None
            self._on_header_block(sid, first_flags, b"".join(parts))

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        head = self._decoder.decode(block)  # always: the HPACK table must follow the peer
        stream = self.streams.get(sid)
        if stream is not None:  # trailers ending the request
            if stream.received_all:
                self._reset(stream, f.STREAM_CLOSED)
            elif not flags & f.END_STREAM:
                self._reset(stream, f.PROTOCOL_ERROR)
            else:
                self._complete(stream)
            return
        if sid <= self.last_sid:
            raise f.H2Error(f.PROTOCOL_ERROR, f"HEADERS on closed stream {sid}")
        self.last_sid = sid
        if self.going_away:
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        if head.malformed or flags & _SELF_DEPENDENT:
            self._write(f.rst_stream(sid, f.PROTOCOL_ERROR))
            return
        limit = self._refusal()
        if limit is not None:
            self.shared.stats.hit(limit, self.peer, f"stream {sid} refused")
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        if head.problem is not None:
            self.sender.headers(sid, f.http_status_block(head.problem), end_stream=True)
            if not flags & f.END_STREAM:
                self._write(f.rst_stream(sid, f.NO_ERROR))
            return
        now = time.monotonic()
        self.last_stream = now
        stream = Stream(
            sid,
            head,
            self.sender.initial_window,
            self.shared.limits.initial_stream_window_bytes,
            now,
        )
        if head.timeout is not None:
            stream.deadline = now + head.timeout
        self.streams[sid] = stream
        self.guard.opened()
        self.budget.open(stream)
        if flags & f.END_STREAM:
            self._complete(stream)

    def _refusal(self) -> str | None:
        """The limit that refuses a new stream, if one does."""
        if len(self.streams) >= self.shared.limits.max_concurrent_streams:
            return "max_concurrent_streams"
        if self.shared.buffered >= self.shared.limits.server_buffer_bytes:
            return "server_buffer"
        return None

    def _finish(self, stream: Stream) -> None:
        self.last_stream = time.monotonic()
        super()._finish(stream)


def _too_large(message: str) -> f.H2Error:
    return f.H2Error(f.ENHANCE_YOUR_CALM, message, reason="header_block_too_large")


def _padding(view: memoryview, start: int, end: int) -> int:
    """The pad length of a PADDED frame (its first byte), checked against the frame."""
    if end <= start or view[start] >= end - start:
        raise f.H2Error(f.PROTOCOL_ERROR, "padding longer than the frame")
    return int(view[start])
