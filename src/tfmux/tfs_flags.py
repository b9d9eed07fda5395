"""TF Serving's command line (``tensorflow_model_server --flag=value ...``): the flags, their
syntax, and which of them tfmux refuses.

``parse_flags`` reads an argument list as TensorFlow's flag parser does (``--flag=value``;
booleans also as bare ``--flag``) and also accepts ``--flag value``; ``tfs_invocation`` maps
the values onto tfmux's ServerConfig. Every TF Serving flag is listed here: a flag is either
mapped, accepted with a startup note (it has no effect here), or refused unless given one of
the values that match tfmux's behaviour, with a message naming tfmux's equivalent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class FlagError(ValueError):
    """A command line tfmux cannot honour; the message names the flag."""


@dataclass(frozen=True)
class Flag:
    """One flag: its type, what it means, and (``refused``) why other values are refused."""

    name: str
    kind: type
    help: str
    accepts: tuple[Any, ...] = ()  # for a refused flag: the values that match tfmux
    refused: str = ""  # why any other value is refused, naming tfmux's equivalent
    tfmux: bool = False  # one of tfmux's own flags (listed apart)


def _f(name: str, kind: type, help: str) -> Flag:
    return Flag(name, kind, help)


def _refused(name: str, kind: type, accepts: tuple[Any, ...], why: str) -> Flag:
    return Flag(name, kind, why, accepts, why)


def _x(name: str, kind: type, help: str) -> Flag:
    return Flag(name, kind, help, tfmux=True)


FLAGS: dict[str, Flag] = {
    flag.name: flag
    for flag in [
        # -- TF Serving's flags that map onto tfmux settings -------------------------------
        _f("port", int, "gRPC TCP port (0: no TCP gRPC; needs --grpc_socket_path)"),
        _f("grpc_socket_path", str, "also serve gRPC on this Unix domain socket"),
        _f("rest_api_port", int, "REST port (0, the default: no REST API)"),
        _f("rest_api_num_threads", int, "accepted, no effect (see --tfmux_inference_threads)"),
        _f("rest_api_timeout_in_ms", int, "deadline of requests without their own"),
        _f("enable_batching", bool, "batch concurrent requests per model"),
        _f("batching_parameters_file", str, "BatchingParameters text proto"),
        _f("allow_version_labels_for_unavailable_models", bool, "tfmux always allows it"),
        _f("model_config_file", str, "ModelServerConfig text proto (models.config)"),
        _f("model_config_file_poll_wait_seconds", int, "re-read --model_config_file every N s"),
        _f("model_name", str, "name of the one model (default: default)"),
        _f("model_base_path", str, "folder of the one model's versions"),
        _f("num_load_threads", int, "model loads in parallel (0: one at a time)"),
        _f("num_unload_threads", int, "accepted, no effect (unloads run on their own)"),
        _f("file_system_poll_wait_seconds", int, "scan for new versions every N s (0: once)"),
        _f("flush_filesystem_caches", bool, "accepted, no effect"),
        _f("tensorflow_session_parallelism", int, "intra- and inter-op threads"),
        _f("tensorflow_intra_op_parallelism", int, "TensorFlow intra-op threads"),
        _f("tensorflow_inter_op_parallelism", int, "TensorFlow inter-op threads"),
        _f("ssl_config_file", str, "SSLConfig text proto: TLS on gRPC and REST"),
        _f("per_process_gpu_memory_fraction", float, "0: default; 1: map all GPU memory"),
        _f("saved_model_tags", str, "only 'serve'"),
        _f("grpc_channel_arguments", str, "KEY=VALUE,...: message size limits"),
        _f("grpc_max_threads", int, "accepted, no effect (see --tfmux_inference_threads)"),
        _f("enable_model_warmup", bool, "replay assets.extra/tf_serving_warmup_requests"),
        _f("num_request_iterations_for_warmup", int, "0 or 1 (each record runs once)"),
        _f("monitoring_config_file", str, "MonitoringConfig text proto: Prometheus path"),
        _f("load_retry_interval_micros", int, "accepted, no effect (tfmux does not retry)"),
        _f("max_num_load_retries", int, "0 only: tfmux does not retry failed loads"),
        _f("remove_unused_fields_from_bundle_metagraph", bool, "accepted, no effect"),
        _f("enable_profiler", bool, "accepted, no effect (tfmux has no profiler service)"),
        _f("skip_initialize_tpu", bool, "accepted, no effect (no TPU support)"),
        _f("enable_grpc_healthcheck_service", bool, "gRPC's grpc.health.v1.Health/Check"),
        _f("version", bool, "print the version and exit"),
        # -- TF Serving's flags tfmux refuses (except for the values listed) ---------------
        _refused(
            "rest_api_enable_cors_support",
            bool,
            (False,),
            "tfmux sends no CORS headers; put a proxy that adds them in front",
        ),
        _refused(
            "enable_per_model_batching_parameters",
            bool,
            (False,),
            "per-model batching is set in tfmux's YAML config (models: NAME: batching:), "
            "served with `tfmux serve --config`",
        ),
        _refused(
            "tensorflow_session_config_file",
            str,
            ("",),
            "use --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism and "
            "--tfmux_onednn",
        ),
        _refused(
            "platform_config_file",
            str,
            ("",),
            "tfmux serves TensorFlow SavedModels only; batching: --enable_batching",
        ),
        _refused(
            "use_alts_credentials", bool, (False,), "tfmux has no ALTS; use --ssl_config_file"
        ),
        _refused("prefer_tflite_model", bool, (False,), "tfmux serves no TensorFlow Lite models"),
        _refused("num_tflite_pools", int, (), "tfmux serves no TensorFlow Lite models"),
        _refused(
            "num_tflite_interpreters_per_pool", int, (), "tfmux serves no TensorFlow Lite models"
        ),
        _refused(
            "enable_signature_method_name_check",
            bool,
            (False,),
            "tfmux checks a classify or regress signature's inputs and outputs, as TF Serving "
            "does without this flag",
        ),
        _refused("xla_cpu_compilation_enabled", bool, (False,), "tfmux does not turn on XLA JIT"),
        _refused("xla_gpu_compilation_enabled", bool, (False,), "tfmux does not turn on XLA JIT"),
        _refused(
            "thread_pool_factory_config_file",
            str,
            ("",),
            "use --tfmux_inference_threads (threads running models)",
        ),
        _refused(
            "mixed_precision", str, ("",), "tfmux does not rewrite graphs for mixed precision"
        ),
        _refused(
            "enable_serialization_as_tensor_content",
            bool,
            (False,),
            "tfmux writes outputs in the typed fields (float_val, ...), TF Serving's default",
        ),
        # -- tfmux's own flags --------------------------------------------------------------
        _x("tfmux_host", str, "address REST and gRPC listen on (default 0.0.0.0)"),
        _x("tfmux_memory_budget", str, "memory models may use, e.g. 4GiB (LRU unloading)"),
        _x("tfmux_load", str, "eager (default) or lazy: load a model on its first request"),
        _x("tfmux_admin_token", str, "bearer token for management calls ($TFMUX_ADMIN_TOKEN)"),
        _x("tfmux_management", bool, "allow load/unload/reconfigure through the APIs"),
        _x("tfmux_inference_threads", int, "threads running models (default 4)"),
        _x("tfmux_grpc_implementation", str, "tfmux (default) or grpcio"),
        _x("tfmux_max_body_size", str, "largest REST body, e.g. 64MiB (default)"),
        _x("tfmux_log_level", str, "debug, info (default), warning or error"),
        _x("tfmux_onednn", bool, "TensorFlow's oneDNN CPU kernels (default off)"),
        _x("tfmux_gpu_memory_limit", str, "cap each GPU's memory, e.g. 4GiB"),
    ]
}

_TRUE, _FALSE = ("true", "1"), ("false", "0")


def parse_flags(argv: list[str]) -> dict[str, Any]:
    """Flag values by name, typed; the last of a repeated flag wins (as in TensorFlow)."""
    values: dict[str, Any] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--") or arg == "--":
            raise FlagError(f"unknown argument: {arg} (flags are --name=value)")
        name, has_value, text = arg[2:].partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            raise FlagError(f"unknown flag --{name}" + _did_you_mean(name))
        if not has_value:
            if flag.kind is bool:
                text = args.pop(0) if args and args[0].lower() in _TRUE + _FALSE else "true"
            elif args and not args[0].startswith("--"):
                text = args.pop(0)
            else:
                raise FlagError(f"--{name} needs a value (--{name}=VALUE)")
        values[name] = _convert(flag, text)
    for name, value in values.items():
        flag = FLAGS[name]
        if flag.refused and value not in flag.accepts:
            raise FlagError(
                f"--{name}={_show(value)} is not supported by tfmux: {flag.refused}"
                + (f" (accepted: --{name}={_show(flag.accepts[0])})" if flag.accepts else "")
            )
    return values


def _convert(flag: Flag, text: str) -> Any:
    try:
        if flag.kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        return flag.kind(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(flag.kind, "")
        raise FlagError(f"--{flag.name}={text}: expected {kind}") from None


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, FLAGS, n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


def usage() -> str:
    """The flag list for ``--help``: TF Serving's flags, then tfmux's own."""
    lines = ["usage: tensorflow_model_server [--flag=value ...]", "", "TF Serving's flags:"]
    own = ["", "tfmux's own flags:"]
    refused = ["", "TF Serving flags refused (except for the value shown):"]
    for flag in FLAGS.values():
        if flag.refused:
            accepted = f"={_show(flag.accepts[0])}" if flag.accepts else ""
            refused.append(f"  --{flag.name}{accepted}  ({flag.refused})")
        else:
            (own if flag.tfmux else lines).append(f"  --{flag.name:<44} {flag.help}")
    return "\n".join(lines + own + refused) + "\n\nSee docs/tf-serving-migration.md."
