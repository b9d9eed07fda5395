"""The gateway's view of the cluster, read from replica snapshots: statuses, the repository
index, label and latest-version resolution, and the configured models (what the transports
read from a ModelManager in single-process tfmux)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tfmux.cluster.placement import ReplicaSnapshot, cluster_status, merge_statuses
from tfmux.config import ModelConfig
from tfmux.core.traffic import TrafficTable
from tfmux.errors import ServingError, not_found
from tfmux.types import ModelRef, VersionStatus

Snapshots = Callable[[], Sequence[ReplicaSnapshot]]


@dataclass(frozen=True)
class Resolved:
    """What ``resolve`` returns: the version a ref names (the transports read ``version``)."""

    name: str
    version: int


@dataclass
class ConfiguredModel:
    """A model the gateway routes for (transports read ``config``)."""

    config: ModelConfig
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    problem: ServingError | None = None


class ClusterModels:
    """The cluster's stand-in for ModelManager on the gateway: configured models, labels and
    splits (a TrafficTable the gateway owns) and versions as the replicas report them."""

    def __init__(self, snapshots: Snapshots) -> None:
        self._snapshots = snapshots
        self._lock = threading.Lock()
        self._models: dict[str, ModelConfig] = {}
        self.traffic = TrafficTable()

    def add_model(self, config: ModelConfig) -> ConfiguredModel:
        with self._lock:
            self._models[config.name] = config
        self.traffic.configure_model(config)
        return ConfiguredModel(config)

    def remove_model(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)
        self.traffic.drop_model(name)

    def models(self) -> list[ConfiguredModel]:
        with self._lock:
            configs = list(self._models.values())
        return [ConfiguredModel(c) for c in configs]

    def get(self, name: str) -> ConfiguredModel:
        with self._lock:
            config = self._models.get(name)
        if config is None:
            raise not_found(f"Could not find any versions of model {name}")
        return ConfiguredModel(config)

    def per_replica(self, name: str) -> dict[int, list[tuple[str, VersionStatus]]]:
        return merge_statuses(name, self._snapshots())

    def statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Each version's best state across replicas, newest first."""
        merged = self.per_replica(name)
        if not merged:
            self.get(name)  # NOT_FOUND for a model the cluster does not serve
            return []
        if version is not None:
            if version not in merged:
                raise not_found(f"Could not find version {version} of model {name}")
            return [cluster_status(merged[version])]
        return [cluster_status(merged[v]) for v in sorted(merged, reverse=True)]

    def resolve(self, ref: ModelRef) -> Resolved:
        """The version a label or ``latest`` names (labels from the gateway's table)."""
        if ref.label is not None:
            return Resolved(ref.name, self.traffic.labelled(ref.name, ref.label))
        if ref.version is not None:
            return Resolved(ref.name, ref.version)
        statuses = self.statuses(ref.name)
        live = [s.version for s in statuses if s.state != "END" or s.error_code == "OK"]
        if not live:
            raise not_found(f"Servable not found for request: {ref.describe()}")
        return Resolved(ref.name, max(live))

    def index(self) -> list[tuple[str, VersionStatus | None]]:
        """The repository index: each version's cluster state, its replicas in the reason and
        its memory summed over the replicas that hold it."""
        snaps = self._snapshots()
        with self._lock:
            names = set(self._models)
        names.update(name for snap in snaps for name in snap.models)
        index: list[tuple[str, VersionStatus | None]] = []
        for name in sorted(names):
            merged = merge_statuses(name, snaps)
            if not merged:
                index.append((name, None))
                continue
            for version in sorted(merged):
                index.append((name, _with_replicas(merged[version])))
        return index


def _with_replicas(per_replica: list[tuple[str, VersionStatus]]) -> VersionStatus:
    status = cluster_status(per_replica)
    holding = [(r, s) for r, s in per_replica if s.state in ("AVAILABLE", "LOADING", "UNLOADING")]
    if not holding or status.error_code != "OK":
        return status
    where = ", ".join(f"{r} {s.state}" for r, s in sorted(holding))
    memory = sum(s.memory_bytes or 0 for _, s in holding if s.state == "AVAILABLE")
    return replace(
        status,
        error_message=f"replicas: {where}",
        memory_bytes=memory or status.memory_bytes,
        memory_measured=all(s.memory_measured for _, s in holding if s.state == "AVAILABLE"),
    )
