"""Server and per-model configuration: YAML files, TF Serving's models.config, CLI sources.

Everything here is validated data; nothing loads models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tfmux.transports.admission import AdmissionLimits
from tfmux.transports.h2.limits import H2Limits

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9_]+$")
MiB = 1024 * 1024


class ConfigError(ValueError):
    """A configuration that cannot be served; the message says what and where."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk to serve: the newest N, all of them, or a given set."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> VersionPolicy:
        """From YAML: ``all``, ``{latest: N}``, ``{all: {}}`` or ``{specific: [..]}``."""
        if isinstance(value, VersionPolicy):
            return value
        if value is None or value == "latest":
            return cls()
        if value == "all":
            return cls(kind="all")
        if isinstance(value, dict) and len(value) == 1:
            ((key, arg),) = value.items()
            if key == "latest":
                try:
                    n = int(arg.get("num_versions", 1) if isinstance(arg, dict) else arg)
                except (TypeError, ValueError):
                    raise ValueError(f"latest needs a number of versions, not {arg!r}") from None
                if n < 1:
                    raise ValueError("latest needs at least 1 version")
                return cls(kind="latest", num_versions=n)
            if key == "all":
                return cls(kind="all")
            if key == "specific":
                items = arg.get("versions", []) if isinstance(arg, dict) else arg
                try:
                    if isinstance(items, str | bytes):
                        raise TypeError(items)
                    versions = tuple(sorted({int(v) for v in items}))
                except (TypeError, ValueError):
                    raise ValueError(f"specific needs a list of versions, not {arg!r}") from None
                if not versions:
                    raise ValueError("specific needs at least one version")
                return cls(kind="specific", versions=versions)
        raise ValueError(
            f"version_policy must be 'all', {{latest: N}} or {{specific: [..]}}, not {value!r}"
        )


class BatchingConfig(BaseModel):
    """Dynamic batching of one model's requests (server-wide defaults, per-model override)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1)
    batch_timeout_micros: int = Field(default=0, ge=0)
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = Field(default=1024, ge=1)
    max_inflight_batches: int = Field(default=1, ge=1)

    @field_validator("allowed_batch_sizes")
    @classmethod
    def _sizes(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in sizes):
            raise ValueError("allowed_batch_sizes must be positive")
        return tuple(sorted(set(sizes)))


class ShadowConfig(BaseModel):
    """Mirror a share of a model's requests to another version (or model, for an alias)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str
    percent: float = Field(default=100.0, ge=0, le=100)


class TrafficConfig(BaseModel):
    """How requests that name only the model are spread: ``split`` maps labels or version
    numbers (or, for an alias, model names) to weights; ``shadow`` mirrors some of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: dict[str, float] = Field(default_factory=dict)
    shadow: ShadowConfig | None = None


class AliasConfig(BaseModel):
    """A public name whose requests go to other models by weight (comparing architectures)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    split: dict[str, float]
    shadow: ShadowConfig | None = None


class ModelConfig(BaseModel):
    """One served model: where its versions live and how to serve them."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    base_path: Path
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    load: Literal["eager", "lazy"] = "eager"
    runtime: Literal["auto", "tf1", "tf2"] = "auto"
    labels: dict[str, int] = Field(default_factory=dict)
    batching: BatchingConfig | None = None  # None: the server's defaults
    pinned: bool = False  # never evicted to make room under the memory budget
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    warmup: Literal["none", "synthetic"] = "none"
    """What runs on a new version before it serves when it has no
    ``assets.extra/tf_serving_warmup_requests`` file (a file, when present, is always
    replayed): ``none``, or ``synthetic``, one batch-1 call of zeros / empty strings per
    signature whose input shapes are known beyond the batch dimension (best effort: a call
    that fails is logged, not fatal)."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not MODEL_NAME_RE.match(name):
            raise ValueError(f"model name {name!r} must match {MODEL_NAME_RE.pattern}")
        return name

    @field_validator("version_policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> VersionPolicy:
        return VersionPolicy.parse(value)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, int]) -> dict[str, int]:
        for label in labels:
            if not LABEL_RE.match(label):
                raise ValueError(f"label {label!r} must match {LABEL_RE.pattern}")
        return labels


class ServerConfig(BaseModel):
    """Server-wide settings plus the models to serve."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    http_port: int = Field(default=8501, ge=0, le=65535)
    grpc_port: int = Field(default=8500, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=64 * MiB, gt=0)
    max_grpc_message_bytes: int = Field(default=256 * MiB, gt=0)
    grpc_implementation: Literal["tfmux", "grpcio"] = Field(
        default="tfmux",
        description="gRPC server: tfmux's own HTTP/2 server (fast), or grpc.aio as a fallback",
    )
    h2: H2Limits = Field(default_factory=H2Limits)  # limits of tfmux's own gRPC server
    inference_threads: int = Field(default=4, ge=1)
    max_concurrent_loads: int = Field(default=2, ge=1)
    request_timeout_ms: int | None = Field(default=None, gt=0)
    # Longest a model call may run: its callers get DEADLINE_EXCEEDED then, and the session
    # runtime's run timeout (the smaller of this and request_timeout_ms) frees its thread.
    max_run_time_ms: int = Field(default=60_000, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)  # SIGTERM to exit, at most
    memory_budget_bytes: int | None = Field(default=None, gt=0)
    eviction_policy: Literal["lru", "tinylfu"] = "tinylfu"  # which idle version makes room
    metrics_histogram_models: int = Field(default=32, ge=0)  # models with own histograms
    share_graphs: bool = True  # versions with the same graph import it once (docs/memory.md)
    poll_interval_seconds: float = Field(default=0.0, ge=0)
    management: bool | None = Field(
        default=None,
        description="load/unload/reconfigure through the APIs: True on, False off, None "
        "automatic (on at loopback or with an admin token, off beyond loopback without one)",
    )
    admin_token: str | None = None
    # TLS on both ports (docs/security.md): PEM certificate chain and key; with a client CA,
    # clients must present a certificate it signed (mutual TLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # The REST port's limits (docs/security.md).
    http_max_connections: int = Field(default=1000, ge=1)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    http_keep_alive_seconds: float = Field(default=5.0, gt=0)
    http_max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    # Request-body bytes past the first MiB of a request, all REST connections together, per
    # second (0: unlimited): huge or endless uploads share it (docs/security.md).
    http_bulk_bytes_per_second: int = Field(default=64 * MiB, ge=0)
    # How both ports admit new connections: refusals past the limit, throttling after abuse.
    admission: AdmissionLimits = Field(default_factory=AdmissionLimits)
    # The dashboard and status API: None (automatic) opens them on loopback and, beyond it,
    # asks for the admin token (off without one); True opens them to everyone; False turns
    # them off.
    dashboard: bool | None = None
    onednn: bool = False  # oneDNN keeps freed model memory from the OS; off, unloads return it
    model_repositories: list[Path] = Field(default_factory=list)  # loadable by name
    tf_intra_op_threads: int | None = Field(default=None, ge=1)
    tf_inter_op_threads: int | None = Field(default=None, ge=1)
    gpu_memory_growth: bool = True
    gpu_memory_limit_mb: int | None = Field(default=None, ge=1)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    aliases: list[AliasConfig] = Field(default_factory=list)
    # TF Serving's command line (tfs_flags.py): either port may be off, gRPC may also listen
    # on a Unix socket, metrics may have one more path, and a models.config may be re-read.
    http_enabled: bool = True
    grpc_tcp_enabled: bool = True
    grpc_socket_path: Path | None = None
    metrics_path: str | None = Field(default=None, pattern=r"^/")
    model_config_file: Path | None = None  # TF Serving models.config re-read when polled
    model_config_poll_seconds: float = Field(default=0.0, ge=0)
    grpc_health_service: bool = False  # gRPC's grpc.health.v1.Health/Check on the gRPC port

    @model_validator(mode="after")
    def _tls_files(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "TLS needs both tls_cert_file (--tls-cert) and tls_key_file (--tls-key)"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "tls_client_ca_file (--tls-client-ca) needs tls_cert_file and tls_key_file"
            )
        return self


@dataclass
class ModelSources:
    """What the command line named: repositories, NAME=PATH pairs and config files."""

    repositories: list[Path] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    config_files: list[Path] = field(default_factory=list)
    tfs_config_files: list[Path] = field(default_factory=list)
    load: Literal["eager", "lazy"] = "eager"

    def empty(self) -> bool:
        return not (self.repositories or self.models or self.config_files or self.tfs_config_files)


def _model(fields: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_pydantic_message(exc)}") from None


def _pydantic_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


def models_from_repository(root: Path, load: str) -> list[ModelConfig]:
    """Every subfolder of ``root`` is a model named after the folder."""
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a directory")
    return [
        _model({"name": d.name, "base_path": d.resolve(), "load": load}, f"repository {root}")
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    ]


def model_from_pair(pair: str, load: str) -> ModelConfig:
    """``NAME=PATH`` from ``--model``."""
    name, sep, path = pair.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--model expects NAME=PATH, got {pair!r}")
    return _model({"name": name, "base_path": Path(path).resolve(), "load": load}, "--model")


def load_yaml_config(path: Path, load: str) -> tuple[dict[str, Any], list[ModelConfig]]:
    """A YAML file: optional ``server:`` settings and ``models:`` (mapping by name or list)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = set(data) - {"server", "models", "aliases"}
    if unknown:
        allowed = "allowed: server, models, aliases"
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)} ({allowed})")
    raw_models = data.get("models") or {}
    if isinstance(raw_models, dict):
        entries = []
        for name, settings in raw_models.items():
            if not isinstance(settings, dict | None):
                raise ConfigError(f"{path}: model {name!r} must be a mapping of settings")
            entries.append({"name": name, **(settings or {})})
    elif isinstance(raw_models, list):
        entries = list(raw_models)
    else:
        raise ConfigError(f"{path}: models must be a mapping or a list")
    models = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: each model must be a mapping of settings, not {entry!r}")
        entry = dict(entry)
        entry.setdefault("load", load)
        if "base_path" in entry:
            entry["base_path"] = (path.parent / str(entry["base_path"])).resolve()
        models.append(_model(entry, f"{path}: model {entry.get('name')!r}"))
    server = data.get("server") or {}
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: server must be a mapping")
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        if isinstance(server.get(key), str):  # relative to the file, as base paths are
            server[key] = (path.parent / server[key]).resolve()
    aliases = data.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(a, dict) for a in aliases.values()):
        raise ConfigError(f"{path}: aliases must map each alias name to its split")
    if aliases:
        server = {**server, "aliases": [{"name": k, **v} for k, v in aliases.items()]}
    return server, models


def load_tfs_config(path: Path, load: str) -> list[ModelConfig]:
    """TF Serving's ``models.config`` (protobuf text format ModelServerConfig)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), message)
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot read TF Serving config {path}: {exc}") from None
    return models_from_tfs_message(message, path.parent, load)


def models_from_tfs_message(message: Any, base_dir: Path, load: str) -> list[ModelConfig]:
    """Models of a ``ModelServerConfig`` proto (also used by HandleReloadConfigRequest)."""
    if message.WhichOneof("config") not in (None, "model_config_list"):
        raise ConfigError("only model_config_list is supported in a TF Serving config")
    models = []
    for cfg in message.model_config_list.config:
        if cfg.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"model {cfg.name!r}: platform {cfg.model_platform!r} unsupported")
        policy = cfg.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            vp = VersionPolicy(kind="all")
        elif which == "specific":
            vp = VersionPolicy.parse({"specific": list(policy.specific.versions)})
        elif which == "latest":
            vp = VersionPolicy.parse({"latest": policy.latest.num_versions or 1})
        else:
            vp = VersionPolicy()
        fields = {
            "name": cfg.name,
            "base_path": (base_dir / cfg.base_path).resolve(),
            "version_policy": vp,
            "load": load,
            "labels": dict(cfg.version_labels),
        }
        models.append(_model(fields, f"TF Serving config model {cfg.name!r}"))
    return models


def build_config(
    sources: ModelSources,
    overrides: dict[str, Any],
    batching_overrides: dict[str, Any] | None = None,
) -> ServerConfig:
    """Merge every model source and the server settings (command line wins over files)."""
    settings: dict[str, Any] = {}
    models: list[ModelConfig] = []
    for path in sources.config_files:
        server, file_models = load_yaml_config(path, sources.load)
        settings.update(server)
        models += file_models
    for path in sources.tfs_config_files:
        models += load_tfs_config(path, sources.load)
    for root in sources.repositories:
        models += models_from_repository(root, sources.load)
    models += [model_from_pair(pair, sources.load) for pair in sources.models]
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ConfigError(f"model {model.name!r} is configured more than once")
        seen.add(model.name)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    batching = {k: v for k, v in (batching_overrides or {}).items() if v is not None}
    if batching:
        settings["batching"] = {**(settings.get("batching") or {}), **batching}
    settings["models"] = models
    settings["model_repositories"] = [root.resolve() for root in sources.repositories]
    try:
        return ServerConfig(**settings)
    except ValidationError as exc:
        raise ConfigError(f"server settings: {_pydantic_message(exc)}") from None


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(text: str) -> int:
    """Bytes from ``64MiB``, ``4GiB``, ``500MB``, ``1048576`` (KiB/MiB are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(f"cannot read size {text!r} (examples: 64MiB, 4GiB, 1000000)")
    number, unit = float(match[1]), (match[2] or "").upper()
    base = unit[:1] if unit != "B" else "B"
    scale = 1024 ** "BKMGT".index(base) if "I" in unit else _UNITS[base]
    return int(number * scale)
