"""A bounded in-memory history of traffic per model: rates, errors, latency percentiles, batch
sizes and queue depths, at a fixed resolution over a fixed window (15 minutes at 5 seconds by
default), plus a one-minute rolling window per version for the status table.

Fed by observer events (``request_done``, ``batch_ran``, ``routed``, ``shadow_done``) from any
thread, and closed into points by ``tick`` (the sampler, once per resolution). Memory is fixed
per model and version: nothing grows with traffic or with time.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tfmux.core.shadow import Shadowing, ShadowTally

# Latency bins: 50 µs growing by 1.4x up to ~35 s; a percentile is its bin's geometric middle
# (within ±20%), plenty for a dashboard and a constant 41 integers per version and interval.
_RATIO = 1.4
LATENCY_EDGES = tuple(50e-6 * _RATIO**k for k in range(41))
_MIDDLES = (50e-6 / _RATIO**0.5, *(e * _RATIO**0.5 for e in LATENCY_EDGES))
BINS = len(LATENCY_EDGES) + 1

# The per-model series, in this order (rows of each model's ring).
SERIES = ("requests_per_second", "error_rate", "p50_ms", "p99_ms", "mean_batch_size", "queue_depth")
WINDOW_SECONDS = 60.0  # the rolling window of the status table's rates and percentiles
MAX_OPEN = 20_000  # (model, version) pairs one interval may track, never growing without bound
# (requests naming unknown models are not tracked at all once ``known`` is set: 20,000 of them
# made each 5-s close of the interval hold the event loop ~70 ms, the soak's bogus_names p99)


def percentiles(hist: Sequence[int], quantiles: Sequence[float]) -> list[float | None]:
    """The ``quantiles`` (0..1, ascending) in seconds of a latency histogram, in one pass
    (plain Python: faster than numpy for 42 bins); None each when it is empty."""
    total = sum(hist)
    if total == 0:
        return [None] * len(quantiles)
    ranks = [max(1, math.ceil(q * total)) for q in quantiles]
    found: list[float | None] = []
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        while len(found) < len(ranks) and seen >= ranks[len(found)]:
            found.append(_MIDDLES[index])
    return found


class _Interval:
    """What one version saw during the open interval (guarded by the history's lock)."""

    __slots__ = ("batch_rows", "batches", "errors", "hist", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.hist = [0] * BINS
        self.batch_rows = 0
        self.batches = 0


# A version's window: one row per interval of [requests, errors, batch rows, batches, *hist].
_COUNTS = 4


def _window(slots: int) -> np.ndarray:
    return np.zeros((slots, _COUNTS + BINS), np.int32)


@dataclass(frozen=True)
class WindowStats:
    """A version's (or an arm's) last minute."""

    requests_per_second: float
    error_rate: float | None  # failed / all requests; None without requests
    p50_ms: float | None
    p99_ms: float | None
    mean_batch_size: float | None


class TrafficHistory:
    """Thread-safe: observer events from any thread, ``tick`` and reads from the sampler's.

    ``resolution`` seconds per point, ``points`` points per series (the window is their
    product). A model's series and its versions' windows are dropped with ``forget``.
    """

    def __init__(self, resolution: float = 5.0, points: int = 180) -> None:
        self.resolution = resolution
        self.points = points
        self._slots = max(1, round(WINDOW_SECONDS / resolution))
        self._lock = threading.Lock()
        self.known: Callable[[str], bool] | None = None  # which names are served (None: all)
        self._served: set[str] = set()  # names ``known`` said yes to since the last close
        self._open: dict[tuple[str, str], _Interval] = {}
        self._routed: dict[tuple[str, str], int] = {}  # (model, arm) -> count, open interval
        self._windows: dict[tuple[str, str], np.ndarray] = {}
        self._arm_windows: dict[str, dict[str, np.ndarray]] = {}  # model -> arm -> ring
        self._series: dict[str, np.ndarray] = {}  # model -> (len(SERIES), points) float32
        self._shadows = ShadowTally()
        self._arm_versions: dict[tuple[str, str], str] = {}
        self.ticks = 0  # intervals closed so far; the newest point is index (ticks-1) % points
        self.last_tick: float | None = None  # wall time the newest point ended

    # -- observer events (any thread) ------------------------------------------------------

    def request_done(
        self, name: str, version: str, method: str, seconds: float, error: str | None
    ) -> None:
        if not self._tracks(name):
            return
        with self._lock:
            interval = self._open.get((name, version))
            if interval is None:
                if len(self._open) >= MAX_OPEN:
                    return
                interval = self._open[name, version] = _Interval()
            interval.requests += 1
            if error is not None:
                interval.errors += 1
            else:
                interval.hist[bisect.bisect_left(LATENCY_EDGES, seconds)] += 1

    def batch_ran(
        self, name: str, version: str, rows: int, requests: int, queue_seconds: list[float]
    ) -> None:
        if not self._tracks(name):
            return
        with self._lock:
            interval = self._open.get((name, version))
            if interval is None:
                if len(self._open) >= MAX_OPEN:
                    return
                interval = self._open[name, version] = _Interval()
            interval.batch_rows += rows
            interval.batches += 1

    def _tracks(self, name: str) -> bool:
        """Whether requests for ``name`` are counted: a set lookup for served names (the
        manager is asked once per name and interval, and for every unknown one)."""
        if self.known is None or name in self._served:
            return True
        if self.known(name):
            self._served.add(name)
            return True
        return False

    def routed(self, name: str, arm: str, version: str) -> None:
        with self._lock:
            if (name, arm) not in self._routed and len(self._routed) >= MAX_OPEN:
                return
            self._routed[name, arm] = self._routed.get((name, arm), 0) + 1
            self._arm_versions[name, arm] = version

    def shadow_done(self, name: str, outcome: str) -> None:
        self._shadows.add(name, outcome)

    # -- the sampler -----------------------------------------------------------------------

    def tick(self, now: float, models: Iterable[str], queued: dict[str, int]) -> int:
        """Close the open interval (ending at wall time ``now``) into one point per model in
        ``models`` (the served ones; others are forgotten); ``queued``: queue depth now.
        Returns the requests the interval saw for served models."""
        with self._lock:
            closed, self._open = self._open, {}
            routed, self._routed = self._routed, {}
        slot = self.ticks % self._slots
        column = self.ticks % self.points
        by_model: dict[str, list[tuple[str, _Interval]]] = {}
        for (name, version), interval in closed.items():
            by_model.setdefault(name, []).append((version, interval))
        served = set(models)
        self._served = set(served)  # names removed since are asked about again
        self._shadows.keep(served)
        with self._lock:
            for key in [k for k in self._windows if k[0] not in served]:
                del self._windows[key]
            for window in self._windows.values():
                window[slot] = 0
            for gone in [n for n in self._arm_windows if n not in served]:
                del self._arm_windows[gone]
            for arm_key in [k for k in self._arm_versions if k[0] not in served]:
                del self._arm_versions[arm_key]
            for counts in (ring for arms in self._arm_windows.values() for ring in arms.values()):
                counts[slot] = 0
            for (name, arm), count in routed.items():
                if name in served:
                    arms = self._arm_windows.setdefault(name, {})
                    arm_ring = arms.get(arm)
                    if arm_ring is None:
                        arm_ring = arms[arm] = np.zeros(self._slots, np.int32)
                    arm_ring[slot] = count
            for name in [n for n in self._series if n not in served]:
                del self._series[name]
            for name in served:
                ring = self._series.get(name)
                if ring is None:
                    ring = self._series[name] = np.full((len(SERIES), self.points), np.nan, "f4")
                ring[:, column] = self._point(name, by_model.get(name, []), slot, queued)
            self.ticks += 1
            self.last_tick = now
        return sum(i.requests for (name, _), i in closed.items() if name in served)

    def _point(
        self, name: str, versions: list[tuple[str, _Interval]], slot: int, queued: dict[str, int]
    ) -> tuple[float, ...]:
        if not versions:
            return (0.0, np.nan, np.nan, np.nan, np.nan, queued.get(name, 0))
        total = [0] * (_COUNTS + BINS)
        for version, interval in versions:
            window = self._windows.get((name, version))
            if window is None:
                window = self._windows[name, version] = _window(self._slots)
            row = [interval.requests, interval.errors, interval.batch_rows, interval.batches]
            row += interval.hist
            window[slot] = row
            total = row if len(versions) == 1 else [a + b for a, b in zip(total, row, strict=True)]
        requests, errors, rows, batches = total[:_COUNTS]
        p50, p99 = percentiles(total[_COUNTS:], (0.5, 0.99))
        return (
            requests / self.resolution,
            errors / requests if requests else np.nan,
            p50 * 1000 if p50 is not None else np.nan,
            p99 * 1000 if p99 is not None else np.nan,
            rows / batches if batches else np.nan,
            queued.get(name, 0),
        )

    # -- reads -----------------------------------------------------------------------------

    def window(self, name: str, version: str) -> WindowStats:
        """The last minute of one version (all zero / None when it saw nothing)."""
        with self._lock:
            window = self._windows.get((name, version))
            if window is None:
                return WindowStats(0.0, None, None, None, None)
            total = window.sum(axis=0).tolist()
        seconds = self.window_seconds()
        requests, errors, rows, batches = total[:_COUNTS]
        if requests == 0:
            return WindowStats(0.0, None, None, None, None)
        p50, p99 = percentiles(total[_COUNTS:], (0.5, 0.99))
        return WindowStats(
            requests / seconds,
            errors / requests if requests else None,
            None if p50 is None else p50 * 1000,
            None if p99 is None else p99 * 1000,
            rows / batches if batches else None,
        )

    def arms(self, name: str) -> dict[str, tuple[float, str]]:
        """Arm -> (requests per second over the last minute, version it last went to)."""
        seconds = self.window_seconds()
        with self._lock:
            return {
                arm: (int(ring.sum()) / seconds, self._arm_versions.get((name, arm), ""))
                for arm, ring in self._arm_windows.get(name, {}).items()
            }

    def shadowing(self, name: str) -> Shadowing:
        return self._shadows.counts(name)

    def series(self, name: str) -> dict[str, list[float | None]] | None:
        """A model's series, oldest point first (None where there was no data)."""
        with self._lock:
            ring = self._series.get(name)
            if ring is None:
                return None
            ordered = np.roll(ring, -(self.ticks % self.points), axis=1)
        return {key: _floats(ordered[i]) for i, key in enumerate(SERIES)}

    def busiest(self, count: int) -> list[str]:
        """The ``count`` models with the most requests over the last minute."""
        with self._lock:
            totals: dict[str, int] = {}
            for (name, _), window in self._windows.items():
                totals[name] = totals.get(name, 0) + int(window[:, 0].sum())
        ranked = sorted((n for n, t in totals.items() if t > 0), key=lambda n: (-totals[n], n))
        return ranked[:count]

    def window_seconds(self) -> float:
        return max(1, min(self.ticks, self._slots)) * self.resolution


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if v != v else float(f"{v:.4g}") for v in values.tolist()]
