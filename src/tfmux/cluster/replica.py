"""One cluster replica: a whole tfmux core (ModelManager + ServingService, its own byte
budget) behind plain-data methods the gateway calls through Ray. No Ray import here: the
Serve deployment (``cluster/deploy.py``) wraps this class.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from tfmux.cluster.placement import ReplicaSnapshot
from tfmux.config import ModelConfig, ServerConfig
from tfmux.core.events import Event
from tfmux.core.lifecycle import State
from tfmux.core.manager import ModelLoader, ModelManager
from tfmux.core.sampler import StatusSampler
from tfmux.core.service import LoadFailed, Management, ServingService
from tfmux.core.status import HistoryReport, Overview, StatusBoard
from tfmux.errors import ErrorKind, ServingError
from tfmux.types import InferenceResult, ModelRef

T = TypeVar("T")


@dataclass(frozen=True)
class Forwarded:
    """A request as the gateway forwards it: decoded tensors and a concrete model ref."""

    name: str
    version: int | None
    inputs: dict[str, np.ndarray]
    signature_name: str = ""
    output_names: Sequence[str] | None = None
    method: str = "predict"
    method_name: str | None = None
    timeout: float | None = None  # seconds left when the gateway sent it


@dataclass(frozen=True)
class Answer:
    result: InferenceResult  # without its inputs (the gateway has them)
    replica: str
    hit: bool  # the version was AVAILABLE here when the request arrived
    snapshot: dict[str, Any] | None = None  # after a miss (a load): what the replica holds now


@dataclass(frozen=True)
class Failure:
    """A ServingError crossing the process boundary as data (kind and message kept)."""

    kind: str
    message: str
    load_failed: bool = False

    def error(self) -> ServingError:
        kind = ErrorKind.__members__.get(self.kind, ErrorKind.UNKNOWN)
        return (LoadFailed if self.load_failed else ServingError)(kind, self.message)


@dataclass(frozen=True)
class Done:
    """A management call's outcome: the replica's snapshot right after it."""

    snapshot: dict[str, Any]
    failure: Failure | None = None
    extra: Any = field(default=None)


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's answer to the gateway's status call: its snapshot, its own status board's
    overview and the events newer than the ones the gateway already has."""

    snapshot: dict[str, Any]
    overview: Overview
    events: list[Event]


def replica_config(config: ServerConfig) -> ServerConfig:
    """A replica's settings: every model lazy (the gateway places loads), no ports."""
    lazy = [m.model_copy(update={"load": "lazy"}) for m in config.models]
    return config.model_copy(update={"models": lazy, "aliases": [], "http_port": 0})


class ReplicaCore:
    """A tfmux core with its own budget. Coroutines run on the replica's event loop."""

    def __init__(
        self,
        config: ServerConfig,
        replica: str,
        node: str = "",
        loader: ModelLoader | None = None,
    ) -> None:
        self.replica = replica
        self.node = node
        self.config = replica_config(config)
        if loader is None:
            from tfmux.server import configure_tensorflow, saved_model_loader

            configure_tensorflow(self.config)
            loader = saved_model_loader(self.config)
        # Every replica keeps its own status (history, events) for the gateway's status API.
        self.status_board = StatusBoard()
        self.manager = ModelManager(
            loader,
            self.config.max_concurrent_loads,
            self.status_board,
            self.config.memory_budget_bytes,
        )
        self.status_board.watch(self.manager)
        self._sampler: StatusSampler | None = None
        timeout = self.config.request_timeout_ms
        self.service = ServingService(
            self.manager,
            self.config.inference_threads,
            self.status_board,
            self.config.batching,
            timeout / 1000 if timeout else None,
            # The gateway authorizes management calls; a replica takes them from it only.
            Management(True, None, tuple(self.config.model_repositories)),
        )
        self.service.status_board = self.status_board
        self._seq = itertools.count(1)
        for model in self.config.models:
            self.manager.add_model(model)

    def _sampling(self) -> None:
        """Start the status sampler on the replica's event loop (the first call brings it:
        Serve builds the replica outside the loop its methods run on)."""
        if self._sampler is None:
            self._sampler = StatusSampler(self.status_board)
            self._sampler.start()

    # -- traffic -----------------------------------------------------------------------------

    async def infer(self, request: Forwarded) -> Answer | Failure:
        self._sampling()
        ref = ModelRef(request.name, request.version)
        try:
            hit = self.manager.resolve(ref).state is State.AVAILABLE
        except ServingError:
            hit = False
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        try:
            result = await self.service.infer(
                ref,
                request.inputs,
                signature_name=request.signature_name,
                output_names=request.output_names,
                method=request.method,
                method_name=request.method_name,
                deadline=deadline,
            )
        except ServingError as exc:
            return Failure(exc.kind.value, exc.message)
        result.inputs = {}
        return Answer(result, self.replica, hit, None if hit else self.snapshot())

    async def metadata(self, name: str, version: int | None) -> Done:
        """The signatures (``extra``), loading the model if needed."""
        outcome = await _caught(lambda: self.service.metadata(ModelRef(name, version)))
        if isinstance(outcome, Failure):
            return Done(self.snapshot(), outcome)
        return Done(self.snapshot(), None, outcome)

    # -- state -------------------------------------------------------------------------------

    async def status_report(self, after: int) -> ReplicaStatus:
        """Snapshot, overview and the events numbered above ``after`` (the gateway's cursor)."""
        self._sampling()
        events = self.service.events(after)
        return ReplicaStatus(self.snapshot(), self.service.overview(), events)

    async def history_report(self, models: list[str]) -> HistoryReport:
        """The overall series and those of ``models`` (the gateway picks the busiest)."""
        self._sampling()
        return self.service.history(models, 0)

    def snapshot(self) -> dict[str, Any]:
        models = {}
        for served in self.manager.models():
            try:
                models[served.config.name] = tuple(self.manager.statuses(served.config.name))
            except ServingError:
                models[served.config.name] = ()
        return ReplicaSnapshot(
            replica=self.replica,
            node=self.node,
            seq=next(self._seq),
            budget_bytes=self.manager.budget.limit,
            used_bytes=self.manager.budget.used(),
            models=models,
        ).to_wire()

    # -- management (already authorized by the gateway) ---------------------------------------

    async def load_model(self, name: str) -> Done:
        return await self._done(lambda: self.service.load_model(name))

    async def allow(self, name: str) -> Done:
        """A load request served elsewhere: this replica may load the model on demand again
        (it stays unloaded here until a request needs it)."""

        async def clear() -> None:
            served = self.manager.get(name)
            served.unloaded = False
            for mv in list(served.versions.values()):
                # Unloaded on request, now loadable on demand again: as if evicted.
                if mv.state is State.END and mv.error is None:
                    mv.evicted = True

        return await self._done(clear)

    async def unload_model(self, name: str) -> Done:
        return await self._done(lambda: self.service.unload_model(name))

    async def reconfigure(self, configs: list[ModelConfig]) -> Done:
        lazy = [c.model_copy(update={"load": "lazy"}) for c in configs]
        return await self._done(lambda: self.service.reconfigure(lazy))

    async def _done(self, call: Callable[[], Awaitable[Any]]) -> Done:
        outcome = await _caught(call)
        failure = outcome if isinstance(outcome, Failure) else None
        return Done(self.snapshot(), failure)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        self.service.close()


async def _caught(call: Callable[[], Awaitable[T]]) -> T | Failure:
    try:
        return await call()
    except LoadFailed as exc:
        return Failure(exc.kind.value, exc.message, load_failed=True)
    except ServingError as exc:
        return Failure(exc.kind.value, exc.message)
    except asyncio.CancelledError:
        raise
