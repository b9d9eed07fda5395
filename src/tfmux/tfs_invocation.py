"""TF Serving's flag values (``tfs_flags.parse_flags``) mapped onto tfmux's ServerConfig.

``invocation(values, environ)`` returns the config plus the startup notes: flags accepted
without effect here, and where tfmux's behaviour is the nearest to TF Serving's rather than the
same. The mapping of each flag is documented in docs/tf-serving-migration.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfmux.config import (
    ConfigError,
    ModelConfig,
    ServerConfig,
    models_from_tfs_message,
    parse_size,
)
from tfmux.tfs_files import batching_settings, monitoring_settings, tls_settings
from tfmux.tfs_flags import FlagError

INT32_MAX = 2**31 - 1  # TF Serving's gRPC message size limit (SetMaxMessageSize)
# The official image's entrypoint: these defaults when no model flag is given.
IMAGE_DEFAULTS = {"port": 8500, "rest_api_port": 8501}
_NO_EFFECT = {
    "rest_api_num_threads": "REST requests are read on one event loop; models run on "
    "--tfmux_inference_threads threads",
    "grpc_max_threads": "gRPC calls are read on one event loop; models run on "
    "--tfmux_inference_threads threads",
    "num_unload_threads": "unloads run in the background without a pool",
    "flush_filesystem_caches": "tfmux does not flush filesystem caches",
    "load_retry_interval_micros": "tfmux does not retry failed loads",
    "remove_unused_fields_from_bundle_metagraph": "tfmux keeps only signatures, not the graph",
    "enable_profiler": "tfmux has no profiler service",
    "skip_initialize_tpu": "tfmux has no TPU support",
}
_MESSAGE_SIZE_KEYS = ("grpc.max_receive_message_length", "grpc.max_send_message_length")


@dataclass
class Invocation:
    """What a TF Serving command line asks of tfmux."""

    config: ServerConfig
    notes: list[str] = field(default_factory=list)
    private_dir: tempfile.TemporaryDirectory[str] | None = None  # PEM files of the SSL config

    def close(self) -> None:
        if self.private_dir is not None:
            self.private_dir.cleanup()
            self.private_dir = None


def invocation(values: Mapping[str, Any], environ: Mapping[str, str]) -> Invocation:
    """The ServerConfig for TF Serving's flag ``values`` (FlagError names what is wrong)."""
    values = dict(values)
    notes: list[str] = []
    settings: dict[str, Any] = {"host": values.get("tfmux_host", "0.0.0.0")}
    load = values.get("tfmux_load", "eager")
    if load not in ("eager", "lazy"):
        raise FlagError(f"--tfmux_load={load}: expected eager or lazy")
    models = _models(values, environ, load, notes)
    settings.update(_ports(values))
    settings.update(_polling(values, notes))
    settings["batching"] = batching_settings(values, notes)
    settings.update(_threads(values, notes))
    settings.update(monitoring_settings(values, notes))
    settings.update(_channel_arguments(values.get("grpc_channel_arguments", "")))
    settings.update(_extras(values, environ))
    settings.update(_gpu(values, notes))
    settings["grpc_health_service"] = bool(values.get("enable_grpc_healthcheck_service"))
    _warmup(values)
    for name, why in _NO_EFFECT.items():
        if name in values:
            notes.append(f"--{name} is accepted but has no effect: {why}")
    if "allow_version_labels_for_unavailable_models" in values:
        notes.append(
            "--allow_version_labels_for_unavailable_models: tfmux always lets a config file's "
            "labels name versions that are not available yet"
        )
    private_dir = None
    if values.get("ssl_config_file"):
        if "tls_cert_file" not in ServerConfig.model_fields:
            raise FlagError("--ssl_config_file: this tfmux build has no TLS support yet")
        private_dir = tempfile.TemporaryDirectory(prefix="tfmux-tls-")
    try:
        if private_dir is not None:
            ssl_file = Path(values["ssl_config_file"])
            settings.update(tls_settings(ssl_file, Path(private_dir.name)))
        config = ServerConfig(**settings, models=models)
    except Exception as exc:
        if private_dir is not None:
            private_dir.cleanup()
        if isinstance(exc, FlagError):
            raise
        raise FlagError(f"invalid settings: {exc}") from None
    return Invocation(config, notes, private_dir)


def _models(
    values: dict[str, Any], environ: Mapping[str, str], load: str, notes: list[str]
) -> list[ModelConfig]:
    config_file = values.get("model_config_file")
    if config_file:
        for name in ("model_name", "model_base_path"):
            if name in values:
                notes.append(f"--{name} is ignored: --model_config_file names the models")
        return _config_file_models(Path(config_file), load)
    if not values.get("model_base_path"):
        if "model_name" in values:
            raise FlagError("--model_base_path is required with --model_name")
        name = environ.get("MODEL_NAME") or "model"
        base = Path(environ.get("MODEL_BASE_PATH") or "/models") / name
        values.update({k: v for k, v in IMAGE_DEFAULTS.items() if k not in values})
        values["model_name"], values["model_base_path"] = name, str(base)
        notes.append(
            f"no model flags: serving {name} from {base} ($MODEL_NAME, $MODEL_BASE_PATH), "
            "on ports 8500 and 8501 unless given, as TF Serving's image does"
        )
    fields: dict[str, Any] = {
        "name": values.get("model_name") or "default",
        "base_path": Path(values["model_base_path"]).resolve(),
        "load": load,
    }
    try:
        return [ModelConfig(**fields)]
    except ValueError as exc:
        raise FlagError(f"--model_name / --model_base_path: {exc}") from None


def _config_file_models(path: Path, load: str) -> list[ModelConfig]:
    """The models of a ModelServerConfig file; a file that does not parse stops the server
    with TF Serving's words (``Error parsing text-format ...``)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), message)
    except OSError as exc:
        raise FlagError(f"cannot read --model_config_file {path}: {exc.strerror}") from None
    except text_format.ParseError as exc:
        raise FlagError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig in {path}: {exc}"
        ) from None
    try:
        return models_from_tfs_message(message, path.parent, load)
    except ConfigError as exc:
        raise FlagError(f"{path}: {exc}") from None


def _ports(values: Mapping[str, Any]) -> dict[str, Any]:
    grpc_port, http_port = values.get("port", 8500), values.get("rest_api_port", 0)
    socket_path = values.get("grpc_socket_path") or None
    for name, port in (("port", grpc_port), ("rest_api_port", http_port)):
        if not 0 <= port <= 65535:
            raise FlagError(f"--{name}={port}: a port is 0 to 65535")
    if grpc_port == 0 and socket_path is None:
        raise FlagError("At least one of --port or --grpc_socket_path must be set")
    if http_port and http_port == grpc_port:
        raise FlagError(f"--rest_api_port={http_port} cannot be the same as --port")
    return {
        "grpc_port": grpc_port,
        "grpc_tcp_enabled": grpc_port != 0,
        "grpc_socket_path": Path(socket_path).resolve() if socket_path else None,
        "http_port": http_port,
        "http_enabled": http_port != 0,
    }


def _polling(values: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in ("file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds"):
        if values.get(name, 0) < 0:
            raise FlagError(
                f"--{name}={values[name]}: negative values (TF Serving's testing "
                "mode) are not supported"
            )
    settings["poll_interval_seconds"] = float(values.get("file_system_poll_wait_seconds", 1))
    config_poll = values.get("model_config_file_poll_wait_seconds", 0)
    if config_poll and not values.get("model_config_file"):
        notes.append("--model_config_file_poll_wait_seconds is ignored without --model_config_file")
    elif values.get("model_config_file"):
        settings["model_config_file"] = Path(values["model_config_file"]).resolve()
        settings["model_config_poll_seconds"] = float(config_poll)
    return settings


def _threads(values: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    both = values.get("tensorflow_session_parallelism", 0)
    intra = values.get("tensorflow_intra_op_parallelism", 0) or both
    inter = values.get("tensorflow_inter_op_parallelism", 0) or both
    settings: dict[str, Any] = {
        "tf_intra_op_threads": intra or None,
        "tf_inter_op_threads": inter or None,
        "max_concurrent_loads": max(1, values.get("num_load_threads", 0)),
    }
    if values.get("rest_api_timeout_in_ms"):
        settings["request_timeout_ms"] = values["rest_api_timeout_in_ms"]
    if values.get("max_num_load_retries", 0) != 0:
        raise FlagError(
            f"--max_num_load_retries={values['max_num_load_retries']} is not supported by "
            "tfmux: a failed load is not retried (`tfmux load NAME` or a new version retries)"
        )
    if values.get("num_request_iterations_for_warmup", 0) not in (0, 1):
        raise FlagError("--num_request_iterations_for_warmup: tfmux replays each record once")
    tags = {t.strip() for t in values.get("saved_model_tags", "serve").split(",") if t.strip()}
    if tags - {"serve"}:
        raise FlagError("--saved_model_tags: tfmux loads the 'serve' meta graph only")
    return settings


def _warmup(values: Mapping[str, Any]) -> None:
    if values.get("enable_model_warmup", True) is False:
        raise FlagError(
            "--enable_model_warmup=false is not supported by tfmux: a version's "
            "assets.extra/tf_serving_warmup_requests is always replayed before it serves"
        )


def _channel_arguments(text: str) -> dict[str, Any]:
    """``--grpc_channel_arguments``: the message size limits (TF Serving's default: 2 GiB)."""
    sizes: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise FlagError(f"--grpc_channel_arguments: {item!r} is not KEY=VALUE")
        if key not in _MESSAGE_SIZE_KEYS:
            raise FlagError(
                f"--grpc_channel_arguments: {key} is not supported by tfmux (supported: "
                f"{', '.join(_MESSAGE_SIZE_KEYS)})"
            )
        try:
            sizes[key] = int(value)
        except ValueError:
            raise FlagError(f"--grpc_channel_arguments: {key} needs an integer") from None
    limits = {INT32_MAX if v < 0 else v for v in sizes.values()}
    if len(limits) > 1:
        raise FlagError(
            "--grpc_channel_arguments: tfmux has one gRPC message limit for both directions; "
            "give grpc.max_receive_message_length and grpc.max_send_message_length one value"
        )
    return {"max_grpc_message_bytes": limits.pop() if limits else INT32_MAX}


def _extras(values: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    simple = {
        "tfmux_management": "management",
        "tfmux_inference_threads": "inference_threads",
        "tfmux_grpc_implementation": "grpc_implementation",
        "tfmux_log_level": "log_level",
        "tfmux_onednn": "onednn",
    }
    settings.update({key: values[flag] for flag, key in simple.items() if flag in values})
    token = values.get("tfmux_admin_token") or environ.get("TFMUX_ADMIN_TOKEN")
    if token:
        settings["admin_token"] = token
    try:
        if "tfmux_memory_budget" in values:
            settings["memory_budget_bytes"] = parse_size(values["tfmux_memory_budget"])
        if "tfmux_max_body_size" in values:
            settings["max_body_bytes"] = parse_size(values["tfmux_max_body_size"])
        if "tfmux_gpu_memory_limit" in values:
            mib = max(1, parse_size(values["tfmux_gpu_memory_limit"]) // 2**20)
            settings["gpu_memory_limit_mb"] = mib
    except ConfigError as exc:
        raise FlagError(str(exc)) from None
    return settings


def _gpu(values: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """``--per_process_gpu_memory_fraction``: 1 maps all memory (growth off); other fractions
    need the GPUs' sizes, which tfmux does not read: refused where there are GPUs."""
    fraction = values.get("per_process_gpu_memory_fraction", 0.0)
    if not 0 <= fraction <= 1:
        raise FlagError("--per_process_gpu_memory_fraction is between 0 and 1")
    if fraction == 0:
        return {}
    if not _has_gpu():
        notes.append(
            f"--per_process_gpu_memory_fraction={fraction} has no effect: this machine has no GPU"
        )
        return {}
    if fraction == 1:
        return {"gpu_memory_growth": False}
    raise FlagError(
        f"--per_process_gpu_memory_fraction={fraction} is not supported by tfmux: cap each "
        "GPU with --tfmux_gpu_memory_limit=SIZE (e.g. 4GiB)"
    )


def _has_gpu() -> bool:
    from tfmux.runtimes import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
