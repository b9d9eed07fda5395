"""Runs validated requests on a leased model, always through one of the version's batchers:
merging ones in the batch pool, or (batching off) ones that run each request alone in the
normal-priority pool. Either way the version's queue limit, in-flight limit, deadlines and
maximum run time apply, and a running call keeps the version leased until it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from tfmux.config import BatchingConfig
from tfmux.core.batching import (
    Batcher,
    BatchingOptions,
    BatchObserver,
    Gone,
    InflightLimit,
    batchable,
)
from tfmux.core.lifecycle import Lease
from tfmux.core.observer import Observer
from tfmux.errors import ServingError, internal
from tfmux.types import SignatureSpec

Outputs = dict[str, np.ndarray]


def batching_options(config: BatchingConfig, max_run_time: float | None = None) -> BatchingOptions:
    return BatchingOptions(
        enabled=config.enabled,
        max_batch_size=config.max_batch_size,
        batch_timeout=config.batch_timeout_micros / 1e6,
        allowed_batch_sizes=config.allowed_batch_sizes,
        max_queue_size=config.max_queue_size,
        max_inflight_batches=config.max_inflight_batches,
        max_run_time=max_run_time,
    )


class _Reporter(BatchObserver):
    """Binds a batcher's events to its model and version for the core's observer."""

    def __init__(self, observer: Observer, name: str, version: int) -> None:
        self._observer, self._name, self._version = observer, name, str(version)

    def batch_ran(self, rows: int, requests: int, queue_seconds: list[float]) -> None:
        self._observer.batch_ran(self._name, self._version, rows, requests, queue_seconds)

    def request_dropped(self, reason: str) -> None:
        self._observer.request_dropped(self._name, self._version, reason)


class ModelRunner:
    """Every model call goes through here: unbatched ones in ``pool``, batches in
    ``batch_pool``. ``max_run_time`` (seconds): a call running longer is answered
    DEADLINE_EXCEEDED (the runtime's own run timeout frees its thread). A version runs at most
    ``max_inflight_batches`` calls at once, or with batching off the larger of that and
    ``unbatched_calls``. Event-loop side only."""

    def __init__(
        self,
        pool: Executor,
        batch_pool: Executor,
        batching_for: Callable[[str], BatchingConfig],
        observer: Observer,
        max_run_time: float | None = None,
        unbatched_calls: int = 1,
    ) -> None:
        self._pool = pool
        self._batch_pool = batch_pool
        self._batching_for = batching_for
        self._observer = observer
        self._max_run_time = max_run_time
        self._unbatched_calls = unbatched_calls

    async def run(
        self,
        lease: Lease,
        signature: SignatureSpec,
        tensors: dict[str, np.ndarray],
        wanted: Sequence[str] | None,
        deadline: float | None,
        gone: Gone | None = None,
    ) -> Outputs:
        """The outputs for one request; model failures become INTERNAL errors. ``gone`` says
        whether the caller went away (its queued work is then dropped)."""
        outputs = tuple(wanted) if wanted else None
        key = (signature.name, outputs)
        batcher = lease.batchers.get(key)
        if batcher is None:
            batcher = lease.batchers[key] = self._batcher(lease, signature, outputs)
        return await batcher.submit(tensors, deadline, gone)

    def _batcher(
        self, lease: Lease, signature: SignatureSpec, outputs: tuple[str, ...] | None
    ) -> Batcher:
        config = self._batching_for(lease.name)
        options = batching_options(config, self._max_run_time)
        if not config.enabled:  # each call is one request: allow a few at once
            calls = max(options.max_inflight_batches, self._unbatched_calls)
            options = replace(options, max_inflight_batches=calls)
        # One in-flight limit per version, shared by all its batchers.
        limit = next((b.limit for b in lease.batchers.values()), None)
        return Batcher(
            _caller(lease, signature.name, outputs),
            self._batch_pool if config.enabled else self._pool,
            options,
            batchable(signature),
            _Reporter(self._observer, lease.name, lease.version),
            limit=limit or InflightLimit(options.max_inflight_batches),
            hold=lambda: lease.share().release,
        )


def _caller(
    lease: Lease, signature: str, outputs: tuple[str, ...] | None
) -> Callable[[dict[str, np.ndarray]], Outputs]:
    """The blocking call of one signature of the leased model."""
    model = lease.model

    def call(inputs: dict[str, np.ndarray]) -> Outputs:
        try:
            return model.run(signature, inputs, outputs)
        except ServingError:
            raise
        except Exception as exc:  # model code failed: report it, keep serving
            raise internal(f"{type(exc).__name__}: {_shorten(str(exc))}") from exc

    return call


def _shorten(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
