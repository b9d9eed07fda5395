"""One request stream's state, and the sending side of a connection: responses framed as
HEADERS + DATA + trailers in one write when the peer's flow-control windows allow, otherwise
queued and sent as WINDOW_UPDATEs arrive.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.headers import RequestHead

_MESSAGE_PREFIX = struct.Struct(">BL")  # gRPC: compressed flag, message length
_RESPONSE_HEAD = len(f.RESPONSE_HEAD)
_OK_TRAILERS = len(f.OK_TRAILERS)
MAX_MESSAGE_DETAILS = 4096  # grpc-message characters sent; clients cap metadata near 8 KiB


class Stream:
    """A client-initiated stream from its HEADERS until its answer is written or it is reset."""

    __slots__ = (
        "body",
        "cancelled",
        "closed",
        "deadline",
        "deadline_hit",
        "head",
        "head_sent",
        "held",
        "id",
        "opened",
        "pending",
        "received_all",
        "recv_credit",
        "starved",
        "tail",
        "task",
        "timer",
        "window",
    )

    def __init__(
        self, stream_id: int, head: RequestHead, window: int, recv_window: int, now: float
    ) -> None:
        self.id = stream_id
        self.head = head
        self.body = bytearray()
        self.window = window  # what the peer lets us send on this stream
        self.recv_credit = recv_window  # what we let the peer send on this stream
        self.held = 0  # body bytes counted in the connection's and server's buffered bytes
        self.starved = False  # its window ran low while the buffer caps were reached
        self.opened = now  # time.monotonic() of its HEADERS
        self.received_all = False
        self.closed = False  # answered, reset or the connection is gone
        self.cancelled = False  # reset by the client, or its connection is gone
        self.head_sent = False
        self.deadline: float | None = None  # time.monotonic() seconds
        self.deadline_hit = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.pending: memoryview | None = None  # framed message bytes not yet sent
        self.tail = b""  # the trailers frame, written after ``pending``

    def stop(self) -> None:
        """Closed without (more) answer: cancel the handler and drop queued output."""
        self.closed = True
        self.cancelled = True
        self.pending = None
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Sender:
    """The connection's send windows and the streams waiting for them."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        finish: Callable[[Stream], None],
        sent: Callable[[int], None] = lambda length: None,
    ) -> None:
        self._write = write
        self._finish = finish
        self._sent = sent  # told the DATA payload bytes written
        self.window = f.DEFAULT_WINDOW  # connection-level send window
        self.initial_window = f.DEFAULT_WINDOW  # peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = f.DEFAULT_MAX_FRAME  # peer's SETTINGS_MAX_FRAME_SIZE
        self._blocked: dict[int, Stream] = {}

    def message(
        self,
        stream: Stream,
        message: bytes,
        head: bytes = f.RESPONSE_HEAD,
        trailers: bytes = f.OK_TRAILERS,
    ) -> None:
        """Answer with one message: HEADERS, DATA, trailers (END_STREAM)."""
        if stream.closed:
            return
        sid = stream.id
        size = len(message) + 5
        head_frame = f.frame_header(len(head), f.HEADERS, f.END_HEADERS, sid) + head
        tail = f.frame_header(len(trailers), f.HEADERS, f.END_HEADERS | f.END_STREAM, sid)
        stream.head_sent = True
        if size <= self.max_frame and size <= stream.window and size <= self.window:
            stream.window -= size
            self.window -= size
            self._sent(size)
            self._write(
                b"".join(
                    (
                        head_frame,
                        f.frame_header(size, f.DATA, 0, sid),
                        _MESSAGE_PREFIX.pack(0, size - 5),
                        message,
                        tail,
                        trailers,
                    )
                )
            )
            self._done(stream)
            return
        stream.pending = memoryview(_MESSAGE_PREFIX.pack(0, size - 5) + message)
        stream.tail = tail + trailers
        self._blocked[sid] = stream
        self._send_pending(stream, head_frame)

    def status(self, stream: Stream, code: int, message: str, extra: bytes = b"") -> None:
        """End the stream with a gRPC status: Trailers-Only, or trailers after a sent head."""
        if stream.closed:
            return
        block = f.status_block(code, message[:MAX_MESSAGE_DETAILS]) + extra
        if not stream.head_sent:
            block = f.RESPONSE_HEAD + block
        self.headers(stream.id, block, end_stream=True)
        self._done(stream)

    def headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A header block as HEADERS (+ CONTINUATION frames when larger than a frame)."""
        flags = f.END_STREAM if end_stream else 0
        if len(block) <= self.max_frame:
            self._write(f.frame(f.HEADERS, flags | f.END_HEADERS, stream_id, block))
            return
        step = self.max_frame
        chunks = [block[i : i + step] for i in range(0, len(block), step)]
        out = [f.frame(f.HEADERS, flags, stream_id, chunks[0])]
        for i, chunk in enumerate(chunks[1:], start=2):
            last = f.END_HEADERS if i == len(chunks) else 0
            out.append(f.frame(f.CONTINUATION, last, stream_id, chunk))
        self._write(b"".join(out))

    def _done(self, stream: Stream) -> None:
        stream.closed = True
        self._blocked.pop(stream.id, None)
        self._finish(stream)

    def forget(self, stream: Stream) -> None:
        self._blocked.pop(stream.id, None)

    def _send_pending(self, stream: Stream, first: bytes = b"") -> None:
        """As much of the stream's message as the windows allow, in one write (after
        ``first``, the response head, on the first call); then its trailers once all is sent."""
        data = stream.pending
        if data is None:
            return
        sid = stream.id
        out = [first] if first else []
        while data:
            n = min(len(data), self.max_frame, stream.window, self.window)
            if n <= 0:
                break
            out.append(f.frame_header(n, f.DATA, 0, sid) + data[:n])
            data = data[n:]
            stream.window -= n
            self.window -= n
            self._sent(n)
        if not data:
            out.append(stream.tail)
            stream.pending = None
        else:
            stream.pending = data
        if out:
            self._write(b"".join(out))
        if not data:
            self._done(stream)

    # -- windows ---------------------------------------------------------------------------

    def stream_window(self, stream: Stream, increment: int) -> None:
        stream.window += increment
        if stream.window > f.MAX_WINDOW:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
        if stream.pending is not None:
            self._send_pending(stream)

    def connection_window(self, increment: int) -> None:
        self.window += increment
        if self.window > f.MAX_WINDOW:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        self.flush()

    def set_initial_window(self, value: int, streams: list[Stream]) -> None:
        if value > f.MAX_WINDOW:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
        delta = value - self.initial_window
        self.initial_window = value
        for stream in streams:
            stream.window += delta
            if stream.window > f.MAX_WINDOW:
                raise f.H2Error(f.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
        if delta > 0:
            self.flush()

    def flush(self) -> None:
        for stream in list(self._blocked.values()):
            if self.window <= 0:
                break
            self._send_pending(stream)
