"""The gateway: tfmux's REST and gRPC front ends over the cluster service.

A TfmuxServer whose service is a ClusterService: the same transports, ports, limits and
lifecycle, with models served by replicas instead of an in-process manager.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tfmux.cluster.frontends import ServedByHeader, served_by_trailer
from tfmux.cluster.metrics import ClusterCollector
from tfmux.cluster.registry import router_for
from tfmux.cluster.service import CONTROL_TIMEOUT, ClusterService
from tfmux.config import ServerConfig
from tfmux.core.service import Management
from tfmux.errors import ServingError
from tfmux.metrics import CONTENT_TYPE, Metrics
from tfmux.server import TfmuxServer
from tfmux.transports import openapi
from tfmux.transports.ops_rest import OpsRest
from tfmux.transports.rest import RestApp
from tfmux.transports.status_rest import StatusRest
from tfmux.transports.tfs_grpc import TfServingGrpc
from tfmux.transports.tfs_rest import TfServingRest
from tfmux.transports.traffic_rest import TrafficRest
from tfmux.transports.v2_grpc import KServeGrpc
from tfmux.transports.v2_rest import KServeRest

log = logging.getLogger("tfmux.cluster")


class _NoPoller:
    """Replicas poll their repositories themselves."""

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class ClusterGateway(TfmuxServer):
    """``start`` connects to the replicas (through ``handle``), then opens the ports."""

    def __init__(self, config: ServerConfig, handle: Any, deployment: str) -> None:
        # Not TfmuxServer.__init__ (no local manager, no TensorFlow): its shared first step.
        # No status board nor sampler here: the status API asks the replicas (cluster/status).
        self._init_server(
            config.model_copy(update={"poll_interval_seconds": 0.0}), Metrics(), False
        )
        self._handle = handle
        self._deployment = deployment
        self.poller = _NoPoller()  # type: ignore[assignment]

    async def start(self) -> None:
        # The first call through the handle makes Serve build the router in this process.
        first = await self._handle.snapshot.remote()
        loop = asyncio.get_running_loop()
        router = await loop.run_in_executor(None, router_for, self._deployment)
        router.observe(first.snapshot)
        config = self.config
        timeout = config.request_timeout_ms / 1000 if config.request_timeout_ms else None
        management = Management(
            self.management_gate.enabled,
            config.admin_token,
            tuple(config.model_repositories),
            self.management_gate.denial,
        )
        cluster = ClusterService(self._handle, router, management, self.metrics, timeout)
        self.metrics.registry.register(ClusterCollector(cluster))
        # Duck-typed: the transports and TfmuxServer call what ServingService offers.
        service: Any = cluster
        self.service = service
        self.manager = cluster.manager  # type: ignore[assignment]
        ops = OpsRest(service.ready, self.metrics.render, CONTENT_TYPE)
        self.rest_app = ServedByHeader(  # type: ignore[assignment]
            RestApp(
                [
                    TfServingRest(service).route,
                    TrafficRest(service).route,
                    StatusRest(service, self.dashboard).route,
                    KServeRest(service).route,
                    openapi.OpenApiRest(service, config.admin_token is not None).route,
                    ops.route,
                ],
                config.max_body_bytes,
            )
        )
        self.grpc_registrars = [
            served_by_trailer(TfServingGrpc(service).register),
            served_by_trailer(KServeGrpc(service).register),
        ]
        await super().start()

    async def wait_for_loads(self) -> None:
        """Eager models are placed now, one after another, each where the policy puts it
        (the replica with the most free budget once the previous one is counted)."""
        service: ClusterService = self.service  # type: ignore[assignment]
        for model in self.config.models:
            if model.load != "eager":
                continue
            try:
                await asyncio.wait_for(service.place(model.name), CONTROL_TIMEOUT)
            except (ServingError, TimeoutError) as exc:
                log.warning("model %s did not load: %s", model.name, exc)
