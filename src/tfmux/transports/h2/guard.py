"""What a server's connections share (limits, counters, the server-wide request-byte count),
and the per-connection flood guard: frames of each costly-but-useless kind counted per window,
GOAWAY(ENHANCE_YOUR_CALM) past the limit.
"""

from __future__ import annotations

import time

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.limits import H2Limits
from tfmux.transports.h2.stats import H2Stats

# Flood kinds: index into FloodGuard's counters.
RESETS, PINGS, SETTINGS, EMPTY, CONTROL = range(5)
_NAMES = ("resets", "pings", "settings", "empty_frames", "control_frames")


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
    """Counts frames by kind in fixed windows; raises once a kind passes its limit."""

    __slots__ = ("_counts", "_limits", "_start", "_window")

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

    def count(self, kind: int) -> None:
        counts = self._counts
        counts[kind] += 1
        if counts[kind] <= self._limits[kind]:
            return
        now = time.monotonic()
        if now - self._start >= self._window:  # a new window: this frame is its first
            self._start = now
            self._counts = [0, 0, 0, 0, 0]
            self._counts[kind] = 1
            return
        name = _NAMES[kind]
        raise f.H2Error(
            f.ENHANCE_YOUR_CALM,
            f"more than {self._limits[kind]} {name.replace('_', ' ')} in {self._window:g} s",
            reason=f"flood_{name}",
        )
