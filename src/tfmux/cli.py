"""The ``tfmux`` command: serve models, write the demo models, and list, load and unload the
models of a running server and show or change its traffic."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from tfmux import admin_client as admin
from tfmux import traffic_client as traffic
from tfmux.config import ConfigError, ModelSources, build_config, parse_size
from tfmux.demo import write_demo_models

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def default_cache_dir() -> Path:
    """Where the demo models are generated: $TFMUX_CACHE_DIR, else the user's cache dir."""
    if os.environ.get("TFMUX_CACHE_DIR"):
        return Path(os.environ["TFMUX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tfmux"


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="tfmux")
def main() -> None:
    """tfmux: serve many TensorFlow SavedModels from one process."""


@main.command(context_settings=CONTEXT)
@click.option(
    "--model-repository",
    "repositories",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Serve every subfolder of DIR as a model named after the folder. Repeatable.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="Serve the model whose versions are PATH/<integer version>/. Repeatable.",
)
@click.option(
    "--config",
    "config_files",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="YAML config file: server settings and per-model base_path, version_policy, load.",
)
@click.option(
    "--model-config-file",
    "tfs_config_files",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="TF Serving models.config (protobuf text format).",
)
@click.option(
    "--load",
    type=click.Choice(["eager", "lazy"]),
    default="eager",
    show_default=True,
    help="Default load mode: at startup, or on a model's first request.",
)
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option(
    "--http-port", type=int, default=None, help="REST port (0: any free port).  [default: 8501]"
)
@click.option("--grpc-port", type=int, default=None, help="gRPC port.  [default: 8500]")
@click.option(
    "--max-body-size",
    default=None,
    help="Largest REST request body; larger ones get 413.  [default: 64MiB]",
)
@click.option(
    "--inference-threads", type=int, default=None, help="Threads running models.  [default: 4]"
)
@click.option(
    "--max-concurrent-loads",
    type=int,
    default=None,
    help="Model loads run in parallel.  [default: 2]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log verbosity.  [default: info]",
)
@click.option(
    "--request-timeout-ms",
    type=int,
    default=None,
    help="Default deadline of a request; queued requests past it get DEADLINE_EXCEEDED / 504.",
)
@click.option(
    "--max-run-time-ms",
    type=int,
    default=None,
    help="Longest a model call may run before its requests get DEADLINE_EXCEEDED / 504 and "
    "TensorFlow cancels it.  [default: 60000]",
)
@click.option(
    "--shutdown-grace",
    "shutdown_grace_seconds",
    type=float,
    default=None,
    help="Seconds SIGTERM waits for in-flight requests before abandoning them.  [default: 30]",
)
@click.option(
    "--batching/--no-batching",
    default=None,
    help="Merge concurrent requests to a model into batches.  [default: on]",
)
@click.option("--max-batch-size", type=int, default=None, help="Rows per batch.  [default: 32]")
@click.option(
    "--batch-timeout-micros",
    type=int,
    default=None,
    help="How long a part-full batch may wait for more requests.  [default: 0]",
)
@click.option(
    "--max-queue-size",
    type=int,
    default=None,
    help="Requests that may wait per model; more get RESOURCE_EXHAUSTED / 429.  [default: 1024]",
)
@click.option(
    "--memory-budget",
    default=None,
    help="Memory models may use, e.g. 4GiB: idle models are unloaded to make room.  "
    "[default: no limit]",
)
@click.option(
    "--share-graphs/--no-share-graphs",
    default=None,
    help="Versions with the same graph (other weights) import it once and restore only "
    "their variables; off: every load goes through TensorFlow's v1 loader.  [default: on]",
)
@click.option(
    "--eviction-policy",
    type=click.Choice(["lru", "tinylfu"]),
    default=None,
    help="Which idle model makes room under the memory budget: the least frequently used "
    "(tinylfu) or the least recently used (lru).  [default: tinylfu]",
)
@click.option(
    "--poll-interval",
    "poll_interval_seconds",
    type=float,
    default=None,
    help="Seconds between scans of the model directories for new versions (0: off).  [default: 0]",
)
@click.option(
    "--management/--no-management",
    default=None,
    help="Allow loading, unloading and reconfiguring models through the APIs; --management "
    "also beyond loopback without --admin-token (behind your own authentication).  "
    "[default: on at loopback or with --admin-token, off otherwise]",
)
@click.option(
    "--admin-token",
    envvar="TFMUX_ADMIN_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on management calls ($TFMUX_ADMIN_TOKEN).",
)
@click.option(
    "--tls-cert",
    "tls_cert_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="PEM certificate chain: serve REST (https) and gRPC over TLS. Needs --tls-key.",
)
@click.option(
    "--tls-key",
    "tls_key_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    "tls_client_ca_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="PEM CA certificates: clients must present a certificate they signed (mutual TLS).",
)
@click.option(
    "--http-max-connections",
    type=int,
    default=None,
    help="Open REST connections; past it a few newcomers get 503, the rest wait.  [default: 1000]",
)
@click.option(
    "--http-header-timeout",
    "http_header_timeout_seconds",
    type=float,
    default=None,
    help="Seconds a REST client has to send a request's headers; then 408.  [default: 10]",
)
@click.option(
    "--http-body-timeout",
    "http_body_timeout_seconds",
    type=float,
    default=None,
    help="Seconds a REST request body may pause between reads; then 408.  [default: 30]",
)
@click.option(
    "--http-keep-alive",
    "http_keep_alive_seconds",
    type=float,
    default=None,
    help="Seconds an idle REST connection stays open between requests.  [default: 5]",
)
@click.option(
    "--http-max-header-size",
    default=None,
    help="Largest REST request head (URL and headers); larger ones get 431.  [default: 64KiB]",
)
@click.option(
    "--dashboard/--no-dashboard",
    default=None,
    help="The live dashboard (/dashboard) and status API (/status). [default: on when "
    "listening on loopback; beyond it, on behind the admin token, off without one]",
)
@click.option(
    "--onednn/--no-onednn",
    default=None,
    help="TensorFlow's oneDNN CPU kernels: faster for some models, but memory freed by "
    "unloading a model is then never returned to the OS.  [default: off]",
)
@click.option("--tf-intra-op-threads", type=int, default=None, help="TensorFlow intra-op threads.")
@click.option("--tf-inter-op-threads", type=int, default=None, help="TensorFlow inter-op threads.")
@click.option(
    "--gpu-memory-growth/--no-gpu-memory-growth",
    default=None,
    help="Let GPU memory grow on demand instead of mapping it all at once.  [default: on]",
)
@click.option(
    "--gpu-memory-limit",
    default=None,
    help="Cap the memory TensorFlow uses on each GPU, e.g. 4GiB (overrides memory growth).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the demo models are generated when no model is named.  "
    "[default: $TFMUX_CACHE_DIR or ~/.cache/tfmux]",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="local|ADDRESS",
    help="Serve from tfmux replicas on Ray Serve: 'local' starts a Ray cluster in this "
    "process, an address ('auto', host:port, ray://host:10001) joins one. Needs the 'ray' "
    "extra. Other options apply to every replica (--memory-budget is per replica).",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=None,
    help="tfmux replicas on Ray (with --ray).  [default: 2]",
)
def serve(
    repositories: tuple[Path, ...],
    models: tuple[str, ...],
    config_files: tuple[Path, ...],
    tfs_config_files: tuple[Path, ...],
    load: str,
    cache_dir: Path | None,
    max_body_size: str | None,
    gpu_memory_limit: str | None,
    batching: bool | None,
    max_batch_size: int | None,
    batch_timeout_micros: int | None,
    max_queue_size: int | None,
    memory_budget: str | None,
    ray_address: str | None,
    replicas: int | None,
    http_max_header_size: str | None,
    **overrides: Any,
) -> None:
    """Serve models over TF Serving and KServe V2 APIs (REST and gRPC), with health and metrics.

    With no model source, serves the two embedded demo models (binary, regression).
    """
    sources = ModelSources(
        list(repositories),
        list(models),
        list(config_files),
        list(tfs_config_files),
        load,  # type: ignore[arg-type]
    )
    try:
        if max_body_size is not None:
            overrides["max_body_bytes"] = parse_size(max_body_size)
        if memory_budget is not None:
            overrides["memory_budget_bytes"] = parse_size(memory_budget)
        if http_max_header_size is not None:
            overrides["http_max_header_bytes"] = parse_size(http_max_header_size)
        if gpu_memory_limit is not None:
            overrides["gpu_memory_limit_mb"] = max(1, parse_size(gpu_memory_limit) // 2**20)
        batching_overrides = {
            "enabled": batching,
            "max_batch_size": max_batch_size,
            "batch_timeout_micros": batch_timeout_micros,
            "max_queue_size": max_queue_size,
        }
        if sources.empty():
            demo_root = (cache_dir or default_cache_dir()) / "demo-models"
            write_demo_models(demo_root)
            sources.repositories.append(demo_root)
        config = build_config(sources, overrides, batching_overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if ray_address is not None or replicas is not None:
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if config.onednn else "0"
        _serve_on_ray(config, ray_address or "local", replicas)
        return
    run_server(config)


def run_server(config: Any, notes: Sequence[str] = ()) -> None:
    """Serve ``config`` until SIGINT or SIGTERM; ``notes`` are printed once it is ready."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # oneDNN is chosen when TensorFlow is first imported, which importing the server does.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if config.onednn else "0"
    from tfmux.server import TfmuxServer

    server = TfmuxServer(config)
    try:
        _run(server.run_until_signal(functools.partial(_announce, notes=notes)))
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    _exit_without_stuck_threads()


def _exit_without_stuck_threads() -> None:
    """After shutdown, threads still in model code TensorFlow could not cancel (or in a load)
    would keep the interpreter from exiting: exit without waiting for them."""
    others = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    deadline = time.monotonic() + 1.0  # idle pool threads are ending on their own
    for thread in others:
        thread.join(max(deadline - time.monotonic(), 0.0))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        logging.getLogger("tfmux").warning(
            "exiting with %d thread(s) still running model code: %s", len(stuck), stuck
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _serve_on_ray(config: Any, address: str, replicas: int | None) -> None:
    try:
        from tfmux.cluster.run import serve_on_ray
        from tfmux.cluster.settings import ClusterConfig
    except ImportError as exc:
        raise click.UsageError(
            f"--ray needs Ray Serve ({exc.name} is missing): pip install 'tfmux[ray]'"
        ) from None
    cluster = ClusterConfig(address=address, **({} if replicas is None else {"replicas": replicas}))
    try:
        serve_on_ray(config, cluster, _announce_cluster, _run)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _announce_cluster(server: Any) -> None:
    config = server.config
    snaps = server.service.snapshots()
    lines = [
        f"tfmux listening on http://{config.host}:{server.http_port} (REST)",
        f"tfmux listening on {config.host}:{server.grpc_port} (gRPC)",
        f"  {len(snaps)} replicas on Ray Serve: {', '.join(s.replica for s in snaps)}",
    ]
    lines += [f"  {m.config.name:<20} {m.config.base_path}" for m in server.manager.models()]
    click.echo("\n".join(lines), err=False)
    sys.stdout.flush()


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def _announce(server: Any, notes: Sequence[str] = ()) -> None:
    config = server.config
    lines = [server.runtime_report] if server.runtime_report else []
    lines += [f"note: {note}" for note in notes]
    scheme = "https" if config.tls_cert_file else "http"
    if server.http_port is not None:
        lines.append(f"tfmux listening on {scheme}://{config.host}:{server.http_port} (REST)")
    tls = " over TLS" if config.tls_cert_file else ""
    if server.grpc_port is not None:
        lines.append(f"tfmux listening on {config.host}:{server.grpc_port} (gRPC{tls})")
    if config.grpc_socket_path is not None:
        lines.append(f"tfmux listening on unix:{config.grpc_socket_path} (gRPC{tls})")
    if server.http_port is not None:
        lines.append(
            f"dashboard: {scheme}://{config.host}:{server.http_port}/dashboard is "
            f"{server.dashboard.reason}"
        )
    for served in server.manager.models():
        statuses = server.manager.statuses(served.config.name) if served.versions else []
        described = ", ".join(f"v{s.version} {s.state}" for s in statuses) or str(served.problem)
        lines.append(f"  {served.config.name:<20} {described}   {served.config.base_path}")
        lines.extend(
            f"      v{s.version}: {s.error_code}: {s.error_message}"
            for s in statuses
            if s.error_code != "OK"
        )
    click.echo("\n".join(lines), err=False)
    sys.stdout.flush()


@main.command(
    "tf-serving",
    context_settings={**CONTEXT, "ignore_unknown_options": True, "help_option_names": []},
)
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
def tf_serving(flags: tuple[str, ...]) -> None:
    """Serve with TF Serving's command line: the same as `tensorflow_model_server FLAGS`.

    \b
    tfmux tf-serving --port=8500 --rest_api_port=8501 --model_name=m --model_base_path=/m
    tfmux tf-serving --help     # every flag, and how tfmux maps it
    """
    from tfmux.tfs_main import main as tfs_main

    tfs_main(list(flags))


@main.command("demo-models", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path))
def demo_models(directory: Path) -> None:
    """Write the embedded demo models (binary: TF2, regression: TF1) into DIRECTORY."""
    for name, path in write_demo_models(directory).items():
        click.echo(f"{name}: {path}")


# -- against a running server ------------------------------------------------------------------


@main.command("models", context_settings=CONTEXT)
@admin.server_options
def models_command(url: str, token: str | None) -> None:
    """List a running server's models, with state and memory.

    One row per model version: its state, what it costs in memory (measured, or ~estimated),
    and why it is not ready, when it is not.
    """
    admin.run(url, token, admin.show_models)


@main.command("load", context_settings=CONTEXT)
@click.argument("name", callback=admin.model_name)
@admin.server_options
def load_command(name: str, url: str, token: str | None) -> None:
    """Load (or reload) a model on a running server, with progress.

    NAME is a configured model or a folder of one of the server's model repositories.
    Exit codes: 1 the load failed, 3 no server at --url, 4 management refused.
    """
    admin.run(url, token, lambda client, console: admin.load(client, console, name))


@main.command("unload", context_settings=CONTEXT)
@click.argument("name", callback=admin.model_name)
@admin.server_options
def unload_command(name: str, url: str, token: str | None) -> None:
    """Unload a model on a running server.

    Every version of NAME is unloaded once its in-flight requests finish; the model stays
    configured, and `tfmux load NAME` brings it back.
    """
    admin.run(url, token, lambda client, console: admin.unload(client, console, name))


@main.command("traffic", context_settings=CONTEXT)
@click.argument("name", callback=admin.model_name)
@traffic.change_options
@admin.server_options
def traffic_command(name: str, url: str, token: str | None, **change: Any) -> None:
    """Show, or change, how a running server spreads NAME's requests.

    Without options: NAME's labels, split and shadow, with figures from the server's /metrics
    (since it started): requests routed to each arm, requests, errors and p50/p99 latency of
    each version, and how often the shadow agreed with the primary. With options, the change
    is applied at once (atomically) and then shown. Changes need --token when the server has
    an admin token. Exit codes: 1 the server refused the change, 3 no server at --url,
    4 management refused.

    \b
    tfmux traffic fraud --label canary=3 --split stable=90,canary=10
    tfmux traffic fraud --shadow canary:100
    tfmux traffic fraud --split stable=100 --no-shadow
    """
    admin.run(url, token, traffic.command(name, **change))
