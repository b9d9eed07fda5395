"""The memory budget, eviction, reloads, version refresh and management over a fake runtime.

Fake model versions declare their size on disk (``make_repository(..., size=N)``) and
``FakeMemory`` makes resident memory follow the fake models currently loaded, so estimates,
measurements and evictions are exact. pytest-asyncio is not used: each test drives its
coroutines with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfmux.config import BatchingConfig, ModelConfig
from tfmux.core.lifecycle import ModelVersion, State
from tfmux.core.manager import ModelLoader, ModelManager
from tfmux.core.memory import format_bytes
from tfmux.core.policy import Resident, eviction_victims
from tfmux.core.service import Inputs, Management, ServingService
from tfmux.errors import ErrorKind, ServingError
from tfmux.transports.rest import HTTP_STATUS
from tfmux.types import InferenceResult, ModelRef, VersionStatus

from .fakes import (
    GATE_TIMEOUT,
    FakeLoader,
    FakeMemory,
    FakeModel,
    make_repository,
    model_config,
    wait_until,
)

U = 1024 * 1024  # a fake model's declared size on disk
X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


class FakeClock:
    """The manager's clock (failure backoff), moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Stack:
    """A manager with a memory budget and a service, over one fake loader and memory."""

    root: Path
    loader: FakeLoader
    memory: FakeMemory
    manager: ModelManager
    service: ServingService

    def add(self, name: str, versions: Sequence[int] = (1,), size: int = U, **fields: Any) -> None:
        """Put ``versions`` of ``name`` (``size`` bytes each) on disk and serve it; eager
        loads are waited for. Models are lazy unless ``load="eager"`` is given."""
        make_repository(self.root, {name: versions}, size)
        fields.setdefault("load", "lazy")
        self.manager.add_model(model_config(name, self.root / name, **fields))
        self.manager.wait_for_loads(GATE_TIMEOUT)

    async def infer_async(
        self, name: str, version: int | None = None, inputs: Inputs | None = None
    ) -> InferenceResult:
        return await self.service.infer(ModelRef(name, version), inputs or {"x": X})

    def infer(self, name: str, version: int | None = None) -> InferenceResult:
        return asyncio.run(self.infer_async(name, version))

    def infer_error(self, name: str, version: int | None = None) -> ServingError:
        with pytest.raises(ServingError) as info:
            self.infer(name, version)
        return info.value

    def path(self, name: str, version: int = 1) -> Path:
        return (self.root / name / str(version)).resolve()

    def version(self, name: str, version: int = 1) -> ModelVersion:
        return self.manager.get(name).versions[version]

    def states(self, name: str) -> list[tuple[int, str]]:
        return [(s.version, s.state) for s in self.service.status(name)]

    def loaded(self) -> set[str]:
        """Names of the models with an AVAILABLE version."""
        return {
            served.config.name
            for served in self.manager.models()
            if any(mv.state is State.AVAILABLE for mv in served.versions.values())
        }


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(
        loader: FakeLoader | None = None,
        *,
        budget: float | None = None,
        runtime: ModelLoader | None = None,
        scale: float = 1.0,
        management: Management | None = None,
        **manager_kwargs: Any,
    ) -> Stack:
        """``budget`` in units of U; ``runtime`` wraps ``loader`` (the manager calls it)."""
        loader = loader or FakeLoader()
        memory = FakeMemory(loader, base=100 * U, scale=scale)
        limit = None if budget is None else int(budget * U)
        manager = ModelManager(
            runtime or loader, memory_budget=limit, probe=memory, **manager_kwargs
        )
        service = ServingService(manager, inference_threads=4, management=management)
        root = tmp_path / f"repo{len(stacks)}"
        root.mkdir()
        stack = Stack(root, loader, memory, manager, service)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.service.close()


def gated(gates: dict[str, threading.Event]) -> FakeLoader:
    """A loader whose models of the named models hold every run until their gate opens."""

    def factory(config: ModelConfig, path: Path) -> FakeModel:
        return FakeModel(factor=float(path.name), run_gate=gates.get(config.name))

    return FakeLoader(factory)


def gated_versions(gates: dict[int, threading.Event]) -> FakeLoader:
    """A loader whose models of the given versions hold every run until their gate opens."""

    def factory(config: ModelConfig, path: Path) -> FakeModel:
        return FakeModel(factor=float(path.name), run_gate=gates.get(int(path.name)))

    return FakeLoader(factory)


async def in_flight(stack: Stack, name: str) -> asyncio.Future[InferenceResult]:
    """Start a request to ``name`` and return once its model is running it."""
    request = asyncio.ensure_future(stack.infer_async(name))
    await asyncio.to_thread(
        wait_until, lambda: bool(stack.loader.models.get(stack.path(name))), f"{name} loaded"
    )
    model = stack.loader.models[stack.path(name)][-1]
    assert await asyncio.to_thread(model.run_started.wait, GATE_TIMEOUT)
    return request


# -- the eviction policy, pure ----------------------------------------------------------


def test_eviction_victims_examples() -> None:
    a = Resident(("a", 1), 10, last_used=3.0, evictable=True)
    b = Resident(("b", 1), 10, last_used=1.0, evictable=True)
    c = Resident(("c", 1), 10, last_used=2.0, evictable=False)
    assert eviction_victims([a, b, c], needed=10, budget=40) == []
    assert eviction_victims([a, b, c], needed=10, budget=30) == [("b", 1)]
    assert eviction_victims([a, b, c], needed=15, budget=30) == [("b", 1), ("a", 1)]
    assert eviction_victims([a, b, c], needed=25, budget=30) is None
    assert eviction_victims([], needed=31, budget=30) is None


residents_strategy = st.lists(
    st.tuples(st.integers(0, 1000), st.integers(0, 20), st.booleans()), max_size=12
).map(
    lambda specs: [
        Resident((f"m{i}", 1), size, float(last_used), evictable)
        for i, (size, last_used, evictable) in enumerate(specs)
    ]
)


@given(
    residents=residents_strategy,
    needed=st.integers(0, 3000),
    budget=st.integers(0, 6000),
)
def test_eviction_victims_are_least_recently_used_and_free_enough(
    residents: list[Resident], needed: int, budget: int
) -> None:
    victims = eviction_victims(residents, needed, budget)
    total = sum(r.size for r in residents)
    evictable = [r for r in residents if r.evictable]
    if total - sum(r.size for r in evictable) + needed > budget:
        assert victims is None  # even evicting every evictable version is not enough
        return
    assert victims is not None
    by_key = {r.key: r for r in residents}
    chosen = [by_key[key] for key in victims]
    assert len(set(victims)) == len(victims)
    assert all(r.evictable for r in chosen)
    assert total - sum(r.size for r in chosen) + needed <= budget  # frees enough
    if chosen:  # ... and no more than it must: without the last victim it would not fit
        assert total - sum(r.size for r in chosen[:-1]) + needed > budget
    spared = [r for r in evictable if r.key not in victims]
    assert all(v.last_used <= s.last_used for v in chosen for s in spared)
    assert [r.last_used for r in chosen] == sorted(r.last_used for r in chosen)


# -- least-recently-used eviction -------------------------------------------------------


def test_least_recently_used_model_is_evicted_and_requests_refresh_recency(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(budget=3.5)
    for name in "abcd":
        stack.add(name)
    for name in "abca":  # a's second request makes b the least recently used
        stack.infer(name)
    assert stack.loaded() == {"a", "b", "c"}

    stack.infer("d")
    assert stack.loaded() == {"a", "c", "d"}
    assert stack.loader.model(stack.path("b")).closed
    assert stack.infer("b").model_name == "b"  # now c is the oldest
    assert stack.loaded() == {"a", "b", "d"}
    assert stack.manager.budget.used() <= 3.5 * U


def test_pinned_model_is_never_evicted(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(budget=2.5)
    stack.add("p", pinned=True, load="eager")
    for name in "abc":
        stack.add(name)
        stack.infer(name)
        assert "p" in stack.loaded()
    assert stack.loaded() == {"p", "c"}
    assert not stack.loader.model(stack.path("p")).closed
    assert stack.infer("p").model_name == "p"


def test_model_with_a_request_in_flight_is_not_evicted(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack(gated({"a": gate}), budget=2.5)
    for name in "abc":
        stack.add(name)

    async def main() -> InferenceResult:
        request = await in_flight(stack, "a")  # a is the least recently used, but busy
        await stack.infer_async("b")
        await stack.infer_async("c")
        assert stack.loaded() == {"a", "c"}
        assert not request.done()
        gate.set()
        return await request

    assert asyncio.run(main()).model_name == "a"
    assert stack.states("b") == [(1, "END")]


def test_model_with_a_request_queued_in_its_batcher_is_not_evicted(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(budget=2.5)
    waits = BatchingConfig(max_batch_size=2, batch_timeout_micros=60_000_000)
    stack.add("q", batching=waits)  # a lone row waits in the queue for a second one
    stack.add("b")
    stack.add("c")
    two_rows = {"x": np.concatenate([X, X])}

    async def main() -> list[InferenceResult]:
        await stack.infer_async("q", inputs=two_rows)  # a full batch runs at once
        queued = asyncio.ensure_future(stack.infer_async("q"))
        q = stack.version("q")
        await asyncio.to_thread(wait_until, lambda: q.leases == 1, "q's request queued")
        await stack.infer_async("b")
        await stack.infer_async("c")
        assert stack.loaded() == {"q", "c"}
        assert len(stack.loader.model(stack.path("q")).calls) == 1  # still queued
        return [await stack.infer_async("q"), await queued]  # the pair makes a batch

    assert [r.model_name for r in asyncio.run(main())] == ["q", "q"]
    assert stack.states("b") == [(1, "END")]


# -- the too-big answer -------------------------------------------------------------------


def test_model_bigger_than_the_budget_is_resource_exhausted(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(budget=2.5)
    stack.add("a")
    stack.add("big", size=3 * U)
    stack.infer("a")
    error = stack.infer_error("big")
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert HTTP_STATUS[error.kind] == 429
    needs = format_bytes(stack.version("big").memory_estimate)
    assert f"model big version 1 needs about {needs}" in error.message
    assert "the memory budget is 2.5 MiB" in error.message
    [status] = stack.service.status("big")
    assert (status.state, status.error_code) == ("END", "RESOURCE_EXHAUSTED")
    assert stack.infer("a").model_name == "a"  # evicted for nothing: a keeps serving
    assert stack.loader.loads[stack.path("big")] == 0


def test_too_big_when_nothing_evictable_then_retried_at_once_when_room_frees(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack(gated({"a": gate}), budget=2.5, clock=FakeClock())
    stack.add("p", pinned=True, load="eager")
    stack.add("a")
    stack.add("c")

    async def main() -> None:
        request = await in_flight(stack, "a")
        with pytest.raises(ServingError) as info:
            await stack.infer_async("c")
        assert info.value.kind is ErrorKind.RESOURCE_EXHAUSTED
        needs = format_bytes(stack.version("c").memory_estimate)
        assert f"needs about {needs}, but the memory budget is 2.5 MiB" in info.value.message
        assert (await stack.infer_async("p")).model_name == "p"  # others keep serving
        assert not request.done()
        gate.set()
        assert (await request).model_name == "a"

    asyncio.run(main())
    assert stack.infer("c").model_name == "c"  # no backoff after RESOURCE_EXHAUSTED
    assert stack.loaded() == {"p", "c"}
    assert stack.states("a") == [(1, "END")]


# -- reloading after eviction -------------------------------------------------------------


def test_evicted_model_reloads_on_its_next_request(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(budget=1.5)
    stack.add("a")
    stack.add("b")
    stack.infer("a")
    stack.infer("b")
    assert stack.service.status("a") == [VersionStatus(1, "END")]
    assert stack.infer("a").model_name == "a"
    assert stack.states("a") == [(1, "AVAILABLE")]
    assert stack.states("b") == [(1, "END")]
    assert stack.loader.loads[stack.path("a")] == 2


def test_latest_routes_to_the_newest_version_after_its_eviction(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(budget=2.5)
    stack.add("m", [1, 2], version_policy="all")
    stack.add("x")
    assert stack.infer("m").version == 2
    assert stack.infer("m", version=1).version == 1
    stack.infer("x")  # evicts m's version 2, the least recently used
    assert stack.states("m") == [(2, "END"), (1, "AVAILABLE")]
    result = stack.infer("m")
    assert result.version == 2
    np.testing.assert_array_equal(result.outputs["y"], X * 2)
    assert stack.loader.loads[stack.path("m", 2)] == 2


def finish_load_then_load(stack: Stack, name: str, gate: threading.Event, other: str) -> None:
    """On the event loop's thread (so no request resumes meanwhile): let ``name``'s held load
    finish, then load ``other``, whose admission needs room."""
    gate.set()
    wait_until(lambda: stack.version(name).state is State.AVAILABLE, f"{name} loaded")
    stack.manager.load_model(other)


def test_a_just_loaded_model_counts_as_recently_used(make_stack: Callable[..., Stack]) -> None:
    gate = threading.Event()
    gate.set()
    stack = make_stack(FakeLoader(gate=gate), budget=2.5)
    for name in "abc":
        stack.add(name)
    stack.infer("c")  # used after a was configured, before a was loaded
    gate.clear()

    async def main() -> InferenceResult:
        request = asyncio.ensure_future(stack.infer_async("a"))
        await asyncio.to_thread(wait_until, lambda: stack.loader.total_loads == 2, "a loading")
        finish_load_then_load(stack, "a", gate, "b")
        return await request

    assert asyncio.run(main()).model_name == "a"
    assert stack.loaded() == {"a", "b"}
    assert stack.loader.loads[stack.path("a")] == 1


def test_a_model_evicted_before_its_request_took_it_is_loaded_again(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack(FakeLoader(gate=gate), budget=1.5)
    stack.add("a")
    stack.add("b")

    async def main() -> InferenceResult:
        request = asyncio.ensure_future(stack.infer_async("a"))
        await asyncio.to_thread(wait_until, lambda: stack.loader.total_loads == 1, "a loading")
        finish_load_then_load(stack, "a", gate, "b")  # only one fits: b evicts a
        assert stack.states("a") == [(1, "END")]
        return await request

    assert asyncio.run(main()).model_name == "a"
    assert stack.loaded() == {"a"}
    assert stack.infer("b").model_name == "b"


# -- memory: estimated, measured, shown ---------------------------------------------------


def test_a_load_that_ran_alone_is_measured_and_shown(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(budget=10)
    stack.add("a", load="eager")
    stack.add("b", size=2 * U, load="eager")
    assert stack.service.status("a") == [
        VersionStatus(1, "AVAILABLE", memory_bytes=U, memory_measured=True)
    ]
    assert stack.service.status("b")[0].memory_bytes == 2 * U
    assert stack.manager.budget.used() == 3 * U
    assert ("a", stack.service.status("a")[0]) in stack.service.repository_index()

    releases = stack.memory.releases
    asyncio.run(stack.service.unload_model("a"))
    assert stack.service.status("a") == [VersionStatus(1, "END")]
    assert stack.manager.budget.used() == 2 * U
    assert stack.memory.releases > releases  # freed memory handed back to the OS
    assert stack.infer("b").model_name == "b"


def test_without_a_budget_overlapping_loads_keep_their_estimates(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack(FakeLoader(gate=gate))
    for name in "ab":
        make_repository(stack.root, {name: [1]}, U)
        stack.manager.add_model(model_config(name, stack.root / name))
    wait_until(lambda: stack.loader.total_loads == 2, "both loads running")
    gate.set()
    stack.manager.wait_for_loads(GATE_TIMEOUT)
    for name in "ab":
        [status] = stack.service.status(name)
        estimate = stack.version(name).memory_estimate
        assert estimate >= U  # from the size on disk
        assert status == VersionStatus(1, "AVAILABLE", memory_bytes=estimate)
    assert stack.manager.budget.used() == sum(stack.version(n).memory_estimate for n in "ab")

    stack.add("c", load="eager")  # alone: measured
    assert stack.service.status("c")[0].memory_measured
    assert stack.infer("a").model_name == "a"


def test_under_a_budget_loads_are_measured_one_at_a_time(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    loader = FakeLoader(gate=gate)
    tracked = Concurrency(loader)
    stack = make_stack(loader, runtime=tracked, budget=10, max_concurrent_loads=2, scale=1.5)
    for name in "abc":
        make_repository(stack.root, {name: [1]}, U)
        stack.manager.add_model(model_config(name, stack.root / name))
    wait_until(lambda: stack.loader.total_loads == 1, "one load running")
    assert tracked.now == 1  # the others wait for the measurement window
    gate.set()
    stack.manager.wait_for_loads(GATE_TIMEOUT)
    assert tracked.peak == 1
    for name in "abc":
        [status] = stack.service.status(name)
        assert status.memory_measured
        assert status.memory_bytes == 1.5 * U  # what it really cost, not the estimate
    assert stack.manager.budget.used() == 3 * 1.5 * U
    assert stack.infer("b").model_name == "b"


def test_estimates_move_toward_measured_costs(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(budget=50, scale=2.0)  # models cost twice their size on disk

    def ratios(names: str) -> list[float]:
        for name in names:
            stack.add(name)
            stack.infer(name)
            assert stack.version(name).memory_measured == stack.memory.scale * U
        return [stack.version(name).memory_estimate / U for name in names]

    rising = ratios("abc")
    assert rising == sorted(set(rising))
    assert rising[0] > 1.0 and rising[-1] < 2.0
    stack.memory.scale = 0.5  # later models cost half their size
    falling = ratios("def")
    assert falling == sorted(set(falling), reverse=True)
    assert falling[0] < 2.0 and falling[-1] > 0.5


# -- parallel loads and single flight -----------------------------------------------------


class Concurrency:
    """Wraps a loader and counts the loads in progress (now and at most)."""

    def __init__(self, loader: FakeLoader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __call__(self, config: ModelConfig, path: Path) -> FakeModel:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return self._loader(config, path)
        finally:
            with self._lock:
                self.now -= 1


def test_loads_of_different_models_run_in_parallel_up_to_the_limit(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    loader = FakeLoader(gate=gate)
    tracked = Concurrency(loader)
    stack = make_stack(loader, runtime=tracked, max_concurrent_loads=2)  # no budget
    for name in "abc":
        stack.add(name)

    async def main() -> list[InferenceResult]:
        requests = asyncio.gather(*(stack.infer_async(name) for name in "abc"))
        await asyncio.to_thread(wait_until, lambda: loader.total_loads == 2, "two loads")
        assert tracked.now == 2  # the third waits for a load thread
        gate.set()
        return await requests

    assert [r.model_name for r in asyncio.run(main())] == ["a", "b", "c"]
    assert tracked.peak == 2


def test_request_to_a_loaded_model_completes_while_another_load_is_held(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    gate.set()
    stack = make_stack(FakeLoader(gate=gate), budget=10)
    stack.add("a", load="eager")
    stack.add("b")
    gate.clear()

    async def main() -> None:
        slow = asyncio.ensure_future(stack.infer_async("b"))
        await asyncio.to_thread(wait_until, lambda: stack.loader.total_loads == 2, "b loading")
        assert (await stack.infer_async("a")).model_name == "a"
        assert not slow.done()
        gate.set()
        assert (await slow).model_name == "b"

    asyncio.run(main())


def test_concurrent_first_requests_load_and_admit_once(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack(FakeLoader(gate=gate), budget=2.5)
    budget = stack.manager.budget
    admitted: list[str] = []
    admit = budget.admit

    def counting_admit(mv: ModelVersion) -> None:
        admitted.append(mv.name)
        admit(mv)

    budget.admit = counting_admit
    stack.add("b")

    async def main() -> list[InferenceResult]:
        requests = asyncio.gather(*(stack.infer_async("b") for _ in range(20)))
        await asyncio.to_thread(wait_until, lambda: stack.loader.total_loads == 1, "loading")
        gate.set()
        return await requests

    assert {r.model_name for r in asyncio.run(main())} == {"b"}
    assert admitted == ["b"]
    assert stack.loader.total_loads == 1
    assert budget.used() == U


# -- failures back off --------------------------------------------------------------------


def test_failed_load_is_retried_on_demand_only_after_its_backoff(
    make_stack: Callable[..., Stack],
) -> None:
    clock = FakeClock()
    stack = make_stack(FakeLoader(errors={1: RuntimeError("disk on fire")}), clock=clock)
    stack.add("m")
    loads = stack.loader.loads
    path = stack.path("m")

    for advance, expected_loads in [(0, 1), (0, 1), (1, 2), (1, 2), (1, 3), (3.9, 3), (0.1, 4)]:
        clock.advance(advance)
        error = stack.infer_error("m")
        assert error.kind is ErrorKind.UNAVAILABLE
        assert error.message == "model m version 1 failed to load: RuntimeError: disk on fire"
        assert loads[path] == expected_loads
    assert stack.service.status("m") == [
        VersionStatus(1, "END", "UNKNOWN", "RuntimeError: disk on fire")
    ]

    stack.loader.errors.clear()
    clock.advance(8)
    assert stack.infer("m").model_name == "m"
    assert loads[path] == 5


def test_explicit_load_retries_a_failed_model_at_once(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(errors={1: RuntimeError("disk on fire")}), clock=FakeClock())
    stack.add("m")
    assert stack.infer_error("m").kind is ErrorKind.UNAVAILABLE
    with pytest.raises(ServingError) as info:
        asyncio.run(stack.service.load_model("m"))
    assert info.value.kind is ErrorKind.UNKNOWN
    assert info.value.message == "failed to load model m: RuntimeError: disk on fire"
    assert stack.loader.loads[stack.path("m")] == 2

    stack.loader.errors.clear()
    asyncio.run(stack.service.load_model("m"))
    assert stack.loader.loads[stack.path("m")] == 3
    assert stack.infer("m").model_name == "m"


# -- unload on request --------------------------------------------------------------------


def test_unloaded_model_stays_unloaded_until_it_is_loaded(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(budget=10)
    stack.add("a", load="eager")
    stack.add("b", load="eager")
    asyncio.run(stack.service.unload_model("a"))
    assert stack.loader.model(stack.path("a")).close_count == 1
    for _ in range(2):
        error = stack.infer_error("a")
        assert error.kind is ErrorKind.UNAVAILABLE
        assert error.message == "model a version 1 has been unloaded"
    stack.manager.refresh("a")  # the poller does not bring it back either
    assert stack.states("a") == [(1, "END")]
    assert stack.loader.loads[stack.path("a")] == 1
    assert stack.infer("b").model_name == "b"

    asyncio.run(stack.service.load_model("a"))
    assert stack.infer("a").model_name == "a"
    assert stack.loader.loads[stack.path("a")] == 2


# -- refreshing versions from disk --------------------------------------------------------


def test_refresh_loads_a_new_version_before_retiring_the_old(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    gate.set()
    stack = make_stack(FakeLoader(gate=gate), budget=10)
    stack.add("m", [1], load="eager")
    gate.clear()
    make_repository(stack.root, {"m": [2]}, U)
    refresh = threading.Thread(target=stack.manager.refresh, args=("m",), daemon=True)
    refresh.start()
    wait_until(lambda: stack.loader.loads[stack.path("m", 2)] == 1, "version 2 loading")

    assert stack.states("m") == [(2, "LOADING"), (1, "AVAILABLE")]
    assert stack.infer("m").version == 1
    gate.set()
    refresh.join(GATE_TIMEOUT)
    assert not refresh.is_alive()
    assert stack.states("m") == [(2, "AVAILABLE")]
    assert stack.loader.model(stack.path("m", 1)).close_count == 1
    assert stack.infer("m").version == 2


def test_refresh_drains_and_unloads_a_removed_version(make_stack: Callable[..., Stack]) -> None:
    gate = threading.Event()
    stack = make_stack(gated_versions({1: gate}))
    stack.add("m", [1, 2], version_policy="all", load="eager")
    old = stack.loader.model(stack.path("m", 1))

    async def main() -> InferenceResult:
        request = asyncio.ensure_future(stack.infer_async("m", version=1))
        assert await asyncio.to_thread(old.run_started.wait, GATE_TIMEOUT)
        version = stack.version("m", 1)
        shutil.rmtree(stack.root / "m" / "1")
        refresh = asyncio.ensure_future(asyncio.to_thread(stack.manager.refresh, "m"))
        await asyncio.to_thread(wait_until, lambda: version.state is State.UNLOADING, "drain")
        assert not old.closed  # the request in flight still holds it
        assert (await stack.infer_async("m")).version == 2
        gate.set()
        await refresh
        return await request

    result = asyncio.run(main())
    np.testing.assert_array_equal(result.outputs["y"], X * 1)
    assert old.close_count == 1
    assert stack.states("m") == [(2, "AVAILABLE")]
    assert stack.infer_error("m", version=1).kind is ErrorKind.NOT_FOUND
    assert stack.infer("m").version == 2


def test_refresh_keeps_the_old_version_when_the_new_one_fails(
    make_stack: Callable[..., Stack],
) -> None:
    clock = FakeClock()
    stack = make_stack(FakeLoader(errors={2: RuntimeError("half-written")}), clock=clock)
    stack.add("m", [1], load="eager")
    make_repository(stack.root, {"m": [2]}, U)
    stack.manager.refresh("m")
    assert stack.service.status("m") == [
        VersionStatus(2, "END", "UNKNOWN", "RuntimeError: half-written"),
        VersionStatus(1, "AVAILABLE", memory_bytes=U, memory_measured=True),
    ]
    assert stack.infer("m").version == 1
    stack.manager.refresh("m")  # within the backoff: not tried again
    assert stack.loader.loads[stack.path("m", 2)] == 1

    stack.loader.errors.clear()
    clock.advance(1)
    stack.manager.refresh("m")
    assert stack.states("m") == [(2, "AVAILABLE")]
    assert stack.infer("m").version == 2


# -- management ---------------------------------------------------------------------------


def test_disabled_management_is_permission_denied(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(management=Management(enabled=False))
    stack.add("m", load="eager")
    calls = [
        stack.service.load_model("m"),
        stack.service.unload_model("m"),
        stack.service.reconfigure([]),
    ]
    for call in calls:
        with pytest.raises(ServingError) as info:
            asyncio.run(call)
        assert info.value.kind is ErrorKind.PERMISSION_DENIED
    assert stack.infer("m").model_name == "m"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "s3cret", "bearer s3cret"])
def test_management_with_a_token_needs_it(
    make_stack: Callable[..., Stack], authorization: str | None
) -> None:
    stack = make_stack(management=Management(admin_token="s3cret"))
    stack.add("m", load="eager")
    with pytest.raises(ServingError) as info:
        asyncio.run(stack.service.unload_model("m", authorization))
    assert info.value.kind is ErrorKind.UNAUTHENTICATED
    assert stack.infer("m").model_name == "m"
    asyncio.run(stack.service.unload_model("m", "Bearer s3cret"))
    assert stack.states("m") == [(1, "END")]
    asyncio.run(stack.service.load_model("m", "Bearer s3cret"))
    assert stack.infer("m").model_name == "m"


def test_load_model_discovers_a_model_in_a_configured_repository(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    repository = make_repository(tmp_path / "models", {"fresh": [3]}, U)
    stack = make_stack(management=Management(repositories=(repository,)))
    asyncio.run(stack.service.load_model("fresh"))
    assert stack.states("fresh") == [(3, "AVAILABLE")]
    assert stack.infer("fresh").version == 3


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../x", ErrorKind.INVALID_ARGUMENT),
        ("", ErrorKind.INVALID_ARGUMENT),
        ("ghost", ErrorKind.NOT_FOUND),
    ],
)
def test_load_model_refuses_bad_or_unknown_names(
    make_stack: Callable[..., Stack], tmp_path: Path, name: str, kind: ErrorKind
) -> None:
    repository = make_repository(tmp_path / "models", {"real": [1]}, U)
    (tmp_path / "x").mkdir()  # '../x' from the repository: exists, but is not in it
    stack = make_stack(management=Management(repositories=(repository,)))
    with pytest.raises(ServingError) as info:
        asyncio.run(stack.service.load_model(name))
    assert info.value.kind is kind
    assert stack.manager.models() == []
    asyncio.run(stack.service.load_model("real"))
    assert stack.infer("real").model_name == "real"
