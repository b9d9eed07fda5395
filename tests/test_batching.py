"""Dynamic batching: the Batcher over a controllable fake run function, and end to end through
ServingService + ModelManager + FakeLoader.

The fake run blocks on a ``threading.Event`` per call, so a test decides when each batch
finishes, and it records every merged input it was given. Deadlines use the Batcher's ``clock``
(a ``FakeClock``); real short timeouts appear only where the code under test measures real time
(``asyncio.wait_for`` on a deadline, the service's ``time.monotonic()`` deadlines). No test
asserts on elapsed time. pytest-asyncio is not used: each test drives its coroutine with
``asyncio.run`` (through ``drive``, which fails a hung test instead of hanging).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tfmux.config import BatchingConfig
from tfmux.core.batching import (
    Batcher,
    BatcherStatistics,
    BatchingOptions,
    BatchObserver,
    batchable,
)
from tfmux.core.manager import ModelManager
from tfmux.core.service import ServingService
from tfmux.errors import ErrorKind, ServingError
from tfmux.types import InferenceResult, ModelRef

from .fakes import (
    GATE_TIMEOUT,
    FakeLoader,
    FakeModel,
    RecordingObserver,
    make_repository,
    model_config,
    signature,
    wait_gate,
)

Arrays = dict[str, np.ndarray]


# -- fakes ---------------------------------------------------------------------------------


def row_function(x: np.ndarray) -> np.ndarray:
    """A row-wise function: each output row depends only on the same input row."""
    flat = x.reshape(len(x), int(np.prod(x.shape[1:], dtype=np.int64)))
    sums = flat.sum(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x * 2 + sums).astype(x.dtype)


def rowwise(inputs: Mapping[str, np.ndarray]) -> Arrays:
    """``y`` is ``row_function(x)``; every other input passes through unchanged."""
    outputs = {name: np.array(value) for name, value in inputs.items() if name != "x"}
    outputs["y"] = row_function(inputs["x"])
    return outputs


class FakeRun:
    """A blocking model call the test controls (thread-safe).

    Every call is recorded (``calls``, the merged inputs in call order) and, while ``hold`` is
    on, blocks on its own gate until ``release(i)`` or ``open()``. ``fn`` computes the outputs
    (it may raise). ``active``/``max_active`` count calls running at once.
    """

    def __init__(
        self, fn: Callable[[Mapping[str, np.ndarray]], Arrays] = rowwise, *, hold: bool = True
    ) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._hold = hold
        self.calls: list[Arrays] = []
        self._gates: list[threading.Event] = []
        self.active = 0
        self.max_active = 0

    def __call__(self, inputs: dict[str, np.ndarray]) -> Arrays:
        gate = threading.Event()
        with self._lock:
            self.calls.append({name: np.array(value) for name, value in inputs.items()})
            self._gates.append(gate)
            if not self._hold:
                gate.set()
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            wait_gate(gate, "FakeRun")
            return self.fn(inputs)
        finally:
            with self._lock:
                self.active -= 1

    def release(self, index: int) -> None:
        """Let call ``index`` (0-based, already started) finish."""
        with self._lock:
            self._gates[index].set()

    def open(self) -> None:
        """Let every call, running or future, finish."""
        with self._lock:
            self._hold = False
            for gate in self._gates:
                gate.set()

    def rows(self) -> list[int]:
        """Rows (dimension 0 of ``x``) of every call so far."""
        with self._lock:
            return [len(call["x"]) for call in self.calls]


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Events(BatchObserver):
    """A BatchObserver that keeps what it hears."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (rows, requests)
        self.queue_seconds: list[list[float]] = []
        self.dropped: list[str] = []

    def batch_ran(self, rows: int, requests: int, queue_seconds: list[float]) -> None:
        assert len(queue_seconds) == requests and all(s >= 0 for s in queue_seconds)
        self.batches.append((rows, requests))
        self.queue_seconds.append(list(queue_seconds))

    def request_dropped(self, reason: str) -> None:
        self.dropped.append(reason)


def drive(main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` on a new event loop; a test that hangs fails instead."""
    return asyncio.run(asyncio.wait_for(main, GATE_TIMEOUT))


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Yield to the loop (and the pool threads) until ``predicate`` holds."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def rows_of(n: int, start: float = 1.0, width: int = 3, dtype: str = "float32") -> np.ndarray:
    """``n`` distinct rows (values tell requests apart)."""
    return (np.arange(n * width, dtype=np.float64).reshape(n, width) + start).astype(dtype)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4, thread_name_prefix="test-batching")
    yield executor
    executor.shutdown(wait=True)


@dataclass
class Rig:
    """A Batcher over a FakeRun with a FakeClock and an Events observer."""

    batcher: Batcher
    run: FakeRun
    clock: FakeClock
    events: Events

    def submit(self, x: np.ndarray, deadline: float | None = None) -> asyncio.Task[Arrays]:
        return asyncio.ensure_future(self.batcher.submit({"x": x}, deadline))

    def stats(self) -> BatcherStatistics:
        return self.batcher.statistics()

    async def started(self, calls: int) -> None:
        await until(lambda: len(self.run.calls) >= calls, f"{calls} model calls")


@pytest.fixture
def make_rig(pool: ThreadPoolExecutor) -> Iterator[Callable[..., Rig]]:
    runs: list[FakeRun] = []

    def make(run: FakeRun | None = None, *, can_batch: bool = True, **options: Any) -> Rig:
        run = run or FakeRun()
        runs.append(run)
        clock, events = FakeClock(), Events()
        options.setdefault("max_inflight_batches", 1)
        batcher = Batcher(run, pool, BatchingOptions(**options), can_batch, events, clock)
        return Rig(batcher, run, clock, events)

    yield make
    for run in runs:  # never leave a pool thread blocked on a gate
        run.open()


async def busy(rig: Rig) -> asyncio.Task[Arrays]:
    """Start one request and wait until the model is running it (its gate held)."""
    first = rig.submit(rows_of(1, start=-100.0))
    await rig.started(1)
    return first


def assert_own_rows(result: Arrays, x: np.ndarray) -> None:
    np.testing.assert_array_equal(result["y"], row_function(x))
    assert result["y"].dtype == x.dtype


# -- requirement 1: merge along dimension 0, split back, never mix shapes ------------------


def test_concurrent_requests_merge_into_one_call_and_split_back(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_batch_size=32)

    async def main() -> None:
        first = await busy(rig)
        xs = [rows_of(n, start=100.0 * i) for i, n in enumerate([1, 3, 2, 5], start=1)]
        tasks = [rig.submit(x) for x in xs]
        await until(lambda: rig.stats().queued == 4, "4 queued requests")
        assert rig.run.rows() == [1]  # the queued requests wait for the running batch
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        assert rig.run.rows() == [1, 11]
        np.testing.assert_array_equal(rig.run.calls[1]["x"], np.concatenate(xs))
        for result, x in zip(results[1:], xs, strict=True):
            assert_own_rows(result, x)
            assert result["y"].shape == x.shape

    drive(main())
    assert rig.events.batches == [(1, 1), (11, 4)]


def test_batches_never_exceed_max_batch_size(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=4)

    async def main() -> None:
        first = await busy(rig)
        xs = [rows_of(n, start=10.0 * i) for i, n in enumerate([2, 1, 3, 1, 2, 4])]
        tasks = [rig.submit(x) for x in xs]
        await until(lambda: rig.stats().queued == 6, "6 queued requests")
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        for result, x in zip(results[1:], xs, strict=True):
            assert_own_rows(result, x)

    drive(main())
    # FIFO first fit: [2, 1] + the 1 (the 3 does not fit), then [3], then [2], then [4].
    assert rig.run.rows() == [1, 4, 3, 2, 4]
    assert all(rows <= 4 for rows in rig.run.rows())


def test_requests_with_other_shapes_or_dtypes_are_never_merged(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_batch_size=32)
    a = rows_of(2, start=1.0)
    b = rows_of(1, start=10.0, width=4)  # other non-batch dimension
    c = rows_of(1, start=20.0, dtype="float64")  # other dtype
    d = rows_of(3, start=30.0)  # same as a
    e = rows_of(2, start=40.0).reshape(2, 3, 1)  # other rank

    async def main() -> None:
        first = await busy(rig)
        tasks = [rig.submit(x) for x in (a, b, c, d, e)]
        await until(lambda: rig.stats().queued == 5, "5 queued requests")
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        for result, x in zip(results[1:], (a, b, c, d, e), strict=True):
            assert_own_rows(result, x)

    drive(main())
    calls = rig.run.calls[1:]
    assert [(call["x"].shape, call["x"].dtype.name) for call in calls] == [
        ((5, 3), "float32"),
        ((1, 4), "float32"),
        ((1, 3), "float64"),
        ((2, 3, 1), "float32"),
    ]
    np.testing.assert_array_equal(calls[0]["x"], np.concatenate([a, d]))


def test_a_request_larger_than_max_batch_size_runs_alone(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=4, allowed_batch_sizes=(2, 4))
    small, big, other = rows_of(2, start=1.0), rows_of(10, start=100.0), rows_of(2, start=50.0)

    async def main() -> None:
        alone = rig.submit(big)  # idle: runs at once, alone
        await rig.started(1)
        rig.run.release(0)
        assert_own_rows(await alone, big)
        first = rig.submit(rows_of(1, start=-100.0))
        await rig.started(2)
        tasks = [rig.submit(x) for x in (small, big, other)]
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        for result, x in zip(results[1:], (small, big, other), strict=True):
            assert_own_rows(result, x)

    drive(main())
    # Never padded, never merged: the big request is a batch of its own, exactly its rows.
    assert rig.run.rows() == [10, 2, 4, 10]
    np.testing.assert_array_equal(rig.run.calls[3]["x"], big)
    assert rig.stats().rejected == 0


def test_inputs_that_disagree_on_dimension_0_run_alone(make_rig: Callable[..., Rig]) -> None:
    run = FakeRun(lambda inputs: {"y": np.array(inputs["x"])})
    rig = make_rig(run, max_batch_size=8)
    odd = {"x": rows_of(2), "z": rows_of(3)}

    async def main() -> list[Arrays]:
        first = await busy(rig)
        tasks = [
            asyncio.ensure_future(rig.batcher.submit({"x": rows_of(1), "z": rows_of(1)})),
            asyncio.ensure_future(rig.batcher.submit(odd)),
        ]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.run.open()
        return await asyncio.gather(first, *tasks)

    results = drive(main())
    assert [sorted((k, len(v)) for k, v in call.items()) for call in rig.run.calls[1:]] == [
        [("x", 1), ("z", 1)],
        [("x", 2), ("z", 3)],
    ]
    np.testing.assert_array_equal(results[2]["y"], odd["x"])


def test_several_inputs_and_outputs_are_merged_and_split_together(
    make_rig: Callable[..., Rig],
) -> None:
    def fn(inputs: Mapping[str, np.ndarray]) -> Arrays:
        return {"sum": inputs["a"] + inputs["b"][:, :1], "ids": np.array(inputs["ids"])}

    rig = make_rig(FakeRun(fn), max_batch_size=8)
    requests = [
        {
            "a": rows_of(n, start=10.0 * i),
            "b": rows_of(n, start=-5.0 * i, width=2),
            "ids": np.full(n, i, dtype=np.int64),
        }
        for i, n in enumerate([2, 1, 3])
    ]

    async def main() -> list[Arrays]:
        first = asyncio.ensure_future(rig.batcher.submit(requests[0]))
        await rig.started(1)
        tasks = [asyncio.ensure_future(rig.batcher.submit(r)) for r in requests]
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        rig.run.open()
        await first
        return await asyncio.gather(*tasks)

    results = drive(main())
    for result, request in zip(results, requests, strict=True):
        np.testing.assert_array_equal(result["sum"], request["a"] + request["b"][:, :1])
        np.testing.assert_array_equal(result["ids"], request["ids"])
    assert [len(call["a"]) for call in rig.run.calls] == [2, 6]
    np.testing.assert_array_equal(rig.run.calls[1]["b"], np.concatenate([r["b"] for r in requests]))


# -- requirement 2: idle runs at once, queue while busy, batch_timeout, padding -------------


def test_an_idle_model_runs_a_request_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=32)  # batch_timeout 0; the fake clock never moves

    async def main() -> None:
        task = rig.submit(rows_of(2))
        await asyncio.sleep(0)  # submit's first step: the batch starts before it awaits
        assert rig.stats() == BatcherStatistics(requests=1, batches=1, rows=2, inflight_batches=1)
        rig.run.open()
        assert_own_rows(await task, rows_of(2))

    drive(main())
    assert rig.events.queue_seconds == [[0.0]]


def test_arrivals_while_a_batch_runs_form_the_next_batch(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=32)

    async def main() -> None:
        first = await busy(rig)
        second = [rig.submit(rows_of(1, start=float(i))) for i in range(3)]
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        rig.clock.advance(2.5)
        rig.run.release(0)
        await first
        await rig.started(2)
        third = [rig.submit(rows_of(2, start=float(i))) for i in range(2)]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.clock.advance(1.0)
        rig.run.release(1)
        await asyncio.gather(*second)
        await rig.started(3)
        rig.run.release(2)
        await asyncio.gather(*third)

    drive(main())
    assert rig.run.rows() == [1, 3, 4]
    assert rig.events.batches == [(1, 1), (3, 3), (4, 2)]
    assert rig.events.queue_seconds == [[0.0], [2.5, 2.5, 2.5], [1.0, 1.0]]


def test_batch_timeout_holds_a_part_full_batch_until_the_oldest_request_waited_enough(
    make_rig: Callable[..., Rig],
) -> None:
    # The timer re-checks every ~2 ms of real time, but the fake clock decides when the
    # timeout has passed, so the outcome does not depend on how fast the machine is.
    # (Steps are powers of two so the fake times add up exactly.)
    step = 2.0**-10
    rig = make_rig(max_batch_size=4, batch_timeout=2 * step)
    rig.run.open()

    async def main() -> None:
        early = rig.submit(rows_of(1, start=1.0))
        await asyncio.sleep(0.02)  # several timer rounds; the fake clock has not moved
        assert rig.run.calls == []
        assert rig.stats().queued == 1
        rig.clock.advance(step)
        late = rig.submit(rows_of(1, start=2.0))
        await asyncio.sleep(0.01)
        assert rig.run.calls == [] and rig.stats().queued == 2
        rig.clock.advance(step)  # the oldest request has now waited batch_timeout
        assert_own_rows(await early, rows_of(1, start=1.0))
        assert_own_rows(await late, rows_of(1, start=2.0))

    drive(main())
    assert rig.run.rows() == [2]
    assert rig.events.queue_seconds == [[2 * step, step]]


def test_batch_timeout_runs_a_full_batch_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=3, batch_timeout=60.0)
    rig.run.open()
    xs = [rows_of(1, start=float(i)) for i in range(3)]

    async def main() -> list[Arrays]:
        tasks = [rig.submit(x) for x in xs]
        return await asyncio.gather(*tasks)  # the clock never moves: full batches do not wait

    for result, x in zip(drive(main()), xs, strict=True):
        assert_own_rows(result, x)
    assert rig.run.rows() == [3]


def test_allowed_batch_sizes_pad_and_callers_get_only_their_rows(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_batch_size=8, allowed_batch_sizes=(4, 8))
    xs = [rows_of(n, start=10.0 * i) for i, n in enumerate([2, 3])]

    async def main() -> list[Arrays]:
        first = await busy(rig)  # 1 row, padded to 4
        tasks = [rig.submit(x) for x in xs]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        return results[1:]

    for result, x in zip(drive(main()), xs, strict=True):
        assert_own_rows(result, x)
        assert result["y"].shape == x.shape
    assert rig.run.rows() == [4, 8]
    merged = rig.run.calls[1]["x"]
    np.testing.assert_array_equal(merged[:5], np.concatenate(xs))
    np.testing.assert_array_equal(merged[5:], np.repeat(xs[1][-1:], 3, axis=0))
    assert rig.events.batches == [(1, 1), (5, 2)]
    stats = rig.stats()
    assert (stats.rows, stats.padded_rows) == (6, 3 + 3)


def test_padding_copies_a_real_row_even_when_the_last_request_is_empty(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_batch_size=8, allowed_batch_sizes=(4, 8))
    full, empty = rows_of(2, start=7.0), rows_of(0)

    async def main() -> list[Arrays]:
        first = await busy(rig)
        tasks = [rig.submit(full), rig.submit(empty)]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        alone = await rig.batcher.submit({"x": empty})  # nothing to pad with: runs as is
        return [*results[1:], alone]

    got_full, got_empty, got_alone = drive(main())
    assert_own_rows(got_full, full)
    assert got_empty["y"].shape == (0, 3) and got_alone["y"].shape == (0, 3)
    assert rig.run.rows() == [4, 4, 0]
    np.testing.assert_array_equal(
        rig.run.calls[1]["x"], np.concatenate([full, full[-1:], full[-1:]])
    )
    assert rig.stats().padded_rows == 3 + 2  # what the model really got beyond real rows


# -- requirement 3: bounded queue, deadlines, cancellation ---------------------------------


def test_a_full_queue_rejects_at_once_with_its_size(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=1, max_queue_size=2)

    async def main() -> None:
        first = await busy(rig)
        queued = [rig.submit(rows_of(1, start=float(i))) for i in range(2)]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        with pytest.raises(ServingError) as info:  # raises without waiting (the gate is shut)
            await rig.batcher.submit({"x": rows_of(1)})
        assert info.value.kind is ErrorKind.RESOURCE_EXHAUSTED
        assert "(2 requests waiting)" in info.value.message
        queued[0].cancel()  # a dropped request frees its place
        with pytest.raises(asyncio.CancelledError):
            await queued[0]
        again = rig.submit(rows_of(1, start=50.0))
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.run.open()
        await asyncio.gather(first, queued[1], again)

    drive(main())
    assert rig.run.rows() == [1, 1, 1]
    stats = rig.stats()
    assert (stats.requests, stats.rejected, stats.cancelled) == (4, 1, 1)
    assert rig.events.dropped == ["queue_full", "cancelled"]


def test_queued_requests_past_their_deadline_are_dropped_without_running(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_batch_size=8)
    # Doomed requests (values >= 500) at the head of the queue and between live ones.
    order = [("doomed", 500.0), ("kept", 1.0), ("doomed", 600.0), ("kept", 10.0)]
    xs = [rows_of(1, start=start) for _, start in order]

    async def main() -> None:
        first = await busy(rig)
        # Fake deadlines far away in real time: only the fake clock can expire them here.
        tasks = [
            rig.submit(x, deadline=rig.clock() + (100 if kind == "doomed" else 1000))
            for (kind, _), x in zip(order, xs, strict=True)
        ]
        await until(lambda: rig.stats().queued == 4, "4 queued requests")
        rig.clock.advance(200)
        rig.run.open()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for (kind, _), x, outcome in zip(order, xs, outcomes, strict=True):
            if kind == "doomed":
                assert isinstance(outcome, ServingError)
                assert outcome.kind is ErrorKind.DEADLINE_EXCEEDED
            else:
                assert_own_rows(outcome, x)
        await first

    drive(main())
    assert rig.run.rows() == [1, 2]
    assert not any((call["x"] >= 500.0).any() for call in rig.run.calls)
    assert rig.stats().expired == 2
    assert rig.events.dropped == ["deadline", "deadline"]


def test_a_deadline_already_past_fails_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()

    async def main() -> None:
        with pytest.raises(ServingError) as info:
            await rig.batcher.submit({"x": rows_of(1)}, deadline=rig.clock())
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED

    drive(main())
    assert rig.run.calls == []
    assert rig.stats() == BatcherStatistics(expired=1)
    assert rig.events.dropped == ["deadline"]


def test_a_deadline_expires_while_the_model_stays_busy(make_rig: Callable[..., Rig]) -> None:
    # Nothing dispatches while the model is busy, so only the real-time wait can expire it.
    rig = make_rig()
    doomed = rows_of(1, start=500.0)

    async def main() -> None:
        first = await busy(rig)
        with pytest.raises(ServingError) as info:
            await rig.batcher.submit({"x": doomed}, deadline=rig.clock() + 0.01)
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert rig.stats().queued == 0
        rig.run.open()
        await first
        await rig.batcher.submit({"x": rows_of(1)})  # the next batch skips the expired one

    drive(main())
    assert rig.run.rows() == [1, 1]
    assert not any(np.isin(500.0, call["x"]) for call in rig.run.calls)
    assert rig.stats().expired == 1


def test_a_deadline_passing_while_the_request_runs_is_answered_then_and_keeps_the_slot(
    make_rig: Callable[..., Rig],
) -> None:
    """A model call that does not return by the deadline: its caller hears DEADLINE_EXCEEDED
    at the deadline, and the call keeps the in-flight slot until it returns."""
    rig = make_rig()
    x, later = rows_of(2), rows_of(1, start=50.0)

    async def main() -> Arrays:
        task = rig.submit(x, deadline=rig.clock() + 0.005)
        await rig.started(1)
        with pytest.raises(ServingError) as info:
            await task  # answered while the model still runs
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert "while the model was running" in info.value.message
        waiting = rig.submit(later)
        await asyncio.sleep(0.02)
        assert len(rig.run.calls) == 1 and rig.stats().inflight_batches == 1
        rig.run.open()  # the hung call returns: the slot is free for the next request
        return await waiting

    assert_own_rows(drive(main()), later)
    assert rig.stats().expired == 0 and rig.events.dropped == []


@pytest.mark.parametrize("with_deadline", [False, True])
def test_cancelled_callers_have_their_queued_work_dropped(
    make_rig: Callable[..., Rig], with_deadline: bool
) -> None:
    rig = make_rig(max_batch_size=8)
    deadline = rig.clock() + 1000 if with_deadline else None
    # Cancelled requests (values >= 500) at the head of the queue and between live ones.
    starts = [500.0, 1.0, 600.0, 10.0]
    xs = [rows_of(2, start=start) for start in starts]

    async def main() -> None:
        first = await busy(rig)
        tasks = [rig.submit(x, deadline) for x in xs]
        await until(lambda: rig.stats().queued == 4, "4 queued requests")
        for i in (0, 2):
            tasks[i].cancel()
            with pytest.raises(asyncio.CancelledError):
                await tasks[i]
        assert rig.stats().queued == 2
        rig.run.open()
        assert_own_rows(await tasks[1], xs[1])
        assert_own_rows(await tasks[3], xs[3])
        await first

    drive(main())
    assert rig.run.rows() == [1, 4]
    assert not any((call["x"] >= 500.0).any() for call in rig.run.calls)
    assert rig.stats().cancelled == 2
    assert rig.events.dropped == ["cancelled", "cancelled"]


def test_cancelling_a_running_caller_leaves_the_rest_of_its_batch_alone(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_batch_size=8)
    a, b = rows_of(1, start=1.0), rows_of(2, start=10.0)

    async def main() -> Arrays:
        first = await busy(rig)
        tasks = [rig.submit(a), rig.submit(b)]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.run.release(0)
        await first
        await rig.started(2)  # a and b now run together
        tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        rig.run.open()
        return await tasks[1]

    assert_own_rows(drive(main()), b)
    assert rig.run.rows() == [1, 3]
    assert rig.stats().cancelled == 0  # it was not dropped: it had already run


# -- requirement 4: in-flight limit; a hot model does not starve the others ----------------


def test_max_inflight_batches_limits_concurrent_batches(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=1, max_inflight_batches=2)  # the pool has 4 threads

    async def main() -> None:
        tasks = [rig.submit(rows_of(1, start=float(i))) for i in range(5)]
        await rig.started(2)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(rig.run.calls) == 2
        assert rig.stats().inflight_batches == 2 and rig.stats().queued == 3
        rig.run.release(0)
        await rig.started(3)
        assert rig.stats().inflight_batches == 2 and rig.stats().queued == 2
        rig.run.open()
        await asyncio.gather(*tasks)
        await rig.batcher.drain()

    drive(main())
    assert rig.run.max_active == 2
    assert rig.stats().inflight_batches == 0


@pytest.mark.parametrize("max_inflight", [1, 2, 8])
def test_a_hot_model_does_not_starve_a_cold_one(max_inflight: int) -> None:
    """Two models share a one-thread pool. The hot one has 30 single-row batches waiting when
    a cold request arrives; the cold request runs after exactly ``max_inflight`` hot batches
    (those already handed to the pool), not after the hot model's whole queue."""
    run = FakeRun(lambda inputs: {"y": np.array(inputs["x"])})
    pool = ThreadPoolExecutor(1)
    options = BatchingOptions(max_batch_size=1, max_inflight_batches=max_inflight)
    hot = Batcher(run, pool, options, True)
    cold = Batcher(run, pool, options, True)

    async def main() -> None:
        hot_tasks = [asyncio.ensure_future(hot.submit({"x": np.ones((1, 1))})) for _ in range(30)]
        await until(lambda: len(run.calls) == 1 and hot.statistics().requests == 30, "hot load")
        assert hot.statistics().inflight_batches == max_inflight
        assert hot.statistics().queued == 30 - max_inflight
        cold_task = asyncio.ensure_future(cold.submit({"x": -np.ones((1, 1))}))
        await asyncio.sleep(0)
        assert cold.statistics().inflight_batches == 1
        run.open()
        await cold_task
        await asyncio.gather(*hot_tasks)

    try:
        drive(main())
    finally:
        run.open()
        pool.shutdown(wait=True)
    order = ["cold" if call["x"][0, 0] < 0 else "hot" for call in run.calls]
    assert len(order) == 31
    assert order.index("cold") == max_inflight


# -- requirement 5: statistics and observer events -----------------------------------------


def test_statistics_and_events_count_everything(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_batch_size=4, allowed_batch_sizes=(4,), max_queue_size=3)

    async def main() -> None:
        first = await busy(rig)  # batch 1: 1 row, padded to 4
        a, b = rig.submit(rows_of(1, start=10.0)), rig.submit(rows_of(2, start=20.0))
        expiring = rig.submit(rows_of(1, start=30.0), deadline=rig.clock() + 100)
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        with pytest.raises(ServingError):  # rejected: the queue is full
            await rig.batcher.submit({"x": rows_of(1)})
        with pytest.raises(ServingError):  # expired before it was queued
            await rig.batcher.submit({"x": rows_of(1)}, deadline=rig.clock() - 1)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        d = rig.submit(rows_of(3, start=40.0))  # room again: a's place was freed
        await until(lambda: rig.stats().requests == 5, "d queued")
        d.cancel()
        with pytest.raises(asyncio.CancelledError):
            await d
        e = rig.submit(rows_of(1, start=50.0))
        await until(lambda: rig.stats().queued == 3, "b, expiring and e queued")
        assert rig.stats() == BatcherStatistics(
            requests=6,
            batches=1,
            rows=1,
            padded_rows=3,
            rejected=1,
            expired=1,
            cancelled=2,
            queued=3,
            inflight_batches=1,
        )
        rig.clock.advance(200)  # the deadline request expires when the next batch is formed
        rig.run.open()
        await asyncio.gather(first, b, e)
        with pytest.raises(ServingError) as info:
            await expiring
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED

    drive(main())
    assert rig.stats() == BatcherStatistics(
        requests=6, batches=2, rows=4, padded_rows=4, rejected=1, expired=2, cancelled=2
    )
    assert rig.run.rows() == [4, 4]
    assert rig.events.batches == [(1, 1), (3, 2)]
    assert rig.events.queue_seconds == [[0.0], [200.0, 200.0]]
    assert rig.events.dropped == ["queue_full", "deadline", "cancelled", "cancelled", "deadline"]


# -- requirement 6: failures, unbatchable signatures ---------------------------------------


def test_a_model_failure_reaches_every_caller_in_the_batch_and_the_next_batch_works(
    make_rig: Callable[..., Rig],
) -> None:
    def fn(inputs: Mapping[str, np.ndarray]) -> Arrays:
        if (inputs["x"] == 666.0).any():
            raise ServingError(ErrorKind.INTERNAL, "RuntimeError: poisoned batch")
        return rowwise(inputs)

    rig = make_rig(FakeRun(fn), max_batch_size=8)
    poison = np.full((1, 3), 666.0, dtype=np.float32)
    innocent = [rows_of(1, start=1.0), rows_of(2, start=5.0)]

    async def main() -> None:
        first = await busy(rig)
        tasks = [rig.submit(innocent[0]), rig.submit(poison), rig.submit(innocent[1])]
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        rig.run.open()
        await first
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, ServingError)
            assert outcome.kind is ErrorKind.INTERNAL and "poisoned" in outcome.message
        assert_own_rows(await rig.batcher.submit({"x": innocent[1]}), innocent[1])

    drive(main())
    assert rig.run.rows() == [1, 4, 2]


def test_outputs_that_cannot_be_split_fail_every_caller_of_the_batch(
    make_rig: Callable[..., Rig],
) -> None:
    run = FakeRun(lambda inputs: {"y": np.zeros(1, dtype=np.float32)})
    rig = make_rig(run, max_batch_size=8)

    async def main() -> list[Any]:
        first = await busy(rig)
        tasks = [rig.submit(rows_of(1)), rig.submit(rows_of(2))]
        await until(lambda: rig.stats().queued == 2, "2 queued requests")
        rig.run.open()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    for outcome in drive(main()):
        assert isinstance(outcome, ServingError) and outcome.kind is ErrorKind.INTERNAL
        assert "cannot be split into the 3 rows of a batch" in outcome.message


def test_an_unbatchable_signature_runs_each_request_alone(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(can_batch=False, max_batch_size=8, allowed_batch_sizes=(8,))
    xs = [rows_of(n, start=10.0 * n) for n in (1, 2, 3)]

    async def main() -> list[Arrays]:
        first = await busy(rig)
        tasks = [rig.submit(x) for x in xs]
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        rig.run.open()
        results = await asyncio.gather(first, *tasks)
        return results[1:]

    for result, x in zip(drive(main()), xs, strict=True):
        assert_own_rows(result, x)
    assert rig.run.rows() == [1, 1, 2, 3]  # alone and unpadded
    assert rig.stats().padded_rows == 0


def test_batching_disabled_in_the_options_runs_each_request_alone(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(enabled=False, max_batch_size=8)

    async def main() -> None:
        first = await busy(rig)
        tasks = [rig.submit(rows_of(1, start=float(i))) for i in range(3)]
        await until(lambda: rig.stats().queued == 3, "3 queued requests")
        rig.run.open()
        await asyncio.gather(first, *tasks)

    drive(main())
    assert rig.run.rows() == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("inputs", "outputs", "expected"),
    [
        ({"x": ("float32", (None, 3))}, {"y": ("float32", (None,))}, True),
        ({"x": ("float32", (None,)), "z": ("int64", (None, 2, 2))}, None, True),
        ({"x": ("float32", (2, 3))}, None, False),  # fixed dimension 0
        ({"x": ("float32", None)}, None, False),  # unknown rank
        ({"x": ("float32", ())}, None, False),  # scalar
        ({"x": ("float32", (None, 3))}, {"y": ("float32", ())}, False),  # scalar output
    ],
)
def test_batchable_needs_a_variable_dimension_0_everywhere(
    inputs: dict[str, Any], outputs: dict[str, Any] | None, expected: bool
) -> None:
    assert batchable(signature(inputs=inputs, outputs=outputs)) is expected


# -- the property: every caller gets exactly the function of its own rows ------------------

FEATURES = [((3,), "float32"), ((3,), "float64"), ((2, 2), "float32"), ((), "int64")]


@st.composite
def batching_cases(draw: st.DrawFn) -> tuple[BatchingOptions, list[tuple[int, int]]]:
    max_batch_size = draw(st.integers(1, 24))
    allowed = draw(st.lists(st.integers(1, 16), max_size=4, unique=True))
    options = BatchingOptions(
        max_batch_size=max_batch_size,
        allowed_batch_sizes=tuple(sorted(allowed)),
        max_inflight_batches=draw(st.integers(1, 2)),
    )
    kinds = draw(st.integers(1, len(FEATURES)))  # how many shapes/dtypes this example mixes
    requests = draw(
        st.lists(
            st.tuples(st.integers(1, 8), st.integers(0, kinds - 1)),
            min_size=2,
            max_size=12,
        )
    )
    return options, requests


def feature_rows(index: int, rows: int, kind: int) -> np.ndarray:
    shape, dtype = FEATURES[kind]
    size = rows * int(np.prod(shape, dtype=np.int64))
    values = np.arange(size, dtype=np.int64) % 7 + 10 * index
    return values.reshape((rows, *shape)).astype(dtype)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batching_cases())
def test_property_every_caller_gets_the_function_of_its_own_rows(
    case: tuple[BatchingOptions, list[tuple[int, int]]],
) -> None:
    options, requests = case
    run = FakeRun()
    events = Events()
    inputs = [
        {"x": feature_rows(i, rows, kind), "id": np.full(rows, i, dtype=np.int64)}
        for i, (rows, kind) in enumerate(requests)
    ]

    async def main(pool: ThreadPoolExecutor) -> list[Arrays]:
        batcher = Batcher(run, pool, options, True, events, FakeClock())
        tasks = [asyncio.ensure_future(batcher.submit(request)) for request in inputs]
        await until(lambda: batcher.statistics().requests == len(tasks), "every submit")
        run.open()
        results = await asyncio.gather(*tasks)
        stats = batcher.statistics()
        real = [sum(requests[i][0] for i in set(call["id"].tolist())) for call in run.calls]
        assert stats == BatcherStatistics(
            requests=len(inputs),
            batches=len(run.calls),
            rows=sum(rows for rows, _ in requests),
            padded_rows=sum(len(call["x"]) for call in run.calls) - sum(real),
        )
        return results

    pool = ThreadPoolExecutor(2)
    try:
        results = drive(main(pool))
    finally:
        run.open()
        pool.shutdown(wait=True)

    for request, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], row_function(request["x"]))
        assert result["y"].dtype == request["x"].dtype
        np.testing.assert_array_equal(result["id"], request["id"])

    seen: list[int] = []
    real: list[int] = []
    allowed = options.allowed_batch_sizes
    for call in run.calls:
        ids = sorted(set(call["id"].tolist()))
        seen.extend(ids)
        kinds = {requests[i][1] for i in ids}
        assert len(kinds) == 1, f"a batch mixed shapes/dtypes {kinds}"
        shape, dtype = FEATURES[kinds.pop()]
        assert call["x"].shape[1:] == shape and call["x"].dtype == np.dtype(dtype)
        rows = sum(requests[i][0] for i in ids)
        real.append(rows)
        if rows > options.max_batch_size:
            assert len(ids) == 1, "an oversized request was merged"
            expected = rows
        else:
            expected = min((size for size in allowed if size >= rows), default=rows)
        assert len(call["x"]) == expected, (rows, allowed)
        for name in ("x", "id"):  # padding repeats the batch's last real row
            assert (call[name][rows:] == call[name][rows - 1]).all()
    assert sorted(seen) == list(range(len(inputs))), "a request ran twice or never"
    assert sum(requests for _, requests in events.batches) == len(inputs)
    event("merged" if any(len(set(c["id"].tolist())) > 1 for c in run.calls) else "no merge")
    event("padded" if sum(len(c["x"]) for c in run.calls) > sum(real) else "not padded")


# -- end to end through ServingService -----------------------------------------------------


@dataclass
class Stack:
    """A ServingService over a ModelManager whose FakeModels share one run gate."""

    root: Path
    gate: threading.Event
    loader: FakeLoader
    manager: ModelManager
    service: ServingService
    observer: RecordingObserver

    def add(self, name: str, **fields: Any) -> FakeModel:
        make_repository(self.root, {name: [1]})
        self.manager.add_model(model_config(name, self.root / name, **fields))
        self.manager.wait_for_loads(GATE_TIMEOUT)
        return self.loader.model((self.root / name / "1").resolve())

    def infer(self, name: str, x: np.ndarray, **kwargs: Any) -> asyncio.Task[InferenceResult]:
        return asyncio.ensure_future(self.service.infer(ModelRef(name), {"x": x}, **kwargs))

    def batchers(self, name: str) -> dict[Any, Batcher]:
        return self.manager.get(name).versions[1].batchers


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(batching: BatchingConfig | None = None) -> Stack:
        gate = threading.Event()
        outputs = {"y": ("float32", (None, 3)), "z": ("float32", (None, 3))}
        sig = signature(outputs=outputs)

        def factory(config: Any, path: Path) -> FakeModel:
            return FakeModel([sig], factor=2.0, run_gate=gate)

        loader = FakeLoader(factory)
        observer = RecordingObserver()
        manager = ModelManager(loader, observer=observer)
        service = ServingService(manager, inference_threads=4, observer=observer, batching=batching)
        root = tmp_path / f"repo{len(stacks)}"
        root.mkdir()
        stack = Stack(root, gate, loader, manager, service, observer)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.gate.set()
        stack.service.close()


def call_rows(model: FakeModel) -> list[int]:
    return [len(inputs["x"]) for _, inputs, _ in model.calls]


def queued(stack: Stack, *names: str) -> int:
    return sum(b.statistics().queued for name in names for b in stack.batchers(name).values())


def test_service_batches_concurrent_requests_end_to_end(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(BatchingConfig(max_inflight_batches=1))
    model = stack.add("m")
    xs = [rows_of(n, start=10.0 * i) for i, n in enumerate([1, 2, 1, 3])]
    z_only = rows_of(1, start=99.0)

    async def main() -> tuple[list[InferenceResult], InferenceResult]:
        first = stack.infer("m", xs[0])
        await until(model.run_started.is_set, "the first run")
        rest = [stack.infer("m", x) for x in xs[1:]]
        # Another output selection has a batcher of its own, but shares the version's
        # in-flight limit: it waits for a free slot, after the batcher that waited first.
        other = stack.infer("m", z_only, output_names=["z"])
        await until(lambda: queued(stack, "m") == 4 and len(model.calls) == 1, "4 queued")
        stack.gate.set()
        return list(await asyncio.gather(first, *rest)), await other

    results, other = drive(main())
    for result, x in zip(results, xs, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], x * 2)
        assert list(result.outputs) == ["y", "z"]
    np.testing.assert_array_equal(other.outputs["z"], z_only * 2)
    assert list(other.outputs) == ["z"]
    assert call_rows(model) == [1, 6, 1]
    assert set(stack.batchers("m")) == {("serving_default", None), ("serving_default", ("z",))}
    assert stack.observer.batches == [("m", "1", 1, 1), ("m", "1", 6, 3), ("m", "1", 1, 1)]


def test_a_models_own_batching_config_wins_over_the_server_default(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(BatchingConfig(max_batch_size=2, max_inflight_batches=1))
    own = stack.add("own", batching=BatchingConfig(max_batch_size=8, max_inflight_batches=1))
    default = stack.add("default")

    async def main() -> None:
        firsts = [stack.infer("own", rows_of(1)), stack.infer("default", rows_of(1))]
        await until(lambda: own.calls != [] and default.calls != [], "both first runs")
        tasks = [stack.infer(name, rows_of(1)) for name in ("own", "default") for _ in range(4)]
        await until(lambda: queued(stack, "own", "default") == 8, "8 queued")
        stack.gate.set()
        await asyncio.gather(*firsts, *tasks)

    drive(main())
    assert call_rows(own) == [1, 4]
    assert call_rows(default) == [1, 2, 2]
    assert [b.options.max_batch_size for b in stack.batchers("own").values()] == [8]
    assert [b.options.max_batch_size for b in stack.batchers("default").values()] == [2]


def test_batching_disabled_for_a_model_runs_each_request_alone_up_to_half_the_pool(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(BatchingConfig(max_inflight_batches=1))
    model = stack.add("m", batching=BatchingConfig(enabled=False))
    xs = [rows_of(1, start=float(i)) for i in range(3)]

    async def main() -> list[InferenceResult]:
        tasks = [stack.infer("m", x) for x in xs]
        # Two run at once (half the 4 inference threads), never merged; the third waits.
        await until(lambda: len(model.calls) == 2 and queued(stack, "m") == 1, "2 runs")
        await asyncio.sleep(0.02)
        assert len(model.calls) == 2
        stack.gate.set()
        return list(await asyncio.gather(*tasks))

    for result, x in zip(drive(main()), xs, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], x * 2)
    assert call_rows(model) == [1, 1, 1]
    assert [b.limit.limit for b in stack.batchers("m").values()] == [2]
    assert stack.observer.batches == [("m", "1", 1, 1)] * 3


@pytest.mark.parametrize("enabled", [True, False])
def test_a_request_whose_deadline_already_passed_never_runs(
    make_stack: Callable[..., Stack], enabled: bool
) -> None:
    stack = make_stack(BatchingConfig(enabled=enabled))
    model = stack.add("m")
    stack.gate.set()

    async def main() -> None:
        await stack.infer("m", rows_of(1))  # loaded and available: the fast lease path
        with pytest.raises(ServingError) as info:
            await stack.service.infer(
                ModelRef("m"), {"x": rows_of(1, start=500.0)}, deadline=time.monotonic() - 1
            )
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED

    drive(main())
    assert call_rows(model) == [1]
    assert [r.error for r in stack.observer.requests] == [None, "DEADLINE_EXCEEDED"]


def test_a_service_deadline_expires_a_queued_request(make_stack: Callable[..., Stack]) -> None:
    # The service's deadlines are on time.monotonic(), so this test needs a real (short) one.
    stack = make_stack(BatchingConfig(max_inflight_batches=1))
    model = stack.add("m")
    doomed = rows_of(1, start=500.0)

    async def main() -> None:
        first = stack.infer("m", rows_of(1))
        await until(model.run_started.is_set, "the first run")
        with pytest.raises(ServingError) as info:
            await stack.service.infer(
                ModelRef("m"), {"x": doomed}, deadline=time.monotonic() + 0.05
            )
        assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED
        stack.gate.set()
        await first
        await stack.infer("m", rows_of(1))

    drive(main())
    assert call_rows(model) == [1, 1]
    assert not any(np.isin(500.0, inputs["x"]) for _, inputs, _ in model.calls)
    assert stack.observer.dropped == [("m", "1", "deadline")]
    assert [r.error for r in stack.observer.requests] == ["DEADLINE_EXCEEDED", None, None]


def test_a_cancelled_service_request_is_never_run(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(BatchingConfig(max_inflight_batches=1))
    model = stack.add("m")

    async def main() -> None:
        first = stack.infer("m", rows_of(1))
        await until(model.run_started.is_set, "the first run")
        gone = stack.infer("m", rows_of(1, start=500.0))
        await until(lambda: queued(stack, "m") == 1, "1 queued")
        gone.cancel()  # what a client disconnect does to the request's task
        with pytest.raises(asyncio.CancelledError):
            await gone
        stack.gate.set()
        await first

    drive(main())
    assert call_rows(model) == [1]
    assert stack.observer.dropped == [("m", "1", "cancelled")]
    assert [r.error for r in stack.observer.requests] == ["CANCELLED", None]


def test_a_model_failure_fails_the_whole_batch_through_the_service(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(BatchingConfig(max_inflight_batches=1))
    model = stack.add("m")
    model.fail_when = lambda inputs: bool((inputs["x"] == 666.0).any())
    poison = np.full((1, 3), 666.0, dtype=np.float32)

    async def main() -> None:
        first = stack.infer("m", rows_of(1))
        await until(model.run_started.is_set, "the first run")
        batch = [stack.infer("m", rows_of(1)), stack.infer("m", poison)]
        await until(lambda: queued(stack, "m") == 2, "2 queued")
        stack.gate.set()
        await first
        for outcome in await asyncio.gather(*batch, return_exceptions=True):
            assert isinstance(outcome, ServingError)
            assert outcome.kind is ErrorKind.INTERNAL
            assert outcome.message == "RuntimeError: fake model failure"
        result = await stack.infer("m", rows_of(2))
        np.testing.assert_array_equal(result.outputs["y"], rows_of(2) * 2)

    drive(main())
    assert call_rows(model) == [1, 2, 2]
