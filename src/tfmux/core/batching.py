"""Dynamic batching for one model version and signature.

Concurrent requests are merged along dimension 0 up to ``max_batch_size``, run as one call,
and split back so each caller gets exactly its rows. Requests whose other dimensions or dtypes
differ are never merged. When the model is idle a request runs at once; while batches run,
arrivals queue and form the next batch. The queue is bounded (a full queue rejects at once),
a request past its deadline is dropped without running, and a cancelled caller's queued work
is dropped. A request whose deadline (or the run time limit) passes while its batch runs is
answered DEADLINE_EXCEEDED at once; the batch keeps its in-flight slot until the model call
returns, so a model that hangs holds at most its own in-flight limit of threads.

A Batcher lives on one event loop; the model runs in the executor it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfmux.errors import ErrorKind, ServingError, unavailable
from tfmux.types import SignatureSpec

Tensors = Mapping[str, np.ndarray]
RunBatch = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
# Whether a request's caller has gone away (a client that disconnected).
Gone = Callable[[], bool]
# Called as a batch starts; what it returns is called once the model call has returned (the
# runner holds the version leased meanwhile, even if every caller was answered already).
Hold = Callable[[], Callable[[], None]]


@dataclass(frozen=True)
class BatchingOptions:
    """How one model version batches. Times in seconds; sizes in rows, queue in requests."""

    enabled: bool = True
    max_batch_size: int = 32
    batch_timeout: float = 0.0
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    max_inflight_batches: int = 1
    max_run_time: float | None = None  # a running batch's callers get DEADLINE_EXCEEDED then


class InflightLimit:
    """How many model calls of one version may run at once, shared by its batchers (one per
    signature and output selection), so a hung model holds at most ``limit`` threads.
    Event-loop side only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._waiting: deque[Batcher] = deque()

    def full(self) -> bool:
        return self.running >= self.limit

    def wait(self, batcher: Batcher) -> None:
        """``batcher`` has queued work: dispatch it when a call ends."""
        if batcher not in self._waiting:
            self._waiting.append(batcher)

    def release(self) -> None:
        self.running -= 1
        while self._waiting and not self.full():
            self._waiting.popleft()._dispatch()


@dataclass
class BatcherStatistics:
    """Counters since the batcher was created (``queued`` is the current queue length)."""

    requests: int = 0
    batches: int = 0
    rows: int = 0
    padded_rows: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    queued: int = 0
    inflight_batches: int = 0


class BatchObserver:
    """What a batcher reports as it works (metrics implement it); the default reports nothing."""

    def batch_ran(self, rows: int, requests: int, queue_seconds: list[float]) -> None:
        pass

    def request_dropped(self, reason: str) -> None:
        """``reason`` is "queue_full", "deadline" or "cancelled"."""


_QUEUED, _RUNNING, _DONE = 0, 1, 2


class _Item:
    __slots__ = ("deadline", "enqueued", "future", "gone", "inputs", "key", "rows", "state")

    def __init__(
        self,
        inputs: Tensors,
        key: Any,
        rows: int,
        deadline: float | None,
        now: float,
        gone: Gone | None,
        future: asyncio.Future[dict[str, np.ndarray]],
    ) -> None:
        self.inputs = inputs
        self.key = key
        self.rows = rows
        self.deadline = deadline
        self.enqueued = now
        self.gone = gone
        self.state = _QUEUED
        self.future = future


def batchable(signature: SignatureSpec) -> bool:
    """A signature can be batched when every input and output has a variable dimension 0."""
    specs = [*signature.inputs.values(), *signature.outputs.values()]
    return all(s.shape is not None and len(s.shape) >= 1 and s.shape[0] is None for s in specs)


class Batcher:
    """Merges concurrent requests for one version + signature. Not thread-safe: use it from
    its event loop only. ``run`` is the blocking model call, given merged inputs."""

    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        options: BatchingOptions,
        can_batch: bool,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        limit: InflightLimit | None = None,
        hold: Hold | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.options = options
        self._can_batch = can_batch and options.enabled
        self._observer = observer or BatchObserver()
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._inflight: dict[asyncio.Future[Any], list[_Item]] = {}  # running calls
        self.limit = limit or InflightLimit(options.max_inflight_batches)
        self._hold = hold
        self._timer: asyncio.TimerHandle | None = None
        # The loop, once known: asyncio.get_running_loop() costs a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = BatcherStatistics()

    def statistics(self) -> BatcherStatistics:
        stats = BatcherStatistics(**vars(self._stats))
        stats.queued = sum(1 for item in self._queue if item.state == _QUEUED)
        stats.inflight_batches = len(self._inflight)
        return stats

    async def submit(
        self, inputs: Tensors, deadline: float | None = None, gone: Gone | None = None
    ) -> dict[str, Any]:
        """Queue one request and wait for its rows of the outputs.

        ``deadline`` is on this batcher's clock. Raises RESOURCE_EXHAUSTED when the queue is
        full and DEADLINE_EXCEEDED when the deadline passes before the request's model call
        returned (or the call ran longer than ``max_run_time``). ``gone``
        says whether the caller went away: such a request is dropped (CANCELLED) instead of
        run, like a cancelled one.
        """
        now = self._clock()
        if deadline is not None and deadline <= now:
            raise self._dropped("deadline", _deadline_error())
        if len(self._queue) >= self.options.max_queue_size:
            self._queue = deque(item for item in self._queue if item.state == _QUEUED)
            if len(self._queue) >= self.options.max_queue_size:
                raise self._dropped("queue_full", _queue_full(self.options.max_queue_size))
        loop = self._event_loop()
        key, rows = self._key(inputs)
        item = _Item(inputs, key, rows, deadline, now, gone, loop.create_future())
        self._stats.requests += 1
        self._queue.append(item)
        # A deadline is a timer, not a wait_for: it costs no task per request.
        timer = None if deadline is None else loop.call_later(deadline - now, self._expire, item)
        self._dispatch()
        try:
            return await item.future
        except asyncio.CancelledError:
            if item.state == _QUEUED:
                item.state = _DONE
                self._stats.cancelled += 1
                self._observer.request_dropped("cancelled")
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this batcher runs on; found again if that loop was closed (a test's
        earlier ``asyncio.run``)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def drain(self) -> None:
        """Wait until every batch already running has finished."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    def abandon(self, error: ServingError) -> None:
        """Answer every queued and running request with ``error`` (shutdown); running calls
        keep their slots until they return."""
        for item in self._queue:
            if item.state == _QUEUED:
                _settle(item, exception=ServingError(error.kind, error.message))
        for batch in self._inflight.values():
            for item in batch:
                if item.state == _RUNNING:
                    _settle(item, exception=ServingError(error.kind, error.message))

    def _key(self, inputs: Tensors) -> tuple[Any, int]:
        """(merge key, rows): requests merge only with equal keys; None never merges."""
        if not self._can_batch:
            return None, 1
        key, rows = [], -1
        for name, array in inputs.items():
            shape = array.shape
            if not shape:
                return None, 1
            if rows < 0:
                rows = shape[0]
            elif shape[0] != rows:
                return None, max(rows, 1)
            key.append((name, array.dtype, shape[1:]))
        if rows < 0:
            return None, 1
        if rows > self.options.max_batch_size:
            return None, max(rows, 1)
        return tuple(key), rows

    def _dispatch(self) -> None:
        """Start batches while there is queued work and room in flight (this version's)."""
        limit = self.limit
        while self._queue:
            if limit.full():
                limit.wait(self)
                return
            batch = self._take_batch()
            if not batch:
                return
            self._start(batch)

    def _take_batch(self) -> list[_Item]:
        now = self._clock()
        queue = self._queue
        while queue:
            first = queue.popleft()
            if self._runnable(first, now):
                break
        else:
            return []
        batch, rows = [first], first.rows
        if first.key is not None:
            rows = self._gather(batch, rows, now)
            if self._should_wait(first, rows, now):
                for item in reversed(batch):  # _gather replaced self._queue: put back there
                    self._queue.appendleft(item)
                return []
        return batch

    def _gather(self, batch: list[_Item], rows: int, now: float) -> int:
        """Move queued items with the first item's key into ``batch`` while they fit."""
        key, limit = batch[0].key, self.options.max_batch_size
        kept: deque[_Item] = deque()
        for item in self._queue:
            if not self._runnable(item, now):
                continue
            if item.key == key and rows + item.rows <= limit:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue = kept
        return rows

    def _should_wait(self, first: _Item, rows: int, now: float) -> bool:
        """With a batch timeout, hold a part-full batch until the oldest request's wait ends."""
        timeout = self.options.batch_timeout
        if timeout <= 0 or rows >= self.options.max_batch_size:
            return False
        remaining = first.enqueued + timeout - now
        if remaining <= 0:
            return False
        if self._timer is None:
            self._timer = self._event_loop().call_later(remaining, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _runnable(self, item: _Item, now: float) -> bool:
        """Whether a queued item may still run; one past its deadline, or whose caller has
        gone, is dropped here instead."""
        if item.state != _QUEUED:
            return False
        if item.deadline is not None and item.deadline <= now:
            self._expire(item)
            return False
        if item.gone is not None and item.gone():
            item.state = _DONE
            self._stats.cancelled += 1
            self._observer.request_dropped("cancelled")
            if not item.future.done():
                item.future.set_exception(
                    ServingError(ErrorKind.CANCELLED, "the client went away before its request ran")
                )
            return False
        return True

    def _expire(self, item: _Item) -> None:
        """A request's deadline passed: drop it if queued, answer it if its batch runs."""
        if item.state == _QUEUED:
            item.state = _DONE
            if not item.future.done():
                item.future.set_exception(self._dropped("deadline", _deadline_error()))
        elif item.state == _RUNNING:
            _settle(item, exception=_running_deadline_error())

    def _overrun(self, batch: list[_Item]) -> None:
        """The batch ran for ``max_run_time``: answer its callers; the call keeps its slot."""
        for item in batch:
            if item.state == _RUNNING:
                _settle(item, exception=_run_time_error(self.options.max_run_time or 0.0))

    def _dropped(self, reason: str, error: ServingError) -> ServingError:
        if reason == "deadline":
            self._stats.expired += 1
        elif reason == "queue_full":
            self._stats.rejected += 1
        self._observer.request_dropped(reason)
        return error

    def _start(self, batch: list[_Item]) -> None:
        now = self._clock()
        for item in batch:
            item.state = _RUNNING
        rows = sum(item.rows for item in batch)
        merged, padded = self._merge(batch, rows)
        self._stats.batches += 1
        self._stats.rows += rows
        self._stats.padded_rows += padded - rows
        self._observer.batch_ran(rows, len(batch), [now - item.enqueued for item in batch])
        loop = self._event_loop()
        release = self._hold() if self._hold is not None else None
        try:
            future = loop.run_in_executor(self._executor, _call, self._run, merged, release)
        except RuntimeError:  # the pool is shut down: the server is stopping
            if release is not None:
                release()
            for item in batch:
                _settle(item, exception=unavailable("the server is shutting down"))
            return
        self.limit.running += 1
        self._inflight[future] = batch
        max_run = self.options.max_run_time
        overrun = None if max_run is None else loop.call_later(max_run, self._overrun, batch)
        future.add_done_callback(lambda done: self._finish(done, batch, overrun))

    def _merge(self, batch: list[_Item], rows: int) -> tuple[dict[str, np.ndarray], int]:
        if len(batch) == 1 and batch[0].key is None:
            return dict(batch[0].inputs), rows
        padded = self._padded_size(rows) if rows else rows  # no real row to pad with
        merged = {}
        for name in batch[0].inputs:
            parts = [item.inputs[name] for item in batch]
            if padded > rows:
                last = next(part for part in reversed(parts) if len(part))[-1:]
                parts.append(np.repeat(last, padded - rows, axis=0))
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return merged, padded

    def _padded_size(self, rows: int) -> int:
        sizes = [s for s in sorted(self.options.allowed_batch_sizes) if s >= rows]
        return sizes[0] if sizes else rows

    def _finish(
        self,
        done: asyncio.Future[dict[str, np.ndarray]],
        batch: list[_Item],
        overrun: asyncio.TimerHandle | None,
    ) -> None:
        self._inflight.pop(done, None)
        if overrun is not None:
            overrun.cancel()
        try:
            outputs = done.result()
        except ServingError as exc:  # the model failed: every caller in the batch hears it
            for item in batch:  # each its own exception, so tracebacks do not pile up
                _settle(item, exception=ServingError(exc.kind, exc.message))
        except BaseException as exc:
            for item in batch:
                _settle(item, exception=exc)
        else:
            self._split(outputs, batch)
        self.limit.release()  # other batchers of the version waiting for a slot go first
        self._dispatch()

    def _split(self, outputs: dict[str, np.ndarray], batch: list[_Item]) -> None:
        if len(batch) == 1 and batch[0].key is None:
            _settle(batch[0], result=outputs)
            return
        total = sum(item.rows for item in batch)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] < total:
                message = (
                    f"output '{name}' has shape {list(value.shape)}, which cannot be split "
                    f"into the {total} rows of a batch"
                )
                for item in batch:  # each its own exception, so tracebacks do not pile up
                    _settle(item, exception=ServingError(ErrorKind.INTERNAL, message))
                return
        offset = 0
        for item in batch:
            end = offset + item.rows
            _settle(item, result={name: value[offset:end] for name, value in outputs.items()})
            offset = end


def _call(
    run: RunBatch, inputs: dict[str, np.ndarray], release: Callable[[], None] | None
) -> dict[str, np.ndarray]:
    """The model call, in its thread; the hold ends there as the call returns (not on the
    event loop, which may be gone by then)."""
    try:
        return run(inputs)
    finally:
        if release is not None:
            release()


def _settle(
    item: _Item,
    result: dict[str, np.ndarray] | None = None,
    exception: BaseException | None = None,
) -> None:
    item.state = _DONE
    if item.future.done():
        return
    if exception is not None:
        item.future.set_exception(exception)
    else:
        item.future.set_result(result or {})


def _deadline_error() -> ServingError:
    return ServingError(
        ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the request could run"
    )


def _running_deadline_error() -> ServingError:
    return ServingError(
        ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded while the model was running the request"
    )


def _run_time_error(seconds: float) -> ServingError:
    return ServingError(
        ErrorKind.DEADLINE_EXCEEDED,
        f"the model did not answer within the maximum run time ({seconds:g} s)",
    )


def _queue_full(size: int) -> ServingError:
    return ServingError(
        ErrorKind.RESOURCE_EXHAUSTED,
        f"the model's request queue is full ({size} requests waiting); retry later",
    )
