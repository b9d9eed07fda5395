"""What a server's connections share (limits, counters, the server-wide request-byte count),
and the per-connection flood guard: frames of each costly-but-useless kind counted per window
beyond what the connection's useful work earned, GOAWAY(ENHANCE_YOUR_CALM) past the limit.
"""

from __future__ import annotations

import time

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.limits import H2Limits
from tfmux.transports.h2.stats import H2Stats

# Flood kinds: index into FloodGuard's counters.
RESETS, PINGS, SETTINGS, EMPTY, CONTROL = range(5)
_NAMES = ("resets", "pings", "settings", "empty_frames", "control_frames")
# Frames of each kind that useful work earns: per stream answered, per UNIT_BYTES of DATA
# payload received or sent, and (control frames only: grpcio widens each new stream's window
# at once) per stream opened. grpcio sends fewer (docs/security.md has the counts). Resets are
# earned by answers only (a reset per upload or per stream opened would let rapid reset
# through); empty frames are never earned (no client needs them).
UNIT_BYTES = 16 * 1024
PER_ANSWER = (1.0, 2.0, 1.0, 0.0, 8.0)
PER_UNIT = (0.0, 1.0, 0.0, 0.0, 4.0)
PER_OPENED = (0.0, 0.0, 0.0, 0.0, 2.0)


class Shared:
    """One server's limits, counters and buffered request bytes, shared by its connections."""

    def __init__(self, limits: H2Limits, max_message: int, stats: H2Stats | None = None) -> None:
        self.limits = limits
        self.max_message = max_message
        self.stats = stats or H2Stats()
        self.buffered = 0  # request bytes held by unfinished requests, every connection
        self.preface = f.settings(
            {
                f.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                f.INITIAL_WINDOW_SIZE: limits.initial_stream_window_bytes,
                f.MAX_FRAME_SIZE: MAX_RECV_FRAME,
                f.MAX_HEADER_LIST_SIZE: limits.max_header_block_bytes,
                f.ENABLE_PUSH: 0,
            }
        )
        if limits.connection_window_bytes > f.DEFAULT_WINDOW:
            self.preface += f.window_update(0, limits.connection_window_bytes - f.DEFAULT_WINDOW)


MAX_RECV_FRAME = 1024 * 1024  # our SETTINGS_MAX_FRAME_SIZE


class FloodGuard:
    """Frames of each costly-but-useless kind, counted per window against an allowance: the
    kind's limit plus what the connection's useful work earned (``PER_ANSWER`` per stream
    answered, ``PER_UNIT`` per ``UNIT_BYTES`` of DATA payload either way): a busy client sends
    WINDOW_UPDATEs, PINGs and resets in proportion to its work, a flood does not. Past the
    allowance: ``H2Error`` (GOAWAY ENHANCE_YOUR_CALM). The work of the window before counts
    too (as its average rate), so a window that begins mid-transfer does not trip."""

    __slots__ = (
        "_answered",
        "_bytes",
        "_carry",
        "_counts",
        "_limits",
        "_opened",
        "_start",
        "_window",
    )

    def __init__(self, limits: H2Limits) -> None:
        self._limits = (
            limits.max_resets,
            limits.max_pings,
            limits.max_settings,
            limits.max_empty_frames,
            limits.max_control_frames,
        )
        self._window = limits.flood_window_seconds
        self._counts = [0, 0, 0, 0, 0]
        self._start = time.monotonic()
        self._answered = 0  # streams answered in this window
        self._opened = 0  # streams opened in this window
        self._bytes = 0  # DATA payload bytes received and sent in this window
        self._carry = (0.0, 0.0, 0.0)  # answers, units of bytes, streams opened: window before

    def count(self, kind: int) -> None:
        counts = self._counts
        counts[kind] += 1
        if counts[kind] > self._limits[kind]:
            self._over(kind)

    def counted(self, kind: int) -> int:
        """Frames of ``kind`` counted in this window."""
        return self._counts[kind]

    def answered(self) -> None:
        """A stream's answer was written in full."""
        self._answered += 1

    def opened(self) -> None:
        """A request stream was opened."""
        self._opened += 1

    def payload(self, length: int) -> None:
        """``length`` bytes of DATA payload were received or sent."""
        self._bytes += length

    def allowed(self, kind: int) -> float:
        """Frames of ``kind`` this window allows: the limit plus what work earned."""
        answers = self._answered + self._carry[0]
        units = self._bytes / UNIT_BYTES + self._carry[1]
        opened = self._opened + self._carry[2]
        return (
            self._limits[kind]
            + PER_ANSWER[kind] * answers
            + PER_UNIT[kind] * units
            + PER_OPENED[kind] * opened
        )

    def _over(self, kind: int) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed >= self._window:  # a new window: this frame is its first
            share = self._window / elapsed  # the last window's work, as a rate
            units = self._bytes / UNIT_BYTES
            self._carry = (self._answered * share, units * share, self._opened * share)
            self._start = now
            self._counts = [0, 0, 0, 0, 0]
            self._counts[kind] = 1
            self._answered = self._bytes = self._opened = 0
            return
        count = self._counts[kind]
        allowed = self.allowed(kind)
        if count <= allowed:
            return
        name = _NAMES[kind]
        raise f.H2Error(
            f.ENHANCE_YOUR_CALM,
            f"{count} {name.replace('_', ' ')} in {elapsed:.1f} s: more than {self._limits[kind]}"
            f" beyond what the connection's work earned ({allowed:.0f} allowed)",
            reason=f"flood_{name}",
        )
