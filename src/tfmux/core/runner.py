"""Runs validated requests on a leased model: through the version's batcher, or straight in
the inference pool when batching is off for the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from tfmux.config import BatchingConfig
from tfmux.core.batching import Batcher, BatchingOptions, BatchObserver, Gone, batchable
from tfmux.core.lifecycle import Lease
from tfmux.core.observer import Observer
from tfmux.errors import ServingError, internal
from tfmux.types import SignatureSpec

Outputs = dict[str, np.ndarray]


def batching_options(config: BatchingConfig) -> BatchingOptions:
    return BatchingOptions(
        enabled=config.enabled,
        max_batch_size=config.max_batch_size,
        batch_timeout=config.batch_timeout_micros / 1e6,
        allowed_batch_sizes=config.allowed_batch_sizes,
        max_queue_size=config.max_queue_size,
        max_inflight_batches=config.max_inflight_batches,
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
    ``batch_pool``. Event-loop side only."""

    def __init__(
        self,
        pool: Executor,
        batch_pool: Executor,
        batching_for: Callable[[str], BatchingConfig],
        observer: Observer,
    ) -> None:
        self._pool = pool
        self._batch_pool = batch_pool
        self._batching_for = batching_for
        self._observer = observer

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
        config = self._batching_for(lease.name)
        if not config.enabled:
            call = _caller(lease, signature.name, outputs)
            return await asyncio.get_running_loop().run_in_executor(self._pool, call, tensors)
        key = (signature.name, outputs)
        batcher = lease.batchers.get(key)
        if batcher is None:
            batcher = Batcher(
                _caller(lease, signature.name, outputs),
                self._batch_pool,
                batching_options(config),
                batchable(signature),
                _Reporter(self._observer, lease.name, lease.version),
            )
            lease.batchers[key] = batcher
        return await batcher.submit(tensors, deadline, gone)


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
