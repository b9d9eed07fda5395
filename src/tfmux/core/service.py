"""The one API every transport calls: resolve, lease, validate, run, report."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfmux.config import MODEL_NAME_RE, BatchingConfig, ModelConfig, TrafficConfig
from tfmux.core.batching import Gone
from tfmux.core.events import Event
from tfmux.core.lifecycle import Lease, State
from tfmux.core.manager import ModelManager
from tfmux.core.observer import NullObserver, Observer
from tfmux.core.runner import ModelRunner
from tfmux.core.service_reads import ServiceReads
from tfmux.core.shadow import ShadowRunner
from tfmux.core.status import HistoryReport, Overview, StatusBoard
from tfmux.core.traffic import Routing, available
from tfmux.core.validation import validate_inputs
from tfmux.errors import ErrorKind, ServingError, invalid_argument, not_found
from tfmux.types import (
    DEFAULT_SIGNATURE,
    InferenceResult,
    ModelRef,
    SignatureSpec,
    VersionStatus,
)

MODEL_THREAD_NICENESS = 10
MAX_RUN_TIME = 60.0  # seconds a model call may run before its callers get DEADLINE_EXCEEDED
Inputs = Mapping[str, np.ndarray]
InputDecoder = Callable[[SignatureSpec], Inputs]


@dataclass(frozen=True)
class Management:
    """Who may load, unload and reconfigure models, and where new models may come from."""

    enabled: bool = True
    admin_token: str | None = None  # when set, calls must carry "Bearer <token>"
    repositories: tuple[Path, ...] = ()  # a model folder here may be loaded by name
    disabled_reason: str = "model management is disabled on this server (--no-management)"

    def authorize(self, authorization: str | None) -> None:
        if not self.enabled:
            raise ServingError(ErrorKind.PERMISSION_DENIED, self.disabled_reason)
        if self.admin_token is None:
            return
        expected = f"Bearer {self.admin_token}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise ServingError(
                ErrorKind.UNAUTHENTICATED,
                "management calls need the header 'Authorization: Bearer <admin token>'",
            )

    def check_path(self, config: ModelConfig, current: Path | None) -> None:
        """PERMISSION_DENIED unless ``config`` reads the model's current base path or a
        folder directly inside a configured repository."""
        path = config.base_path.resolve()
        if path == current or any(path.parent == root.resolve() for root in self.repositories):
            return
        raise ServingError(
            ErrorKind.PERMISSION_DENIED,
            f"model {config.name}: base path {config.base_path} is neither the model's current "
            "one nor a folder of a configured model repository",
        )

    def discover(self, name: str) -> ModelConfig | None:
        """A model not yet configured, found by name in a configured repository."""
        if not MODEL_NAME_RE.match(name):
            raise invalid_argument(f"model name '{name}' must match {MODEL_NAME_RE.pattern}")
        for root in self.repositories:
            if (root / name).is_dir():
                return ModelConfig(name=name, base_path=root / name)
        return None


class LoadFailed(ServingError):
    """A load request that was allowed and found its model, but left no version AVAILABLE
    (the kind is the load error's; transports may report it differently, as Triton does)."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    signatures: Mapping[str, SignatureSpec]


class ServingService(ServiceReads):
    """Transport-neutral serving API. Coroutines run on the server's event loop; model code
    runs in a bounded thread pool, never on the loop. Reads of models and traffic for the
    transports: ServiceReads (core/service_reads.py)."""

    def __init__(
        self,
        manager: ModelManager,
        inference_threads: int = 4,
        observer: Observer | None = None,
        batching: BatchingConfig | None = None,
        request_timeout: float | None = None,
        management: Management | None = None,
        max_run_time: float | None = MAX_RUN_TIME,
    ) -> None:
        self.manager: ModelManager = manager
        self._observer = observer or NullObserver()
        # Batches run at a lower OS priority than the event loop, so arrivals are read and
        # queued while a batch runs (the next batch fills); requests that are not batched gain
        # nothing from waiting and run at normal priority (batching off, REST MLP, 32 conns:
        # ~910 req/s with lowered priority vs ~1,380 without, in the same benchmark).
        self._batch_pool = ThreadPoolExecutor(
            inference_threads, thread_name_prefix="tfmux-batch", initializer=_yield_to_the_loop
        )
        self._pool = ThreadPoolExecutor(inference_threads, thread_name_prefix="tfmux-infer")
        # Management calls block (loads, drains): owned here, not left in the loop's default
        # executor, so shutdown never waits on one.
        self._manage_pool = ThreadPoolExecutor(4, thread_name_prefix="tfmux-manage")
        self._batching = batching or BatchingConfig()
        self._request_timeout = request_timeout
        self.management = management or Management()
        self._shadows = ShadowRunner(self._shadow_call, self._observer)
        # With batching off a version may run up to half the pool's threads at once: a hung
        # model can never take them all.
        unbatched = max(1, inference_threads // 2)
        self._runner = ModelRunner(
            self._pool,
            self._batch_pool,
            self._batching_for,
            self._observer,
            max_run_time,
            unbatched,
        )

    def _batching_for(self, name: str) -> BatchingConfig:
        try:
            own = self.manager.get(name).config.batching
        except ServingError:
            return self._batching
        return self._batching if own is None else own

    async def stop_shadows(self) -> None:
        """Cancel shadow runs still going (before ``close``)."""
        await self._shadows.close()

    def close(self, timeout: float | None = None) -> bool:
        """Wait for running inferences, then unload every model. With ``timeout`` (seconds),
        calls still running then are abandoned (see ``ModelManager.close``) and their threads
        are not waited for. Returns whether everything ended cleanly."""
        pools = (self._batch_pool, self._pool, self._manage_pool)
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        clean = self.manager.close(timeout)
        if clean:
            for pool in pools[:2]:
                pool.shutdown(wait=True)
        return clean

    def abandon_requests(self) -> None:
        """Answer every request still queued or running UNAVAILABLE (the grace period of a
        shutdown is over), so front ends can send that answer before they close."""
        error = ServingError(ErrorKind.UNAVAILABLE, "the server is shutting down")
        for served in self.manager.models():
            for mv in list(served.versions.values()):
                for batcher in list(mv.batchers.values()):
                    batcher.abandon(error)

    async def _manage(self, call: Callable[..., object], *args: object) -> None:
        await asyncio.get_running_loop().run_in_executor(self._manage_pool, call, *args)

    async def infer(
        self,
        ref: ModelRef,
        inputs: Inputs | InputDecoder,
        *,
        signature_name: str = "",
        output_names: Sequence[str] | None = None,
        method: str = "predict",
        method_name: str | None = None,
        deadline: float | None = None,
        gone: Gone | None = None,
    ) -> InferenceResult:
        """Run one request against the version ``ref`` names.

        ``inputs`` is either the tensors, or a decoder that builds them once the signature is
        known (for formats such as JSON whose values carry no dtype). ``method_name``, when
        given, is the signature method the request needs (classify / regress). ``method``
        labels the request in metrics. ``deadline`` (``time.monotonic()`` seconds, capped by
        the server's request timeout) bounds the wait for a lazy load and in the batch queue.
        ``gone`` says whether the client went away; its request is then dropped before it runs.
        """
        started = time.perf_counter()
        if self._request_timeout is not None:
            default = time.monotonic() + self._request_timeout
            deadline = default if deadline is None else min(deadline, default)
        version = ""
        error: str | None = None
        route = self.manager.traffic.route(ref)
        try:
            lease = None
            if deadline is None or deadline > time.monotonic():  # a past one fails in _lease
                lease = self.manager.try_lease(route.ref)
            with lease or await self._lease(route.ref, deadline) as lease:
                version = str(lease.version)
                result = await self._run(
                    lease, inputs, signature_name, output_names, method_name, deadline, gone
                )
            route.settle(ref.name, result, self._observer)
            if route.shadow is not None:
                self._shadows.submit(route.shadow, result)
            return result
        except ServingError as exc:
            error = exc.kind.value
            raise
        except asyncio.CancelledError:
            error = ErrorKind.CANCELLED.value
            raise
        except Exception:
            error = ErrorKind.INTERNAL.value
            raise
        finally:
            seconds = time.perf_counter() - started
            self._observer.request_done(route.ref.name, version, method, seconds, error)

    async def _run(
        self,
        lease: Lease,
        inputs: Inputs | InputDecoder,
        signature_name: str,
        output_names: Sequence[str] | None,
        method_name: str | None,
        deadline: float | None,
        gone: Gone | None = None,
    ) -> InferenceResult:
        signature = signature_of(lease, signature_name or DEFAULT_SIGNATURE)
        if method_name is not None and signature.method_name != method_name:
            raise invalid_argument(
                f"signature '{signature.name}' has method {signature.method_name}, "
                f"but this request needs {method_name}"
            )
        tensors = validate_inputs(signature, inputs(signature) if callable(inputs) else inputs)
        wanted = list(output_names) if output_names else None
        for name in wanted or ():
            if name not in signature.outputs:
                raise invalid_argument(
                    f"output '{name}' is not an output of signature '{signature.name}' "
                    f"(outputs: {', '.join(sorted(signature.outputs))})"
                )
        outputs = await self._runner.run(lease, signature, tensors, wanted, deadline, gone)
        return InferenceResult(lease.name, lease.version, signature, outputs, tensors)

    async def _shadow_call(self, ref: ModelRef, primary: InferenceResult) -> InferenceResult:
        """The mirrored request: the primary's inputs, signature and outputs."""
        with await self.manager.lease(ref) as lease:
            return await self._run(
                lease, primary.inputs, primary.signature.name, list(primary.outputs), None, None
            )

    async def _lease(self, ref: ModelRef, deadline: float | None) -> Lease:
        if deadline is None:
            return await self.manager.lease(ref)
        try:
            return await asyncio.wait_for(
                self.manager.lease(ref), max(deadline - time.monotonic(), 0)
            )
        except TimeoutError:
            raise ServingError(
                ErrorKind.DEADLINE_EXCEEDED, f"deadline exceeded waiting for model {ref.name}"
            ) from None

    async def metadata(self, ref: ModelRef) -> ModelMetadata:
        """Signatures of the version ``ref`` names (loads a lazy model)."""
        with await self.manager.lease(self.manager.traffic.route(ref).ref) as lease:
            return ModelMetadata(lease.name, lease.version, lease.model.signatures)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self.manager.statuses(name, version)

    # -- management ------------------------------------------------------------------------

    async def load_model(self, name: str, authorization: str | None = None) -> None:
        """Load (or reload) a model and wait. A model not yet served is looked for in the
        configured repositories (never at a path a client sends). Raises LoadFailed, with the
        load error, if no version could be made AVAILABLE."""
        self.management.authorize(authorization)
        try:
            self.manager.get(name)
        except ServingError:
            config = self.management.discover(name)
            if config is None:
                raise not_found(
                    f"model {name} is not configured and not in any repository"
                ) from None
            with contextlib.suppress(ValueError):  # a concurrent load added it first
                self.manager.add_model(config)
        await self._manage(self.manager.load_model, name)
        try:
            statuses = self.manager.statuses(name)
        except ServingError as exc:  # no version on disk at all
            raise LoadFailed(exc.kind, f"failed to load model {name}: {exc.message}") from None
        if not any(s.state == "AVAILABLE" for s in statuses):
            failed = [s for s in statuses if s.error_code != "OK"]
            code = failed[0].error_code if failed else ErrorKind.UNAVAILABLE.value
            kind = ErrorKind.__members__.get(code, ErrorKind.UNKNOWN)
            detail = failed[0].error_message if failed else "no version is available"
            raise LoadFailed(kind, f"failed to load model {name}: {detail}")

    async def unload_model(self, name: str, authorization: str | None = None) -> None:
        """Unload every version of a model, after its in-flight requests have finished."""
        self.management.authorize(authorization)
        await self._manage(self.manager.unload_model, name)

    async def reconfigure(
        self, configs: list[ModelConfig], authorization: str | None = None
    ) -> None:
        """Serve exactly these models (TF Serving's HandleReloadConfigRequest). Each base
        path must be one the server already serves that model from, or a model folder of a
        configured repository: a client never makes the server read a path of its choosing."""
        self.management.authorize(authorization)
        served = {m.config.name: m.config.base_path for m in self.manager.models()}
        for config in configs:
            self.management.check_path(config, served.get(config.name))
        await self._manage(self.manager.reconfigure, configs)

    def set_traffic(
        self,
        name: str,
        labels: dict[str, int] | None = None,
        traffic: TrafficConfig | None = None,
        allow_unavailable: bool = False,
        authorization: str | None = None,
    ) -> Routing:
        """Move labels and/or replace the split and shadow of a model, atomically."""
        self.management.authorize(authorization)
        served = self.manager.get(name)
        versions = available(mv.status() for mv in list(served.versions.values()))
        return self.manager.traffic.update(name, labels, traffic, versions, allow_unavailable)

    def repository_index(self) -> list[tuple[str, VersionStatus | None]]:
        """Every configured model with each served version's status (None: no version)."""
        index: list[tuple[str, VersionStatus | None]] = []
        for served in sorted(self.manager.models(), key=lambda m: m.config.name):
            statuses: list[VersionStatus | None] = [
                mv.status() for _, mv in sorted(served.versions.items())
            ]
            index.extend((served.config.name, s) for s in statuses or [None])
        return index

    def ready(self) -> bool:
        """Every eagerly loaded version has finished loading (successfully or not)."""
        return not any(
            served.config.load == "eager" and mv.state is State.LOADING
            for served in self.manager.models()
            for mv in served.versions.values()
        )

    # -- status: the read API of the dashboard, scripts and alerting ------------------------

    status_board: StatusBoard | None = None  # set by the server when status is on

    def overview(self) -> Overview:
        """Every model and version: state, memory, traffic, routing; recent events."""
        board = self._board()
        return board.overview(self.management.enabled, self.management.admin_token is not None)

    def history(self, models: Sequence[str] = (), busiest: int = 5) -> HistoryReport:
        """The bounded time series: overall, the ``busiest`` models' and those of ``models``."""
        return self._board().report(models, busiest)

    def events(self, after: int = 0) -> list[Event]:
        """Recent lifecycle events newer than the event numbered ``after``, oldest first."""
        return self._board().events.after(after)

    def _board(self) -> StatusBoard:
        if self.status_board is None:
            raise ServingError(ErrorKind.UNAVAILABLE, "status is not kept on this server")
        return self.status_board


def _yield_to_the_loop() -> None:
    """Run model threads at a lower OS priority than the event loop, so on a busy core
    requests are read and queued (and batches fill) before more model work runs."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MODEL_THREAD_NICENESS)


def signature_of(lease: Lease, name: str) -> SignatureSpec:
    signature = lease.model.signatures.get(name)
    if signature is None:
        available = ", ".join(sorted(lease.model.signatures)) or "none"
        raise invalid_argument(
            f'Serving signature name: "{name}" not found in signature def '
            f"(model {lease.name} version {lease.version} has: {available})"
        )
    return signature


__all__ = [
    "InputDecoder",
    "Inputs",
    "LoadFailed",
    "Management",
    "ModelMetadata",
    "ServingService",
]
