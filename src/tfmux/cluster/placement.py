"""Pure placement and routing over replica snapshots: which replica serves a request.

No Ray here: the router (``cluster/router.py``) feeds these functions what Ray tells it
(live replicas, their reported snapshots) and what it did itself (placements in progress,
requests in flight), and sends the request where they say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tfmux.types import VersionStatus

HELD_STATES = ("AVAILABLE", "LOADING")
Action = Literal["resident", "loading", "placing", "place", "spread"]


@dataclass(frozen=True)
class ReplicaSnapshot:
    """What one replica reports about itself: its models' versions, its budget and use."""

    replica: str
    node: str = ""
    seq: int = 0  # increases with every snapshot a replica takes (newest wins)
    budget_bytes: int | None = None  # None: no budget (unbounded)
    used_bytes: int = 0
    models: Mapping[str, tuple[VersionStatus, ...]] = field(default_factory=dict)

    @property
    def free_bytes(self) -> float:
        if self.budget_bytes is None:
            return float("inf")
        return float(max(self.budget_bytes - self.used_bytes, 0))

    def holds(self, model: str, version: int | None = None) -> bool:
        """The model (that version, or any) is AVAILABLE or LOADING here."""
        return any(
            s.state in HELD_STATES and (version is None or s.version == version)
            for s in self.models.get(model, ())
        )

    def available(self, model: str, version: int | None = None) -> bool:
        return any(
            s.state == "AVAILABLE" and (version is None or s.version == version)
            for s in self.models.get(model, ())
        )

    def held(self) -> int:
        """How many models are AVAILABLE or LOADING here."""
        return sum(1 for name in self.models if self.holds(name))

    def model_bytes(self, model: str) -> int:
        return sum(
            s.memory_bytes or 0 for s in self.models.get(model, ()) if s.state == "AVAILABLE"
        )

    def to_wire(self) -> dict[str, Any]:
        """Plain data (Ray's controller passes it on without importing tfmux)."""
        return {
            "replica": self.replica,
            "node": self.node,
            "seq": self.seq,
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "models": {
                name: [
                    [
                        s.version,
                        s.state,
                        s.error_code,
                        s.error_message,
                        s.memory_bytes,
                        s.memory_measured,
                    ]
                    for s in statuses
                ]
                for name, statuses in self.models.items()
            },
        }

    @staticmethod
    def from_wire(doc: Mapping[str, Any]) -> ReplicaSnapshot:
        return ReplicaSnapshot(
            replica=doc["replica"],
            node=doc.get("node", ""),
            seq=doc.get("seq", 0),
            budget_bytes=doc.get("budget_bytes"),
            used_bytes=doc.get("used_bytes", 0),
            models={
                name: tuple(VersionStatus(*row) for row in rows)
                for name, rows in doc.get("models", {}).items()
            },
        )


@dataclass(frozen=True)
class Decision:
    replica: str
    action: Action  # resident: serves it now; loading/placing: will; place/spread: load it there


def choose_replica(
    model: str,
    version: int | None,
    replicas: Sequence[ReplicaSnapshot],
    inflight: Mapping[str, int],
    placing: Mapping[str, Iterable[str]],
    hot_inflight: int,
    may_spread: bool = True,
) -> Decision | None:
    """Where a request for ``model`` (``version``, or the latest) goes; None if no replica.

    1. Replicas where the model is AVAILABLE, then LOADING, then being placed (a placement
       this router made that the replica has not reported yet) hold it: among holders with
       fewer than ``hot_inflight`` requests in flight, the first kind wins, then the least
       busy. A burst of first requests thus waits for one load instead of starting many.
    2. A hot model (every holder has ``hot_inflight`` requests or more in flight, and one of
       them serves it already) spreads: the idlest replica that does not hold it, has room
       for it and is less busy gets a copy. A model still loading does not spread, nor one
       whose router says it has not been hot long enough (``may_spread``).
    3. A model held nowhere is placed on the replica with the most free budget (then the
       least busy, the fewest models held, the name: concurrent choices agree).
    """
    if not replicas:
        return None
    pending = set(placing.get(model, ()))
    rank: dict[Action, int] = {"resident": 0, "loading": 1, "placing": 2}

    def busy(r: ReplicaSnapshot) -> tuple[int, str]:
        return inflight.get(r.replica, 0), r.replica

    def held(r: ReplicaSnapshot) -> Action | None:
        if r.available(model, version):
            return "resident"
        if r.holds(model, version):
            return "loading"
        return "placing" if r.replica in pending else None

    holders = [(r, action) for r in replicas if (action := held(r)) is not None]
    if holders:
        cool = [(r, a) for r, a in holders if inflight.get(r.replica, 0) < hot_inflight]
        if cool:
            best, action = min(cool, key=lambda item: (rank[item[1]], *busy(item[0])))
            return Decision(best.replica, action)
        best, action = min(holders, key=lambda item: busy(item[0]))
        if not may_spread or all(a != "resident" for _, a in holders):
            return Decision(best.replica, action)  # a burst waits for its one load
        size = max((r.model_bytes(model) for r, _ in holders), default=0)
        names = {r.replica for r, _ in holders}
        spare = [
            r
            for r in replicas
            if r.replica not in names
            and r.free_bytes >= size
            and inflight.get(r.replica, 0) < inflight.get(best.replica, 0)
        ]
        if spare:
            return Decision(min(spare, key=busy).replica, "spread")
        return Decision(best.replica, action)
    target = min(
        replicas, key=lambda r: (-r.free_bytes, inflight.get(r.replica, 0), r.held(), r.replica)
    )
    return Decision(target.replica, "place")


def hot(decision: Decision, inflight: Mapping[str, int], hot_inflight: int) -> bool:
    """The replica chosen to hold a model is at the hot mark: the model wants another."""
    return decision.action != "spread" and inflight.get(decision.replica, 0) >= hot_inflight


def merge_statuses(
    model: str, snapshots: Iterable[ReplicaSnapshot]
) -> dict[int, list[tuple[str, VersionStatus]]]:
    """Each version of ``model`` with its status on every replica that lists it."""
    merged: dict[int, list[tuple[str, VersionStatus]]] = {}
    for snap in snapshots:
        for status in snap.models.get(model, ()):
            merged.setdefault(status.version, []).append((snap.replica, status))
    return merged


STATE_RANK = {"AVAILABLE": 0, "LOADING": 1, "UNLOADING": 2, "START": 3, "END": 4}


def cluster_status(per_replica: Sequence[tuple[str, VersionStatus]]) -> VersionStatus:
    """One version's status across replicas: the best state any replica has it in (with
    that replica's memory), or the first failure if none holds it."""
    best = min(per_replica, key=lambda item: (STATE_RANK.get(item[1].state, 9), item[0]))[1]
    if best.state != "END":
        return best
    failed = [s for _, s in per_replica if s.error_code != "OK"]
    return failed[0] if failed else best
