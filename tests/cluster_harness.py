"""A real local Ray cluster (several raylets on this machine, loopback only) and a tfmux
gateway on 127.0.0.1:0 in a background thread, for the cluster tests and benchmark."""

from __future__ import annotations

import os
from typing import Any

from tfmux.cluster.run import deploy, gateway_for
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ServerConfig

from .harness import BackgroundLoop

MiB = 1024 * 1024
# Every raylet on 127.0.0.1 (Ray otherwise binds the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_cluster(nodes: int, cpus: float = 1, object_store: int = 80 * MiB) -> Any:
    """A head and ``nodes - 1`` workers, each with ``cpus`` CPUs; this process connects."""
    import ray
    from ray.cluster_utils import Cluster

    args = {"num_cpus": cpus, "object_store_memory": object_store}
    for attempt in range(3):
        cluster = Cluster()
        try:
            # Ray waits a fixed 30 s for a raylet; on a machine this busy that can run out.
            cluster.add_node(**args, include_dashboard=False)
            for _ in range(nodes - 1):
                cluster.add_node(**args)
            cluster.wait_for_nodes()
            break
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def stop_cluster(cluster: Any) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


class BackgroundGateway(BackgroundLoop):
    """Replicas deployed as a Serve app, the gateway on its own event loop thread."""

    timeout = 180.0

    def __init__(self, config: ServerConfig, cluster: ClusterConfig) -> None:
        super().__init__()
        self.config = config.model_copy(update={"http_port": 0, "grpc_port": 0})
        self.cluster = cluster

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def __enter__(self) -> BackgroundGateway:
        handle = deploy(self.config, self.cluster)
        self.server = gateway_for(self.config, self.cluster, handle)
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        from ray import serve

        try:
            self._stop()
        finally:
            serve.delete(self.cluster.app_name)
