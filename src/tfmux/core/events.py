"""Recent lifecycle events (loads, failures, unloads, evictions, version swaps, label and split
changes), found by comparing snapshots of the manager and the traffic table, kept in a ring."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from tfmux.core.lifecycle import ModelVersion, State
from tfmux.core.manager import ModelManager

# "replica": a cluster replica appeared, stopped answering or left (the gateway's log only).
EVENT_KINDS = ("load", "failure", "unload", "eviction", "swap", "label", "split", "replica")


@dataclass(frozen=True)
class Event:
    """One thing that happened: ``kind`` is one of EVENT_KINDS, ``time`` wall seconds."""

    id: int
    time: float
    kind: str
    model: str
    version: int | None
    message: str


class EventLog:
    """The last ``capacity`` events, numbered from 1. Thread-safe."""

    def __init__(self, capacity: int = 500) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, time: float, kind: str, model: str, version: int | None, message: str) -> None:
        with self._lock:
            self._events.append(Event(next(self._ids), time, kind, model, version, message))

    def after(self, last_id: int = 0, limit: int | None = None) -> list[Event]:
        """Events newer than ``last_id``, oldest first (the newest ``limit`` of them)."""
        with self._lock:
            events = [e for e in self._events if e.id > last_id]
        return events[-limit:] if limit else events


@dataclass(frozen=True)
class Routes:
    labels: Mapping[str, int]
    split: Mapping[str, float]


@dataclass
class Snapshot:
    """Which version objects were served, in which state, and each model's routing."""

    versions: dict[tuple[str, int], tuple[ModelVersion, State]] = field(default_factory=dict)
    routes: dict[str, Routes] = field(default_factory=dict)
    unloaded: set[str] = field(default_factory=set)  # models unloaded on request


def snapshot(manager: ModelManager) -> Snapshot:
    snap = Snapshot()
    for served in manager.models():
        name = served.config.name
        if served.unloaded:
            snap.unloaded.add(name)
        for version, mv in list(served.versions.items()):
            snap.versions[name, version] = (mv, mv.state)
        routing = manager.traffic.routing(name)
        if routing is not None:
            snap.routes[name] = Routes(dict(routing.labels), dict(routing.split.weights))
    return snap


def compare(before: Snapshot, after: Snapshot, now: float, log: EventLog) -> None:
    """Add to ``log`` what changed between two snapshots (``now``: wall time)."""
    serving: dict[str, list[int]] = {}  # model -> its AVAILABLE versions now
    for (name, version), (_, state) in after.versions.items():
        if state is State.AVAILABLE:
            serving.setdefault(name, []).append(version)
    for (name, version), (mv, state) in after.versions.items():
        old = before.versions.get((name, version))
        fresh = old is None or old[0] is not mv
        if fresh and old is not None:
            _ended(old[0], old[1], name, version, after, now, log, replaced=False)
        was = None if fresh or old is None else old[1]
        if state is State.AVAILABLE and was is not State.AVAILABLE:
            seconds = mv.load_seconds
            took = f" in {seconds:.2f} s" if seconds is not None else ""
            log.add(now, "load", name, version, f"version {version} loaded{took}")
        elif state is State.END and was is not State.END and mv.error is not None:
            error = mv.error
            message = f"load failed: {error.kind.value}: {error.message}"
            log.add(now, "failure", name, version, message)
        elif state is State.END and was is not State.END and not fresh:
            _ended(mv, was, name, version, after, now, log, replaced=False)
    for (name, version), (mv, state) in before.versions.items():
        if (name, version) not in after.versions:
            swapped = [v for v in serving.get(name, []) if v != version]
            if swapped and state in (State.AVAILABLE, State.UNLOADING):
                text = f"version {version} replaced by version {max(swapped)}"
                log.add(now, "swap", name, version, text)
            else:
                _ended(mv, state, name, version, after, now, log, replaced=name in after.routes)
    for name, routes in after.routes.items():
        old_routes = before.routes.get(name)
        if old_routes is not None:
            _routing_changes(name, old_routes, routes, now, log)


def _ended(
    mv: ModelVersion,
    state: State | None,
    name: str,
    version: int,
    after: Snapshot,
    now: float,
    log: EventLog,
    replaced: bool,
) -> None:
    """A version that was loaded (or unloading) before and is gone or ended now."""
    if state not in (State.AVAILABLE, State.UNLOADING):
        return
    if mv.evicted:
        message = "evicted to make room under the memory budget (least recently used, idle)"
        log.add(now, "eviction", name, version, message)
    elif name not in after.routes:
        log.add(now, "unload", name, version, "model removed from the served configuration")
    elif replaced:
        log.add(now, "unload", name, version, f"version {version} retired by its version policy")
    else:
        reason = "unloaded on request" if name in after.unloaded else "unloaded"
        log.add(now, "unload", name, version, reason)


def _routing_changes(name: str, old: Routes, new: Routes, now: float, log: EventLog) -> None:
    for label in sorted(set(old.labels) | set(new.labels)):
        was, now_at = old.labels.get(label), new.labels.get(label)
        if was == now_at:
            continue
        if now_at is None:
            text = f"label {label} removed (was version {was})"
        elif was is None:
            text = f"label {label} set to version {now_at}"
        else:
            text = f"label {label} moved from version {was} to {now_at}"
        log.add(now, "label", name, now_at, text)
    if dict(old.split) != dict(new.split):
        log.add(now, "split", name, None, f"split {_weights(old.split)} → {_weights(new.split)}")


def _weights(split: Mapping[str, float]) -> str:
    if not split:
        return "none"
    return ", ".join(f"{arm}: {weight:g}" for arm, weight in split.items())
