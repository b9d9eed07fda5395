"""TF Serving's config files named by its flags, read into tfmux settings: the
BatchingParameters of ``--batching_parameters_file``, the MonitoringConfig of
``--monitoring_config_file`` and the SSLConfig of ``--ssl_config_file``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfmux.tfs_flags import FlagError
from tfmux.tfs_protos_text import ProtoFileError, parse_text_file

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter default
# TF Serving's batching defaults for a field the parameters file leaves unset (TensorFlow's
# SharedBatchScheduler QueueOptions).
TFS_MAX_BATCH_SIZE, TFS_MAX_ENQUEUED_BATCHES = 1000, 10


def batching_settings(values: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """TF Serving's BatchingParameters as tfmux's BatchingConfig (see the migration page)."""
    enabled = bool(values.get("enable_batching", False))
    path: str = values.get("batching_parameters_file") or ""
    if path and not enabled:
        raise FlagError("--batching_parameters_file is set without --enable_batching")
    if not enabled:
        return {"enabled": False}
    params = _read("BatchingParameters", path) if path else None

    def get(name: str, default: int) -> int:
        has = params is not None and params.HasField(name)
        return int(getattr(params, name).value) if has else default

    max_batch_size = get("max_batch_size", TFS_MAX_BATCH_SIZE)
    sizes = tuple(int(s) for s in params.allowed_batch_sizes) if params is not None else ()
    if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != max_batch_size):
        raise FlagError(
            f"{path}: allowed_batch_sizes must increase and end with max_batch_size; last "
            f"entry was {sizes[-1]}; expected {max_batch_size}"
        )
    if params is not None:
        _refuse_batching(params, path)
        if params.HasField("thread_pool_name"):
            notes.append(f"{path}: thread_pool_name has no effect (each model has its batches)")
    return {
        "enabled": True,
        "max_batch_size": max_batch_size,
        "batch_timeout_micros": get("batch_timeout_micros", 0),
        "allowed_batch_sizes": sizes,
        "max_queue_size": get("max_enqueued_batches", TFS_MAX_ENQUEUED_BATCHES) * max_batch_size,
        "max_inflight_batches": get("num_batch_threads", os.cpu_count() or 1),
    }


def _refuse_batching(params: Any, path: str) -> None:
    if params.pad_variable_length_inputs:
        raise FlagError(
            f"{path}: pad_variable_length_inputs is not supported by tfmux: requests whose "
            "shapes differ beyond the batch dimension run in separate batches"
        )
    if params.enable_large_batch_splitting.value or params.HasField("max_execution_batch_size"):
        raise FlagError(
            f"{path}: enable_large_batch_splitting / max_execution_batch_size are not "
            "supported by tfmux: a request larger than max_batch_size runs as its own batch"
        )


def monitoring_settings(values: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    path = values.get("monitoring_config_file")
    if not path:
        return {}
    prometheus = _read("MonitoringConfig", path).prometheus_config
    if not prometheus.enable:
        notes.append(f"{path}: Prometheus is not enabled, but tfmux serves /metrics anyway")
        return {}
    return {"metrics_path": prometheus.path or PROMETHEUS_PATH}


def tls_settings(path: Path, directory: Path) -> dict[str, Any]:
    """TF Serving's SSLConfig as tfmux's TLS files: its PEM texts written into ``directory``
    (private to this user); ``custom_ca`` verifies client certificates when ``client_verify``."""
    ssl = _read("SSLConfig", str(path))
    if not ssl.server_key or not ssl.server_cert:
        raise FlagError(f"{path}: server_key and server_cert are both required")
    if ssl.client_verify and not ssl.custom_ca:
        raise FlagError(f"{path}: client_verify needs custom_ca (the CA of client certificates)")
    directory.chmod(0o700)
    files = {"tls_key_file": ssl.server_key, "tls_cert_file": ssl.server_cert}
    if ssl.client_verify:
        files["tls_client_ca_file"] = ssl.custom_ca
    settings: dict[str, Any] = {}
    for key, text in files.items():
        target = directory / f"{key.removeprefix('tls_').removesuffix('_file')}.pem"
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        settings[key] = target
    return settings


def _read(message: str, path: str) -> Any:
    try:
        return parse_text_file(message, Path(path))
    except ProtoFileError as exc:
        raise FlagError(str(exc)) from None
