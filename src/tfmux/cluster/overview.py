"""The cluster's status, merged from what each replica reports: pure functions over readings.

Each replica keeps its own status board (a whole tfmux core); the gateway asks every replica
(``cluster/status.py``) and merges here. The single-process shapes stay as they are; the
cluster adds fields: ``replicas`` on the overview (one row per replica) and on each model
and version (which replicas hold it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tfmux.cluster.placement import STATE_RANK, ReplicaSnapshot
from tfmux.config import ModelConfig
from tfmux.core.events import Event
from tfmux.core.shadow import Shadowing
from tfmux.core.status import ArmRow, ModelRow, Overview, VersionRow, shadow_row
from tfmux.core.traffic import Routing
from tfmux.types import VersionStatus

HOLDING = ("AVAILABLE", "LOADING", "UNLOADING")  # a replica holds a version in these states


@dataclass(frozen=True)
class Reading:
    """One replica as the gateway last read it: ``overview`` None when it did not answer
    (``error`` says why; ``snapshot`` is then the router's last report of it)."""

    snapshot: ReplicaSnapshot
    overview: Overview | None = None
    error: str | None = None


@dataclass(frozen=True)
class Placement:
    """One replica holding a version: its state and memory there."""

    replica: str
    node: str
    state: str
    memory_bytes: int | None


@dataclass(frozen=True)
class ReplicaRow:
    replica: str
    node: str
    state: str  # "up", or "unreachable" (its other fields: its last report)
    message: str
    memory_used_bytes: int
    memory_budget_bytes: int | None
    models: list[str]  # "name:version" for every version AVAILABLE there
    inflight: int  # requests the gateway has in flight on it
    requests: int  # requests it answered through this gateway
    misses: int  # of those, how many had to load their model first
    requests_per_second: float  # its last minute


@dataclass(frozen=True)
class ClusterVersionRow(VersionRow):
    replicas: list[Placement]


@dataclass(frozen=True)
class ClusterModelRow(ModelRow):
    replicas: list[str]  # replicas holding any version


@dataclass(frozen=True)
class ClusterOverview(Overview):
    replicas: list[ReplicaRow]


@dataclass(frozen=True)
class Gateway:
    """What only the gateway knows: configuration, routing, its own counters."""

    models: Sequence[ModelConfig]
    routing: Mapping[str, Routing]
    served: Mapping[tuple[str, bool], int]  # (replica, hit) -> requests
    inflight: Mapping[str, int]
    management_enabled: bool
    admin_token_required: bool
    shadows: Mapping[str, Shadowing] = field(default_factory=dict)  # model -> mirror outcomes


def merge_overview(
    readings: Sequence[Reading], gateway: Gateway, events: list[Event], now: float
) -> ClusterOverview:
    per_model = _rows_by_model(readings)
    configs = {c.name: c for c in gateway.models}
    names = sorted(set(configs) | set(per_model))
    models: list[ModelRow] = [
        _model(name, configs.get(name), per_model.get(name, []), gateway) for name in names
    ]
    answered = [r.overview for r in readings if r.overview is not None]
    budgets = [r.snapshot.budget_bytes for r in readings if r.snapshot.budget_bytes is not None]
    unbounded = not readings or len(budgets) < len(readings)  # one replica without a budget
    return ClusterOverview(
        time=now,
        window_seconds=max((o.window_seconds for o in answered), default=0.0),
        memory_used_bytes=sum(r.snapshot.used_bytes for r in readings),
        memory_budget_bytes=None if unbounded else sum(budgets),
        management_enabled=gateway.management_enabled,
        admin_token_required=gateway.admin_token_required,
        models=models,
        events=sorted(events, key=lambda e: (e.time, e.id)),
        replicas=[_replica(r, gateway) for r in readings],
    )


# One replica's view of one model: (replica, node, its ModelRow or None, its versions).
_Seen = tuple[str, str, ModelRow | None, list[VersionRow]]


def _rows_by_model(readings: Sequence[Reading]) -> dict[str, list[_Seen]]:
    out: dict[str, list[_Seen]] = {}
    for reading in readings:
        snap = reading.snapshot
        if reading.overview is not None:
            for row in reading.overview.models:
                out.setdefault(row.name, []).append((snap.replica, snap.node, row, row.versions))
        else:  # unreachable: what its last report said it holds
            for name, statuses in snap.models.items():
                rows = [_from_status(s) for s in statuses]
                out.setdefault(name, []).append((snap.replica, snap.node, None, rows))
    return out


def _model(
    name: str, config: ModelConfig | None, seen: list[_Seen], gateway: Gateway
) -> ClusterModelRow:
    by_version: dict[int, list[tuple[str, str, VersionRow]]] = {}
    for replica, node, _, listed in seen:
        for v in listed:
            by_version.setdefault(v.version, []).append((replica, node, v))
    versions = [_version(by_version[v]) for v in sorted(by_version, reverse=True)]
    rows = [row for _, _, row, _ in seen if row is not None]
    routing = gateway.routing.get(name)
    labels = dict(routing.labels) if routing is not None else {}
    rates = {v.version: v.requests_per_second for v in versions}
    arms = []
    if routing is not None:
        for arm, weight in routing.split.weights.items():
            number = labels.get(arm, int(arm) if arm.isdigit() else None)
            # An arm's rate is its version's: replicas see versions, not arms.
            arms.append(
                ArmRow(arm, weight, number, rates.get(number, 0.0) if number is not None else 0.0)
            )
    holders = sorted({p.replica for v in versions for p in v.replicas})
    return ClusterModelRow(
        name=name,
        pinned=config.pinned if config is not None else any(r.pinned for r in rows),
        load=config.load if config is not None else "lazy",
        unloaded=bool(rows) and all(r.unloaded for r in rows),
        problem=next((r.problem for r in rows if r.problem is not None), None),
        labels=labels,
        arms=arms,
        shadow=shadow_row(routing, gateway.shadows.get(name, Shadowing())) if routing else None,
        versions=list[VersionRow](versions),
        replicas=holders,
    )


def _version(seen: list[tuple[str, str, VersionRow]]) -> ClusterVersionRow:
    """One version across replicas: the best state any holds it in (or the first failure),
    memory summed where AVAILABLE, rates summed, latency and batch size weighted by rate
    (p99: the worst replica's). Replicas that list it without ever having loaded it (idle in
    START: every replica lists every model) add nothing, so they are left out first: a
    cluster of many replicas and models merges in time proportional to what is loaded."""
    loaded_somewhere = [item for item in seen if _active(item[2])]
    seen = loaded_somewhere or [min(seen, key=lambda item: item[0])]
    best = min(seen, key=lambda item: (STATE_RANK.get(item[2].state, 9), item[0]))[2]
    if best.state == "END":
        best = next((v for _, _, v in seen if v.error_code != "OK"), best)
    rows = [v for _, _, v in seen]
    loaded = [v for v in rows if v.state == "AVAILABLE"]
    memory = [v.memory_bytes for v in loaded if v.memory_bytes is not None]
    idle = [v.last_used_seconds_ago for v in rows if v.last_used_seconds_ago is not None]
    placements = [
        Placement(replica, node, v.state, v.memory_bytes)
        for replica, node, v in sorted(seen, key=lambda item: item[0])
        if v.state in HOLDING
    ]
    values = dict(vars(best))  # a VersionRow's fields (a replica sends plain VersionRows)
    values.update(
        evicted=all(v.evicted for v in rows),
        memory_bytes=sum(memory) if memory else best.memory_bytes,
        memory_measured=all(v.memory_measured for v in loaded) if loaded else best.memory_measured,
        last_used_seconds_ago=min(idle) if idle else None,
        queue_depth=sum(v.queue_depth for v in rows),
        requests_per_second=round(sum(v.requests_per_second for v in rows), 3),
        error_rate=_weighted(rows, "error_rate"),
        p50_ms=_weighted(rows, "p50_ms"),
        p99_ms=max((v.p99_ms for v in rows if v.p99_ms is not None), default=None),
        mean_batch_size=_weighted(rows, "mean_batch_size"),
    )
    return ClusterVersionRow(**values, replicas=placements)


def _active(v: VersionRow) -> bool:
    return v.state != "START" or v.requests_per_second > 0 or v.queue_depth > 0


def _weighted(rows: Iterable[VersionRow], key: str) -> float | None:
    pairs: list[tuple[float, float]] = [
        (value, v.requests_per_second) for v in rows if (value := getattr(v, key)) is not None
    ]
    if not pairs:
        return None
    total = sum(rate for _, rate in pairs)
    if total <= 0:
        return round(sum(value for value, _ in pairs) / len(pairs), 3)
    return round(sum(value * rate for value, rate in pairs) / total, 3)


def _from_status(s: VersionStatus) -> VersionRow:
    """A version as a replica's snapshot reports it (no traffic figures: it did not answer)."""
    return VersionRow(
        version=s.version,
        state=s.state,
        error_code=s.error_code,
        error_message=s.error_message,
        evicted=False,
        memory_bytes=s.memory_bytes,
        memory_measured=s.memory_measured,
        last_used_seconds_ago=None,
        load_seconds=None,
        queue_depth=0,
        requests_per_second=0.0,
        error_rate=None,
        p50_ms=None,
        p99_ms=None,
        mean_batch_size=None,
    )


def _replica(reading: Reading, gateway: Gateway) -> ReplicaRow:
    snap = reading.snapshot
    resident = [
        f"{name}:{s.version}"
        for name, statuses in sorted(snap.models.items())
        for s in statuses
        if s.state == "AVAILABLE"
    ]
    hits = gateway.served.get((snap.replica, True), 0)
    misses = gateway.served.get((snap.replica, False), 0)
    rate = 0.0
    if reading.overview is not None:
        rate = sum(v.requests_per_second for m in reading.overview.models for v in m.versions)
    return ReplicaRow(
        replica=snap.replica,
        node=snap.node,
        state="up" if reading.overview is not None else "unreachable",
        message=reading.error or "",
        memory_used_bytes=snap.used_bytes,
        memory_budget_bytes=snap.budget_bytes,
        models=resident,
        inflight=gateway.inflight.get(snap.replica, 0),
        requests=hits + misses,
        misses=misses,
        requests_per_second=round(rate, 3),
    )


def busiest(overview: Overview, count: int) -> list[str]:
    """The ``count`` models with the most requests over the last minute, cluster-wide."""
    totals = {m.name: sum(v.requests_per_second for v in m.versions) for m in overview.models}
    ranked = sorted((n for n, t in totals.items() if t > 0), key=lambda n: (-totals[n], n))
    return ranked[:count]
