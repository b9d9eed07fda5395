"""The read-only questions transports ask about configured models and traffic, answered by
the service so that no transport reaches the models table behind it (docs/architecture.md).

One mixin serves both services: ServingService reads its ModelManager, the Ray gateway's
ClusterService reads ClusterModels (cluster/views.py), which answers the same calls from the
gateway's own traffic table and the replicas' snapshots. Every answer and error is the
table's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tfmux.config import ModelConfig
from tfmux.core.routing import Split
from tfmux.core.traffic import Routing, TrafficTable
from tfmux.types import ModelRef


class _Numbered(Protocol):
    @property
    def version(self) -> int: ...


class _Configured(Protocol):
    @property
    def config(self) -> ModelConfig: ...


class ModelsTable(Protocol):
    """What these reads need of a ModelManager (or of the cluster's ClusterModels)."""

    @property
    def traffic(self) -> TrafficTable: ...

    def resolve(self, ref: ModelRef) -> _Numbered: ...

    def models(self) -> Sequence[_Configured]: ...


class ServiceReads:
    """Reads for the transports; the class using it sets ``manager``."""

    manager: ModelsTable

    def resolve_version(self, ref: ModelRef) -> int:
        """The version number ``ref`` names: its own, its label's, or the latest one.
        NOT_FOUND when it names none (an unknown model, label or version)."""
        return self.manager.resolve(ref).version

    def model_configs(self) -> list[ModelConfig]:
        """The configuration of every configured model."""
        return [served.config for served in self.manager.models()]

    def routing(self, name: str) -> Routing | None:
        """A configured model's labels, split and shadow (None: no such model)."""
        return self.manager.traffic.routing(name)

    def alias(self, name: str) -> Split | None:
        """The split of alias ``name``, set in the config file (None: no such alias)."""
        return self.manager.traffic.alias(name)


__all__ = ["ModelsTable", "ServiceReads"]
