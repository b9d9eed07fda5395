"""The server's status for people and scripts: every model and version with its state, memory,
traffic and routing; a bounded history; recent events. It is an Observer (requests, batches,
routes and shadows feed its history) and is sampled by ``core.sampler.StatusSampler``, a task
the server owns, which compares snapshots of the manager (events) and closes history intervals."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tfmux.core.events import Event, EventLog, Snapshot, compare, snapshot
from tfmux.core.history import TrafficHistory
from tfmux.core.lifecycle import ModelVersion, State
from tfmux.core.manager import ModelManager
from tfmux.core.served import ServedModel
from tfmux.core.shadow import Shadowing
from tfmux.core.traffic import Routing

OVERALL = ("requests_per_second", "memory_used_bytes", "queue_depth", "loads", "evictions")
RECENT_EVENTS = 50  # events in an overview (the events API reads the whole ring)


@dataclass(frozen=True)
class VersionRow:
    version: int
    state: str
    error_code: str
    error_message: str
    evicted: bool
    memory_bytes: int | None
    memory_measured: bool
    last_used_seconds_ago: float | None
    load_seconds: float | None
    queue_depth: int
    requests_per_second: float
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None
    mean_batch_size: float | None


@dataclass(frozen=True)
class ArmRow:
    arm: str
    weight: float
    version: int | None
    requests_per_second: float


@dataclass(frozen=True)
class ShadowRow:
    target: str
    percent: float
    agree: int
    disagree: int
    error: int
    dropped: int


@dataclass(frozen=True)
class ModelRow:
    name: str
    pinned: bool
    load: str
    unloaded: bool
    problem: str | None
    labels: dict[str, int]
    arms: list[ArmRow]
    shadow: ShadowRow | None
    versions: list[VersionRow]


@dataclass(frozen=True)
class Overview:
    time: float
    window_seconds: float
    memory_used_bytes: int
    memory_budget_bytes: int | None
    management_enabled: bool
    admin_token_required: bool
    models: list[ModelRow]
    events: list[Event]


@dataclass(frozen=True)
class HistoryReport:
    resolution_seconds: float
    points: int
    end_time: float | None  # wall time the newest point ended (None: no point yet)
    busiest: list[str]
    overall: dict[str, list[float | None]]
    models: dict[str, dict[str, list[float | None]]]


class StatusBoard:
    """Thread-safe. ``resolution`` seconds per history point, ``points`` points kept.
    Built before the manager (it observes it), then given it with ``watch``."""

    def __init__(
        self,
        resolution: float = 5.0,
        points: int = 180,
        events: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._watched: ModelManager | None = None
        self._clock = clock
        self.history = TrafficHistory(resolution, points)
        self.events = EventLog(events)
        self._snapshot = Snapshot()
        self._last_event = 0
        self._loads = self._evictions = 0
        self._started = clock()
        # The request path calls the history directly (one call less per request).
        self.request_done = self.history.request_done  # type: ignore[method-assign]
        self.batch_ran = self.history.batch_ran  # type: ignore[method-assign]
        self._overall: dict[str, deque[float | None]] = {
            key: deque([None] * points, maxlen=points) for key in OVERALL
        }

    def watch(self, manager: ModelManager) -> None:
        """Report the models of ``manager`` (the manager reports its events to this board)."""
        self._watched = manager
        self.history.known = manager.serves

    @property
    def _manager(self) -> ModelManager:
        if self._watched is None:
            raise RuntimeError("StatusBoard.watch(manager) was not called")
        return self._watched

    # -- Observer (any thread; cheap) ------------------------------------------------------

    def model_loaded(self, name: str, version: int, seconds: float, error: str | None) -> None:
        pass  # loads and failures are read from snapshots, with the error message

    def request_done(
        self, name: str, version: str, method: str, seconds: float, error: str | None
    ) -> None:
        self.history.request_done(name, version, method, seconds, error)

    def batch_ran(
        self, name: str, version: str, rows: int, requests: int, queue_seconds: list[float]
    ) -> None:
        self.history.batch_ran(name, version, rows, requests, queue_seconds)

    def request_dropped(self, name: str, version: str, reason: str) -> None:
        pass

    def routed(self, name: str, arm: str, version: str) -> None:
        self.history.routed(name, arm, version)

    def shadow_done(
        self, name: str, version: str, shadow_version: str, outcome: str, diffs: dict[str, float]
    ) -> None:
        self.history.shadow_done(name, outcome)

    # -- sampling (the sampler task) -------------------------------------------------------

    def sample(self, close: bool = False) -> None:
        """Record what changed since the last sample; close a history point when due (or
        now, with ``close``)."""
        now = self._clock()
        current = snapshot(self._manager)
        compare(self._snapshot, current, now, self.events)
        self._snapshot = current
        for event in self.events.after(self._last_event):
            self._last_event = event.id
            self._loads += event.kind == "load"
            self._evictions += event.kind == "eviction"
        last = self.history.last_tick
        if last is None:
            last = self.history.last_tick = self._started
        if close or now - last >= self.history.resolution:
            self._close_point(now)

    def _close_point(self, now: float) -> None:
        queued: dict[str, int] = {}
        names = []
        for served in self._manager.models():
            name = served.config.name
            names.append(name)
            queued[name] = sum(_queued(mv) for mv in list(served.versions.values()))
        requests = self.history.tick(now, names, queued)
        points = {
            "requests_per_second": requests / self.history.resolution,
            "memory_used_bytes": float(self._manager.budget.used()),
            "queue_depth": float(sum(queued.values())),
            "loads": float(self._loads),
            "evictions": float(self._evictions),
        }
        self._loads = self._evictions = 0
        for key, value in points.items():
            self._overall[key].append(value)

    # -- reads -----------------------------------------------------------------------------

    def overview(self, management_enabled: bool, admin_token_required: bool) -> Overview:
        budget = self._manager.budget
        models = [self._model_row(served) for served in self._manager.models()]
        return Overview(
            time=self._clock(),
            window_seconds=self.history.window_seconds(),
            memory_used_bytes=budget.used(),
            memory_budget_bytes=budget.limit,
            management_enabled=management_enabled,
            admin_token_required=admin_token_required,
            models=sorted(models, key=lambda m: m.name),
            events=self.events.after(0, RECENT_EVENTS),
        )

    def report(self, models: Sequence[str] = (), busiest: int = 5) -> HistoryReport:
        """The overall series, and the series of ``models`` and of the ``busiest`` models."""
        top = self.history.busiest(busiest)
        series = {}
        for name in [*top, *models]:
            values = self.history.series(name)
            if values is not None:
                series[name] = values
        return HistoryReport(
            resolution_seconds=self.history.resolution,
            points=self.history.points,
            end_time=self.history.last_tick if self.history.ticks else None,
            busiest=top,
            overall={key: list(values) for key, values in self._overall.items()},
            models=series,
        )

    def _model_row(self, served: ServedModel) -> ModelRow:
        config = served.config
        name = config.name
        routing = self._manager.traffic.routing(name)
        labels = dict(routing.labels) if routing else {}
        arms_seen = self.history.arms(name)
        arms = []
        shadow = None
        if routing is not None:
            for arm, weight in routing.split.weights.items():
                rate, version = arms_seen.get(arm, (0.0, ""))
                number = labels.get(arm) if not version else int(version)
                if number is None and arm.isdigit():
                    number = int(arm)
                arms.append(ArmRow(arm, weight, number, round(rate, 3)))
            shadow = shadow_row(routing, self.history.shadowing(name))
        versions = [self._version_row(mv) for _, mv in sorted(list(served.versions.items()))]
        return ModelRow(
            name=name,
            pinned=config.pinned,
            load=config.load,
            unloaded=served.unloaded,
            problem=None if served.problem is None else served.problem.message,
            labels=labels,
            arms=arms,
            shadow=shadow,
            versions=versions[::-1],
        )

    def _version_row(self, mv: ModelVersion) -> VersionRow:
        status = mv.status()
        window = self.history.window(mv.name, str(mv.version))
        used = mv.state in (State.AVAILABLE, State.UNLOADING)
        return VersionRow(
            version=mv.version,
            state=status.state,
            error_code=status.error_code,
            error_message=status.error_message,
            evicted=mv.evicted,
            memory_bytes=status.memory_bytes,
            memory_measured=status.memory_measured,
            last_used_seconds_ago=round(time.monotonic() - mv.last_used, 1) if used else None,
            load_seconds=None if mv.load_seconds is None else round(mv.load_seconds, 3),
            queue_depth=_queued(mv),
            requests_per_second=round(window.requests_per_second, 3),
            error_rate=_round(window.error_rate),
            p50_ms=_round(window.p50_ms),
            p99_ms=_round(window.p99_ms),
            mean_batch_size=_round(window.mean_batch_size),
        )


def shadow_row(routing: Routing, seen: Shadowing) -> ShadowRow | None:
    """A model's shadow as the status shows it: where its split mirrors to, and how the
    mirrors went (single-process and cluster status alike)."""
    mirror = routing.split.shadow
    if mirror is None:
        return None
    return ShadowRow(
        mirror.target, mirror.percent, seen.agree, seen.disagree, seen.error, seen.dropped
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _queued(mv: ModelVersion) -> int:
    return sum(b.statistics().queued for b in list(mv.batchers.values()))
