"""The Ray Serve deployments: tfmux replicas, and the gateway as an ingress deployment."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import ray
from ray import serve

from tfmux.cluster.replica import Done, Forwarded, ReplicaCore, ReplicaStatus
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ModelConfig, ServerConfig
from tfmux.core.status import HistoryReport

log = logging.getLogger("tfmux.cluster")
REPLICA_DEPLOYMENT = "TfmuxReplica"


class TfmuxReplica:
    """A Serve replica running a tfmux core. The ``tfmux_*`` keyword arguments are the
    router's (which model or replica a call is for); the replica itself ignores them."""

    def __init__(self, config: ServerConfig) -> None:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1" if config.onednn else "0")
        context = serve.get_replica_context()
        node = ray.get_runtime_context().get_node_id()
        self.core = ReplicaCore(config, context.replica_id.unique_id, node)

    async def infer(self, request: Forwarded, **_: Any) -> Any:
        return await self.core.infer(request)

    async def metadata(self, name: str, version: int | None, **_: Any) -> Done:
        return await self.core.metadata(name, version)

    async def load_model(self, name: str, **_: Any) -> Done:
        return await self.core.load_model(name)

    async def allow(self, name: str, **_: Any) -> Done:
        return await self.core.allow(name)

    async def unload_model(self, name: str, **_: Any) -> Done:
        return await self.core.unload_model(name)

    async def reconfigure(self, configs: list[ModelConfig], **_: Any) -> Done:
        return await self.core.reconfigure(configs)

    async def status_report(self, after: int, **_: Any) -> ReplicaStatus:
        return await self.core.status_report(after)

    async def history_report(self, models: list[str], **_: Any) -> HistoryReport:
        return await self.core.history_report(models)

    def snapshot(self, **_: Any) -> Done:
        return Done(self.core.snapshot())

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve calls this periodically; routers read it as ``routing_stats``."""
        return self.core.snapshot()

    def __del__(self) -> None:
        core = getattr(self, "core", None)
        if core is not None:
            core.close()


def replica_app(config: ServerConfig, cluster: ClusterConfig) -> Any:
    """The replica deployment bound to its settings (a Serve application on its own)."""
    deployment: Any = serve.deployment(TfmuxReplica, name=REPLICA_DEPLOYMENT)
    return deployment.options(**cluster.deployment_options()).bind(config)


class TfmuxGateway:
    """Ingress deployment for ``serve run`` / ``serve deploy``: runs tfmux's REST and gRPC
    front ends on the configured host and ports, in a thread with its own event loop."""

    def __init__(self, replicas: Any, config: ServerConfig, app_name: str) -> None:
        from tfmux.cluster.gateway import ClusterGateway

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.gateway = ClusterGateway(config, replicas, f"{app_name}#{REPLICA_DEPLOYMENT}")
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self._loop).result(300)

    def ports(self) -> dict[str, int | None]:
        return {"http": self.gateway.http_port, "grpc": self.gateway.grpc_port}

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the gateway's event loop stopped")

    def __del__(self) -> None:
        gateway = getattr(self, "gateway", None)
        if gateway is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(gateway.stop(), self._loop).result(60)
            self._loop.call_soon_threadsafe(self._loop.stop)


def gateway_app(config: ServerConfig, cluster: ClusterConfig, gateway_cpus: float = 0.0) -> Any:
    """Gateway plus replicas: the application ``tfmux.ray:build`` returns."""
    gateway: Any = serve.deployment(
        TfmuxGateway, name="TfmuxGateway", num_replicas=1, max_ongoing_requests=16
    )
    gateway = gateway.options(ray_actor_options={"num_cpus": gateway_cpus})
    return gateway.bind(replica_app(config, cluster), config, cluster.app_name)
