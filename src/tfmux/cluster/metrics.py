"""Prometheus families for the cluster view: replicas, their budgets and what they hold."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tfmux.cluster.service import ClusterService


class ClusterCollector(Collector):
    """Read at scrape time from the router's snapshots and the gateway's counters."""

    def __init__(self, service: ClusterService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snaps = self._service.snapshots()
        inflight = self._service.router.inflight()
        replicas = GaugeMetricFamily("tfmux_cluster_replicas", "Live tfmux replicas.")
        replicas.add_metric([], len(snaps))
        used = GaugeMetricFamily(
            "tfmux_cluster_replica_memory_used_bytes",
            "Memory charged to loaded models on each replica.",
            labels=["replica", "node"],
        )
        budget = GaugeMetricFamily(
            "tfmux_cluster_replica_memory_budget_bytes",
            "Each replica's memory budget (absent: unbounded).",
            labels=["replica"],
        )
        busy = GaugeMetricFamily(
            "tfmux_cluster_replica_inflight",
            "Requests the gateway has in flight on each replica.",
            labels=["replica"],
        )
        state = GaugeMetricFamily(
            "tfmux_cluster_model_version_state",
            "1 for the state each model version is in on each replica.",
            labels=["model", "version", "replica", "state"],
        )
        memory = GaugeMetricFamily(
            "tfmux_cluster_model_memory_bytes",
            "Memory a loaded model version costs on each replica.",
            labels=["model", "version", "replica"],
        )
        for snap in snaps:
            used.add_metric([snap.replica, snap.node], snap.used_bytes)
            if snap.budget_bytes is not None:
                budget.add_metric([snap.replica], snap.budget_bytes)
            busy.add_metric([snap.replica], inflight.get(snap.replica, 0))
            for model, statuses in snap.models.items():
                for s in statuses:
                    state.add_metric([model, str(s.version), snap.replica, s.state], 1)
                    if s.state == "AVAILABLE" and s.memory_bytes is not None:
                        memory.add_metric([model, str(s.version), snap.replica], s.memory_bytes)
        served = CounterMetricFamily(
            "tfmux_cluster_requests",
            "Requests by the replica that served them and whether their model was resident "
            "there when they arrived (hit) or had to be loaded first (miss).",
            labels=["replica", "residency"],
        )
        for (replica, hit), count in sorted(self._service.served.items()):
            served.add_metric([replica, "hit" if hit else "miss"], count)
        decisions = CounterMetricFamily(
            "tfmux_cluster_routing_decisions",
            "Routing decisions: resident, loading, placing (held or being loaded), place (a "
            "model held nowhere), spread (a hot model given one more replica).",
            labels=["action"],
        )
        for action, count in sorted(self._service.router.decisions.items()):
            decisions.add_metric([action], count)
        yield from (replicas, used, budget, busy, state, memory, served, decisions)
