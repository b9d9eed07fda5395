"""Receive flow control of one connection, tied to the request bytes it holds.

Memory is bounded by stream windows: a stream's window is re-opened (WINDOW_UPDATE) only while
the bytes it already holds fit the caps, i.e. while the connection holds fewer than
``connection_buffer_bytes`` and the server fewer than ``server_buffer_bytes`` of unfinished
requests. Past the connection cap only the connection's oldest unfinished request keeps
receiving (so one message of the maximum size always gets through); the others wait, their
windows closed, until a request completes and the application takes its bytes, or the request
times out. The connection window returns credit for bytes a stream accepted within its window
(or that were dropped), so it paces throughput and the stream windows bound memory.
"""

from __future__ import annotations

from collections.abc import Callable

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.guard import Shared
from tfmux.transports.h2.stream import Stream


class ReceiveBudget:
    """The connection's receive window and buffered request bytes."""

    def __init__(self, shared: Shared, write: Callable[[bytes], None], peer: Callable[[], str]):
        self.shared = shared
        self._write = write
        self._peer = peer
        limits = shared.limits
        self.window = limits.connection_window_bytes  # what the peer may still send us
        self._half = limits.connection_window_bytes // 2
        self._unacked = 0
        self._cap = limits.connection_buffer_bytes
        self._server_cap = limits.server_buffer_bytes
        self._stream_window = limits.stream_window_bytes
        self.buffered = 0  # request bytes held by this connection's unfinished requests
        self.starved = 0  # streams waiting for a window because of the caps

    def take(self, length: int) -> None:
        """A DATA frame arrived: the peer used ``length`` of the connection window."""
        self.window -= length
        if self.window < 0:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "peer overran the connection window")

    def give_back(self, length: int) -> None:
        """Connection credit for bytes a stream accepted within its window, or dropped."""
        self._unacked += length
        if self._unacked >= self._half:
            self._write(f.window_update(0, self._unacked))
            self.window += self._unacked
            self._unacked = 0

    def hold(self, stream: Stream, length: int) -> None:
        stream.held += length
        self.buffered += length
        self.shared.buffered += length

    def release(self, stream: Stream, streams: dict[int, Stream]) -> None:
        """The application took the stream's bytes, or the stream is gone."""
        if stream.starved:
            stream.starved = False
            self.starved -= 1
        held = stream.held
        if held:
            stream.held = 0
            self.buffered -= held
            self.shared.buffered -= held
            if self.starved:
                self.regrant(streams)

    def grant(self, stream: Stream, streams: dict[int, Stream]) -> None:
        """Re-open the stream's window if it runs low and the caps allow."""
        if stream.recv_credit > self._stream_window // 2:
            return
        limit = self._blocking_cap(stream, streams)
        if limit is not None:
            if not stream.starved:
                stream.starved = True
                self.starved += 1
                detail = f"stream {stream.id} waits ({self.buffered} bytes held)"
                self.shared.stats.hit(limit, self._peer(), detail)
            return
        if stream.starved:
            stream.starved = False
            self.starved -= 1
        increment = self._stream_window - stream.recv_credit
        stream.recv_credit += increment
        self._write(f.window_update(stream.id, increment))

    def regrant(self, streams: dict[int, Stream]) -> None:
        """Give waiting streams their windows, oldest first, as far as the caps allow."""
        for stream in list(streams.values()):
            if not self.starved:
                return
            if stream.starved:
                self.grant(stream, streams)

    def _blocking_cap(self, stream: Stream, streams: dict[int, Stream]) -> str | None:
        """The cap that keeps ``stream`` from receiving more, if any."""
        if self.shared.buffered >= self._server_cap:
            return "server_buffer"
        if self.buffered < self._cap:
            return None
        oldest = next((s for s in streams.values() if not s.received_all), None)
        return None if stream is oldest else "connection_buffer"
