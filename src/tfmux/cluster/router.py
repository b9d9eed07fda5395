"""Ray Serve request router for tfmux replicas: residency routing by the pure policy.

Serve builds one router per deployment handle, in the handle's process (the gateway), and
calls ``choose_replicas`` for each request with the live replicas. A request names its model
(``tfmux_model``) or one replica (``tfmux_replica``: status and management calls) in its
keyword arguments. Replicas report snapshots through ``record_routing_stats``; management
answers carry fresher ones (``observe``). The newest snapshot of each replica wins.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from tfmux.cluster import registry
from tfmux.cluster.placement import Decision, ReplicaSnapshot, choose_replica, hot

PLACING_SECONDS = 10.0  # a placement counts as held until the replica reports the model
SUSPECT_SECONDS = 10.0  # a replica Ray could not reach gets no requests for this long
RECENT_REQUESTS = 4096  # finished requests whose replica is remembered (to blame a failure)


class ResidencyRouter(RequestRouter):
    """Sends each request where ``choose_replica`` says. Thread-safe: Serve runs it on its
    router loop, the gateway reads its views from another thread."""

    def initialize_state(
        self, hot_inflight: int = 8, spread_after_s: float = 2.0, **_: Any
    ) -> None:
        self._lock = threading.Lock()
        self.hot_inflight = hot_inflight
        self.spread_after_s = spread_after_s
        self._hot_since: dict[str, float] = {}  # model -> since when its holders are hot
        self._suspect: dict[str, float] = {}  # replica -> until when it is avoided
        self._recent: OrderedDict[str, str] = OrderedDict()  # request id -> replica (done)
        self._observed: dict[str, ReplicaSnapshot] = {}
        self._placing: dict[str, dict[str, float]] = {}  # model -> replica -> until
        self._inflight: dict[str, int] = {}
        self._assigned: dict[str, str] = {}  # internal request id -> replica
        self.decisions: dict[str, int] = {}  # action -> count, for metrics
        key = f"{self._deployment_id.app_name}#{self._deployment_id.name}"
        registry.register(key, self)

    # -- views -------------------------------------------------------------------------------

    def replica_ids(self) -> list[str]:
        return sorted(r.replica_id.unique_id for r in list(self._replicas.values()))

    def snapshots(self, replicas: list[RunningReplica] | None = None) -> list[ReplicaSnapshot]:
        """The newest snapshot of each live replica (an empty one if it has not reported)."""
        live = list(self._replicas.values()) if replicas is None else replicas
        out = []
        with self._lock:
            for replica in live:
                rid = replica.replica_id.unique_id
                stats = replica.routing_stats or {}
                snap = (
                    ReplicaSnapshot.from_wire(stats)
                    if stats.get("replica") == rid
                    else ReplicaSnapshot(rid, replica.node_id)
                )
                seen = self._observed.get(rid)
                out.append(seen if seen is not None and seen.seq > snap.seq else snap)
        return out

    def inflight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._inflight)

    def observe(self, snapshot: dict[str, Any]) -> None:
        """A snapshot a replica returned with an answer (fresher than its last report)."""
        snap = ReplicaSnapshot.from_wire(snapshot)
        with self._lock:
            seen = self._observed.get(snap.replica)
            if seen is None or snap.seq > seen.seq:
                self._observed[snap.replica] = snap

    def forget_placement(self, model: str, replica: str) -> None:
        with self._lock:
            self._placing.get(model, {}).pop(replica, None)

    # -- Serve's hooks -----------------------------------------------------------------------

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        kwargs = pending_request.kwargs if pending_request is not None else {}
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        target = kwargs.get("tfmux_replica")
        if target is not None:  # a call for one replica: only that one (retried until live)
            return [[by_id[target]]] if target in by_id else []
        model = kwargs.get("tfmux_model")
        now = time.monotonic()
        with self._lock:
            live = [
                r
                for r in candidate_replicas
                if self._suspect.get(r.replica_id.unique_id, 0.0) <= now
            ]
        candidate_replicas = live or candidate_replicas  # all suspect: try them anyway
        if model is None:
            return [candidate_replicas]
        decision = self.decide(model, kwargs.get("tfmux_version"), candidate_replicas)
        if decision is None:
            return []
        if pending_request is not None:
            self._assign(pending_request.metadata.internal_request_id, decision.replica)
        return [[by_id[decision.replica]]]

    def decide(
        self, model: str, version: int | None, candidates: list[RunningReplica]
    ) -> Decision | None:
        snaps = self.snapshots(candidates)
        now = time.monotonic()
        with self._lock:
            placing = {
                m: [r for r, until in where.items() if until > now]
                for m, where in self._placing.items()
            }
            since = self._hot_since.get(model)
            may_spread = since is not None and now - since >= self.spread_after_s
            decision = choose_replica(
                model, version, snaps, self._inflight, placing, self.hot_inflight, may_spread
            )
            if decision is None:
                return None
            if hot(decision, self._inflight, self.hot_inflight):
                self._hot_since.setdefault(model, now)
            else:  # cooled down, or just spread: the clock starts again
                self._hot_since.pop(model, None)
            if decision.action in ("place", "spread"):
                self._placing.setdefault(model, {})[decision.replica] = now + PLACING_SECONDS
            self.decisions[decision.action] = self.decisions.get(decision.action, 0) + 1
        return decision

    def _assign(self, request_id: str, replica: str) -> None:
        with self._lock:
            previous = self._assigned.get(request_id)
            if previous is not None:  # a retry (the first choice was full or died)
                self._inflight[previous] = max(self._inflight.get(previous, 1) - 1, 0)
            self._assigned[request_id] = replica
            self._inflight[replica] = self._inflight.get(replica, 0) + 1

    def on_request_completed(self, replica_id: Any, internal_request_id: str) -> None:
        with self._lock:
            replica = self._assigned.pop(internal_request_id, None)
            if replica is not None:
                self._inflight[replica] = max(self._inflight.get(replica, 1) - 1, 0)
                self._recent[internal_request_id] = replica
                while len(self._recent) > RECENT_REQUESTS:
                    self._recent.popitem(last=False)

    def suspect_request(self, internal_request_id: str) -> None:
        """The request failed in Ray (not in tfmux): avoid its replica for a while. A replica
        whose node is gone can linger, failing fast, before Ray reports it unavailable."""
        with self._lock:
            replica = self._recent.pop(internal_request_id, None) or self._assigned.get(
                internal_request_id
            )
            if replica is not None:
                self._suspect[replica] = time.monotonic() + SUSPECT_SECONDS

    def on_replica_actor_unavailable(self, replica_id: Any) -> None:
        """Ray could not reach the replica (its node may be gone, not yet declared dead):
        route around it for a while, so its models are served elsewhere meanwhile."""
        super().on_replica_actor_unavailable(replica_id)
        with self._lock:
            self._suspect[replica_id.unique_id] = time.monotonic() + SUSPECT_SECONDS
            for where in self._placing.values():
                where.pop(replica_id.unique_id, None)

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        rid = replica_id.unique_id
        with self._lock:
            self._observed.pop(rid, None)
            self._inflight.pop(rid, None)
            for where in self._placing.values():
                where.pop(rid, None)
