"""Cluster settings: where Ray is, how many replicas, and how Serve scales and routes them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MiB = 1024 * 1024
ROUTER_CLASS = "tfmux.cluster.router.ResidencyRouter"


class ClusterConfig(BaseModel):
    """How tfmux runs on Ray Serve (``tfmux serve --ray``, or ``tfmux.ray:build`` args)."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(
        default="local",
        description="Ray cluster to join ('auto', 'ray://host:10001', host:port), or 'local' "
        "to start a one-node cluster inside the tfmux process",
    )
    replicas: int = Field(default=2, ge=1, description="tfmux replicas (without autoscaling)")
    autoscaling: dict[str, Any] | None = Field(
        default=None,
        description="Ray Serve autoscaling_config for the replicas (min_replicas, max_replicas, "
        "target_ongoing_requests, upscale_delay_s, ...); replaces 'replicas'",
    )
    replica_cpus: float = Field(default=1.0, gt=0, description="CPUs Ray reserves per replica")
    replica_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each replica needs"
    )
    max_ongoing_requests: int = Field(default=256, ge=1)
    hot_inflight: int = Field(
        default=8,
        ge=1,
        description="Requests in flight on every replica holding a model at which the model "
        "is given one more replica",
    )
    spread_after_s: float = Field(
        default=2.0,
        ge=0,
        description="How long a model must stay hot before it is given one more replica",
    )
    routing_stats_period_s: float = Field(
        default=1.0, gt=0, description="How often each replica reports what it holds"
    )
    app_name: str = "tfmux"
    object_store_bytes: int = Field(
        default=150 * MiB, gt=0, description="Object store of a 'local' cluster"
    )

    def deployment_options(self) -> dict[str, Any]:
        """Options of the replica deployment (``Deployment.options``)."""
        from ray.serve.config import RequestRouterConfig

        router: dict[str, Any] = {
            "request_router_class": ROUTER_CLASS,  # imported where handles live
            "request_router_kwargs": {
                "hot_inflight": self.hot_inflight,
                "spread_after_s": self.spread_after_s,
            },
            "request_routing_stats_period_s": self.routing_stats_period_s,
            "request_routing_stats_timeout_s": max(self.routing_stats_period_s * 5, 5.0),
        }
        actor: dict[str, Any] = {"num_cpus": self.replica_cpus}
        if self.replica_resources:
            actor["resources"] = dict(self.replica_resources)
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "request_router_config": RequestRouterConfig(**router),
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.replicas
        return options
