"""Ray Serve entry points: ``serve run tfmux.ray:app`` or ``serve run tfmux.ray:build
config=models.yaml replicas=3`` (and the same in a ``serve deploy`` config file).

The application is a gateway deployment (tfmux's REST and gRPC front ends on the configured
ports) in front of N tfmux replicas, each with its own memory budget. Arguments are tfmux's
settings (as in a ``--config`` file: ``http_port``, ``memory_budget_bytes``, ``batching``,
``models``, ...) plus the cluster's (``replicas``, ``autoscaling``, ``replica_cpus``,
``hot_inflight``, ...) and the model sources ``config`` (a YAML file), ``model_repositories``
(folders of models) and ``models_config_file`` (TF Serving's models.config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfmux.cluster.deploy import gateway_app
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ModelSources, ServerConfig, build_config

_CLUSTER_KEYS = set(ClusterConfig.model_fields) - {"address", "object_store_bytes"}


def build(args: dict[str, Any]) -> Any:
    """A Serve application from ``serve run`` / ``serve deploy`` arguments."""
    return gateway_app(*settings(args))


def settings(args: dict[str, Any]) -> tuple[ServerConfig, ClusterConfig, float]:
    """tfmux's settings, the cluster's and the gateway's CPUs from the builder's args."""
    args = dict(args)
    cluster = ClusterConfig(**{k: args.pop(k) for k in list(args) if k in _CLUSTER_KEYS})
    gateway_cpus = float(args.pop("gateway_cpus", 0.0))
    sources = ModelSources(
        repositories=[Path(p) for p in _listed(args.pop("model_repositories", []))],
        config_files=[Path(p) for p in _listed(args.pop("config", []))],
        tfs_config_files=[Path(p) for p in _listed(args.pop("models_config_file", []))],
        load=args.pop("load", "lazy"),
    )
    if sources.empty() and not args.get("models"):
        from tfmux.cli import default_cache_dir
        from tfmux.demo import write_demo_models

        root = default_cache_dir() / "demo-models"
        write_demo_models(root)
        sources.repositories.append(root)
    extra_models = args.pop("models", [])
    config = build_config(sources, args)
    if extra_models:
        from tfmux.config import ModelConfig

        models = [*config.models, *(ModelConfig(**m) for m in extra_models)]
        config = config.model_copy(update={"models": models})
    return config, cluster, gateway_cpus


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def __getattr__(name: str) -> Any:
    """``tfmux.ray:app``: the application with default settings (demo models, 2 replicas),
    built when Serve asks for it."""
    if name == "app":
        return build({})
    raise AttributeError(name)
