"""Receive flow control of one connection, tied to the request bytes it may hold.

A stream *commits* the bytes it holds plus the window it still has (what the peer may send
without asking). Memory is bounded by commitments: a stream's window is re-opened
(WINDOW_UPDATE) only as far as the connection's commitments stay under
``connection_buffer_bytes`` and the server's under ``server_buffer_bytes``. Past the connection
cap only the connection's oldest unfinished request keeps receiving (so one message of the
maximum size always gets through); the others wait, windows closed, until a request completes
and the application takes its bytes, or the request times out. The connection window returns
credit for bytes a stream accepted within its window (or that were dropped): it paces
throughput, and the stream windows bound memory.
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

    def open(self, stream: Stream) -> None:
        """A new stream commits its initial window."""
        self._commit(stream, stream.recv_credit)

    def received(self, stream: Stream, length: int, kept: int) -> None:
        """``length`` bytes of the stream's window arrived, ``kept`` of them (no padding)
        now held in its body."""
        stream.recv_credit -= length
        self._commit(stream, kept - length)

    def _commit(self, stream: Stream, length: int) -> None:
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
        """Re-open the stream's window if it runs low, as far as the caps allow."""
        if stream.recv_credit > self._stream_window // 2:
            return
        wanted = self._stream_window - stream.recv_credit
        increment, limit = self._allowed(stream, streams, wanted)
        if limit is not None:
            if not stream.starved:
                stream.starved = True
                self.starved += 1
                detail = f"stream {stream.id} waits ({self.buffered} bytes committed)"
                self.shared.stats.hit(limit, self._peer(), detail)
            return
        if stream.starved:
            stream.starved = False
            self.starved -= 1
        stream.recv_credit += increment
        self._commit(stream, increment)
        self._write(f.window_update(stream.id, increment))

    def regrant(self, streams: dict[int, Stream]) -> None:
        """Give waiting streams their windows, oldest first, as far as the caps allow."""
        for stream in list(streams.values()):
            if not self.starved:
                return
            if stream.starved:
                self.grant(stream, streams)

    def _allowed(
        self, stream: Stream, streams: dict[int, Stream], wanted: int
    ) -> tuple[int, str | None]:
        """How much window the stream may get now, or the cap that holds it back."""
        server_room = self._server_cap - self.shared.buffered
        if server_room < _MIN_GRANT:
            return 0, "server_buffer"
        oldest = next((s for s in streams.values() if not s.received_all), None)
        room = wanted if stream is oldest else self._cap - self.buffered
        increment = min(wanted, room, server_room)
        if increment < min(_MIN_GRANT, wanted):
            return 0, "connection_buffer"
        return increment, None


_MIN_GRANT = 16 * 1024  # smaller window updates cost more than they carry
