"""Composition root: config → runtimes → manager → service → transports, with one lifecycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tfmux.config import ModelConfig, ServerConfig
from tfmux.config_file_poller import ModelConfigFilePoller
from tfmux.core.manager import ModelLoader, ModelManager
from tfmux.core.observer import Observers
from tfmux.core.poller import RepositoryPoller
from tfmux.core.runtime import LoadedModel
from tfmux.core.sampler import StatusSampler
from tfmux.core.service import Management, ServingService
from tfmux.core.status import StatusBoard
from tfmux.dashboard import dashboard_access
from tfmux.exposure import gate
from tfmux.metrics import CONTENT_TYPE, Metrics
from tfmux.tls import TlsFiles
from tfmux.transports import openapi
from tfmux.transports.admission import AdmissionGate
from tfmux.transports.admission_metrics import AdmissionCollector
from tfmux.transports.grpc_health import GrpcHealth
from tfmux.transports.grpc_server import GrpcServer, Registrar, start_grpc_server
from tfmux.transports.h2.stats import H2Collector, H2Stats
from tfmux.transports.ops_rest import OpsRest
from tfmux.transports.rest import RestApp, Route
from tfmux.transports.rest_server import RestServer, bind, uvicorn_config
from tfmux.transports.status_rest import StatusRest
from tfmux.transports.tfs_grpc import TfServingGrpc
from tfmux.transports.tfs_rest import TfServingRest
from tfmux.transports.traffic_rest import TrafficRest
from tfmux.transports.v2_grpc import KServeGrpc
from tfmux.transports.v2_rest import KServeRest

log = logging.getLogger("tfmux")


def saved_model_loader(server: ServerConfig) -> ModelLoader:
    """The production loader: TensorFlow runtimes, imported on first load; each version is
    warmed up before it is returned (and so before it becomes AVAILABLE)."""
    session = {
        "intra_op_threads": server.tf_intra_op_threads,
        "inter_op_threads": server.tf_inter_op_threads,
        "share_graphs": server.share_graphs,
        "run_timeout_ms": run_timeout_ms(server),
    }

    def load(config: ModelConfig, path: Path) -> LoadedModel:
        from tfmux.runtimes import load_model
        from tfmux.transports.warmup import warm_up

        model = load_model(path, config.runtime, **session)
        try:
            warm_up(model, path, config.name, synthetic=config.warmup == "synthetic")
        except BaseException:
            model.close()
            raise
        return model

    return load


def run_timeout_ms(server: ServerConfig) -> int:
    """TensorFlow's timeout for one session call: past it no request can use the answer."""
    return min(server.max_run_time_ms, server.request_timeout_ms or server.max_run_time_ms)


def configure_tensorflow(server: ServerConfig) -> str:
    """Apply the process-wide TensorFlow settings; returns what was applied."""
    from tfmux.runtimes.tfconfig import TensorFlowOptions, configure_tensorflow

    try:
        return configure_tensorflow(
            TensorFlowOptions(
                server.tf_intra_op_threads,
                server.tf_inter_op_threads,
                server.gpu_memory_growth,
                server.gpu_memory_limit_mb,
            )
        )
    finally:
        # TensorFlow itself is ~300k long-lived Python objects: freeze them out of the cyclic
        # collector so full collections (on the request path, holding the GIL, and at every
        # unload) walk only what came after. Models loaded later stay collectable.
        gc.collect()
        gc.freeze()


class TfmuxServer:
    """Owns every part of a running server. ``start`` then ``stop``, on one event loop."""

    def __init__(
        self,
        config: ServerConfig,
        loader: ModelLoader | None = None,
    ) -> None:
        """``loader`` replaces TensorFlow (tests); without it TensorFlow is configured at start."""
        self._init_server(config, Metrics(config.metrics_histogram_models), loader is None)
        loader = loader or saved_model_loader(config)
        # The status board (dashboard, status API) hears what metrics hear; its sampler owns
        # the bounded history and is started and stopped with the server.
        self.status_board = StatusBoard() if self.dashboard.enabled else None
        observer = Observers(self.metrics, self.status_board) if self.status_board else self.metrics
        self.manager = ModelManager(
            loader,
            config.max_concurrent_loads,
            observer,
            config.memory_budget_bytes,
            eviction_policy=config.eviction_policy,
        )
        self.sampler = StatusSampler(self.status_board) if self.status_board else None
        self.poller = RepositoryPoller(self.manager, config.poll_interval_seconds)
        self.config_poller = _config_file_poller(self.manager, config)
        self.metrics.watch(self.manager)
        if self.status_board is not None:
            self.status_board.watch(self.manager)
        timeout = config.request_timeout_ms / 1000 if config.request_timeout_ms else None
        management = Management(
            self.management_gate.enabled,
            config.admin_token,
            tuple(config.model_repositories),
            self.management_gate.denial,
        )
        self.service = ServingService(
            self.manager,
            config.inference_threads,
            observer,
            config.batching,
            timeout,
            management,
            config.max_run_time_ms / 1000,
        )
        self.service.status_board = self.status_board
        ops = OpsRest(self.service.ready, self.metrics.render, CONTENT_TYPE, config.metrics_path)
        # Every front end: REST routes (first match wins) and gRPC services.
        rest_routes: list[Route] = [
            TfServingRest(self.service).route,
            TrafficRest(self.service).route,
            StatusRest(self.service, self.dashboard).route,
            KServeRest(self.service).route,
            openapi.OpenApiRest(self.service, config.admin_token is not None).route,
            ops.route,
        ]
        self.grpc_registrars: list[Registrar] = [
            TfServingGrpc(self.service).register,
            KServeGrpc(self.service).register,
        ]
        if config.grpc_health_service:
            self.grpc_registrars.append(GrpcHealth(self.service.ready).register)
        self.rest_app = RestApp(rest_routes, config.max_body_bytes)

    def _init_server(self, config: ServerConfig, metrics: Metrics, uses_tensorflow: bool) -> None:
        """What every server has, whatever serves its models (this class, or the cluster
        gateway, which has no local manager): the fields ``start`` and ``stop`` read, set in
        one place so a new one cannot be forgotten by either. Status parts start as None."""
        self.config = config
        self._uses_tensorflow = uses_tensorflow
        self.runtime_report = ""
        self.metrics = metrics
        self.dashboard = dashboard_access(config.host, config.dashboard, config.admin_token)
        self.status_board: StatusBoard | None = None
        self.sampler: StatusSampler | None = None
        self.config_poller: ModelConfigFilePoller | None = None
        self.h2_stats = H2Stats()  # what the gRPC port's HTTP/2 limits did, in /metrics
        self.metrics.registry.register(H2Collector(self.h2_stats))
        self.metrics.registry.register(AdmissionCollector(self._admission_gates))
        self.management_gate = gate(
            "model management", config.management, config.host, config.admin_token, "management"
        )
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._grpc: GrpcServer | None = None
        self._http: RestServer | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Add the configured models (eager loads begin) and open the ports."""
        tls = self._tls()
        if self._uses_tensorflow:
            loop = asyncio.get_running_loop()
            self.runtime_report = await loop.run_in_executor(
                None, configure_tensorflow, self.config
            )
            log.info("%s", self.runtime_report)
        if self.management_gate.warning:
            log.warning("%s", self.management_gate.warning)
        for model in self.config.models:
            self.manager.add_model(model)
        self.manager.traffic.set_aliases(self.config.aliases)
        if self.config.http_enabled:
            await self._start_http(tls)
        if self.grpc_registrars:
            self._grpc, self.grpc_port = await start_grpc_server(
                self.config.host,
                self.config.grpc_port,
                self.config.max_grpc_message_bytes,
                self.grpc_registrars,
                self.config.grpc_implementation,
                self.config.h2,
                self.h2_stats,
                tls=tls,
                tcp=self.config.grpc_tcp_enabled,
                unix_path=self.config.grpc_socket_path,
                admission=self.config.admission,
            )
        if self.config.poll_interval_seconds > 0:
            self.poller.start()
        if self.config_poller is not None:
            self.config_poller.start()
        if self.sampler is not None:
            self.sampler.start()

    async def _start_http(self, tls: TlsFiles | None) -> None:
        sock = bind(self.config.host, self.config.http_port)
        self.http_port = sock.getsockname()[1]
        settings = uvicorn_config(self.rest_app, self.config, tls)
        self._http = RestServer(settings, self.config.admission)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # raises what stopped it
                raise RuntimeError("the REST server stopped while starting")
            await asyncio.sleep(0.01)

    def _admission_gates(self) -> dict[str, AdmissionGate | None]:
        return {
            "rest": self._http.gate if self._http is not None else None,
            "grpc": getattr(self._grpc, "gate", None),  # tfmux's own server has one
        }

    def _tls(self) -> TlsFiles | None:
        """The TLS files, read once so a bad one stops the start with its name."""
        c = self.config
        tls = TlsFiles.of(c.tls_cert_file, c.tls_key_file, c.tls_client_ca_file)
        if tls is not None:
            tls.context()
            log.info("TLS on both ports%s", " (client certificates required)" * tls.mutual)
        return tls

    async def wait_for_loads(self) -> None:
        """Wait until the eager loads that started with the server have ended."""
        # Awaited on the loop, not in a thread, so a stop during a long load is not held up.
        running = self.manager.loads_running()
        await asyncio.gather(*(asyncio.shield(asyncio.wrap_future(f)) for f in running))

    async def stop(self) -> bool:
        """Stop accepting, finish in-flight requests, then unload every model, within about
        ``shutdown_grace_seconds``: requests still running then are cancelled and the models
        closed under their calls (the session runtime's close cancels them). Returns whether
        everything ended cleanly (no thread left in model code or a load)."""
        grace = self.config.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        # Requests get the grace period less a reserve (up to 1 s): then those still queued or
        # running are answered UNAVAILABLE, the front ends send that, and models are closed.
        reserve = min(1.0, grace / 2)
        drain = grace - reserve
        await self.poller.stop()
        if self.sampler is not None:
            await self.sampler.stop()
        if self.config_poller is not None:
            await self.config_poller.stop()
        if self._http is not None and self._http_task is not None:
            self._http.config.timeout_graceful_shutdown = max(drain + reserve / 2, 0.001)
            self._http.should_exit = True
        stopping: list[asyncio.Future[None]] = []
        if self._http_task is not None:
            stopping.append(self._http_task)
        if self._grpc is not None:
            stopping.append(asyncio.ensure_future(self._grpc.stop(grace=drain + reserve / 2)))
        if stopping:  # both front ends drain at once
            _, pending = await asyncio.wait(stopping, timeout=drain)
            if pending:
                self.service.abandon_requests()
                await asyncio.wait(pending)
            for stopped in stopping:
                stopped.result()
        await self.service.stop_shadows()
        left = max(deadline - time.monotonic(), 0.0)
        clean = await asyncio.get_running_loop().run_in_executor(None, self.service.close, left)
        if not clean:
            log.warning("stopped with model calls or loads still running (grace period over)")
        return clean

    async def run_until_signal(self, on_ready: Callable[[TfmuxServer], None]) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            loads = asyncio.ensure_future(self.wait_for_loads())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait((loads, stopping), return_when=asyncio.FIRST_COMPLETED)
            loads.cancel()
            if not stop.is_set():
                on_ready(self)
            await stopping
            log.info("shutting down: finishing in-flight requests, then unloading models")
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _config_file_poller(
    manager: ModelManager, config: ServerConfig
) -> ModelConfigFilePoller | None:
    """The poller of TF Serving's ``--model_config_file_poll_wait_seconds``, if asked for."""
    if config.model_config_file is None or config.model_config_poll_seconds <= 0:
        return None
    load = config.models[0].load if config.models else "eager"
    return ModelConfigFilePoller(
        manager, config.model_config_file, config.model_config_poll_seconds, load
    )
