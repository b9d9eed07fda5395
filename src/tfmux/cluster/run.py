"""``tfmux serve --ray``: start or join a Ray cluster, deploy the replicas on Ray Serve and
run the gateway in this process until a signal; then remove what was deployed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from tfmux.cluster.deploy import REPLICA_DEPLOYMENT, replica_app
from tfmux.cluster.gateway import ClusterGateway
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ServerConfig

log = logging.getLogger("tfmux.cluster")


def connect(cluster: ClusterConfig) -> bool:
    """Join the cluster (or start a local one); True if this process started it."""
    if ray.is_initialized():
        return False
    if cluster.address == "local":
        ray.init(
            object_store_memory=cluster.object_store_bytes,
            include_dashboard=False,
            log_to_driver=False,
        )
        return True
    ray.init(address=cluster.address, log_to_driver=False)
    return False


def deploy(config: ServerConfig, cluster: ClusterConfig) -> Any:
    """Deploy the replicas as a Serve application; returns its handle. Serve's own HTTP
    proxies are not needed (the gateway serves), so a Serve started here runs none."""
    serve.start(proxy_location="Disabled")
    return serve.run(
        replica_app(config, cluster), name=cluster.app_name, route_prefix=None, blocking=False
    )


def gateway_for(config: ServerConfig, cluster: ClusterConfig, handle: Any) -> ClusterGateway:
    return ClusterGateway(config, handle, f"{cluster.app_name}#{REPLICA_DEPLOYMENT}")


def serve_on_ray(
    config: ServerConfig,
    cluster: ClusterConfig,
    on_ready: Callable[[Any], None],
    run: Callable[[Any], None] = asyncio.run,
) -> None:
    started = connect(cluster)
    try:
        handle = deploy(config, cluster)
        run(gateway_for(config, cluster, handle).run_until_signal(on_ready))
    finally:
        try:
            serve.delete(cluster.app_name)
            if started:
                serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            if started:
                ray.shutdown()
