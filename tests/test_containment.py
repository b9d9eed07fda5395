"""Containment in the core, over the fake runtime: a waiter that gives up on a shared lazy load
gets its own answer while the load and the other waiters carry on; a load whose listener raises
still ends; a hung model call is answered at the deadline and holds at most its version's
in-flight limit; the queue limit applies with batching off; shutdown does not wait on hung
calls; background work is refused once the manager closes.

pytest-asyncio is not used: each test drives its coroutines with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfmux.config import BatchingConfig
from tfmux.core.manager import ModelManager
from tfmux.core.poller import RepositoryPoller
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
)

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
TWO_OUTPUTS = signature(outputs={"y": ("float32", (None, 3)), "z": ("float32", (None, 3))})


class RaisingObserver(RecordingObserver):
    """An observer whose load events raise (a broken metrics exporter)."""

    def model_loaded(self, name: str, version: int, seconds: float, error: str | None) -> None:
        super().model_loaded(name, version, seconds, error)
        raise RuntimeError("observer broke")


class Rig:
    """A manager and service over a fake loader; models are added lazily unless told."""

    def __init__(self, root: Path, loader: FakeLoader, **service: Any) -> None:
        self.root = root
        self.loader = loader
        self.observer: RecordingObserver = service.pop("observer", RecordingObserver())
        self.manager = ModelManager(loader, observer=self.observer)
        self.service = ServingService(self.manager, observer=self.observer, **service)

    def add(self, name: str, **fields: Any) -> None:
        make_repository(self.root, {name: [1]})
        self.manager.add_model(model_config(name, self.root / name, **fields))
        self.manager.wait_for_loads(GATE_TIMEOUT)

    async def infer(self, name: str, **kwargs: Any) -> InferenceResult:
        return await self.service.infer(ModelRef(name), {"x": X}, **kwargs)


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []
    gates: list[threading.Event] = []

    def make(loader: FakeLoader | None = None, **service: Any) -> Rig:
        rig = Rig(tmp_path / f"repo{len(rigs)}", loader or FakeLoader(), **service)
        rig.root.mkdir()
        rigs.append(rig)
        if rig.loader.gate is not None:
            gates.append(rig.loader.gate)
        return rig

    yield make
    for gate in gates:
        gate.set()
    for rig in rigs:
        for model in rig.loader.all_models():
            if model.run_gate is not None:
                model.run_gate.set()
        rig.service.close(GATE_TIMEOUT)


def gated_models() -> tuple[FakeLoader, threading.Event]:
    """A loader whose models hold every call until the returned gate is set."""
    gate = threading.Event()
    return FakeLoader(lambda config, path: FakeModel([TWO_OUTPUTS], run_gate=gate)), gate


def error_of(outcome: object) -> ErrorKind:
    assert isinstance(outcome, ServingError), outcome
    return outcome.kind


# -- single-flight loads -------------------------------------------------------------------


def test_a_waiter_whose_deadline_passes_during_a_lazy_load_leaves_the_others_their_answers(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(FakeLoader(gate=threading.Event()))
    rig.add("m", load="lazy")
    assert rig.loader.gate is not None

    async def main() -> list[object]:
        patient = [asyncio.ensure_future(rig.infer("m")) for _ in range(3)]
        hurried = asyncio.ensure_future(rig.infer("m", deadline=time.monotonic() + 0.05))
        cancelled = asyncio.ensure_future(rig.infer("m"))
        await asyncio.to_thread(rig.loader.started.wait, GATE_TIMEOUT)
        outcome = await asyncio.gather(hurried, return_exceptions=True)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        rig.loader.gate.set()  # type: ignore[union-attr]
        answers = await asyncio.gather(*patient, return_exceptions=True)
        after = await rig.infer("m", deadline=time.monotonic() + GATE_TIMEOUT)
        return [outcome[0], cancelled.cancelled(), *answers, after]

    hurried, was_cancelled, *answers, after = asyncio.run(main())
    assert error_of(hurried) is ErrorKind.DEADLINE_EXCEEDED
    assert was_cancelled
    for answer in [*answers, after]:
        assert isinstance(answer, InferenceResult), answer
        np.testing.assert_array_equal(answer.outputs["y"], X)
    assert rig.loader.total_loads == 1
    assert [s.state for s in rig.service.status("m")] == ["AVAILABLE"]


@pytest.mark.parametrize("fails", [False, True])
def test_a_raising_load_listener_still_ends_the_load_consistently(
    make_rig: Callable[..., Rig], fails: bool
) -> None:
    error = ServingError(ErrorKind.NOT_FOUND, "no such model") if fails else None
    rig = make_rig(FakeLoader(error=error), observer=RaisingObserver())
    rig.add("m", load="lazy")

    async def main() -> list[object]:
        return await asyncio.gather(*(rig.infer("m") for _ in range(3)), return_exceptions=True)

    answers = asyncio.run(asyncio.wait_for(main(), GATE_TIMEOUT))
    (status,) = rig.service.status("m")
    assert rig.observer.loads  # the listener ran (and raised)
    if fails:
        assert (status.state, status.error_code) == ("END", "NOT_FOUND")
        assert all(error_of(a) is ErrorKind.UNAVAILABLE for a in answers)
    else:
        assert (status.state, status.error_code) == ("AVAILABLE", "OK")
        assert all(isinstance(a, InferenceResult) for a in answers)


# -- hung model calls ----------------------------------------------------------------------


@pytest.mark.parametrize("batching", [True, False])
def test_a_hung_call_is_answered_at_its_deadline_and_holds_only_its_own_limit(
    make_rig: Callable[..., Rig], batching: bool
) -> None:
    loader, gate = gated_models()
    limits = BatchingConfig(enabled=batching, max_queue_size=2, max_inflight_batches=1)
    rig = make_rig(loader, inference_threads=2, batching=limits)
    rig.add("hung")
    rig.add("other")
    other = loader.model(rig.root / "other" / "1")
    other.run_gate = None  # only "hung" hangs

    version = rig.manager.get("hung").versions[1]

    async def main() -> dict[str, list[object]]:
        soon = time.monotonic() + 0.1
        # Different output selections are different batchers, sharing the version's limit.
        first = rig.infer("hung", deadline=soon, output_names=["y"])
        second = rig.infer("hung", deadline=soon, output_names=["z"])
        queued = [rig.infer("hung", deadline=soon) for _ in range(2)]
        hung = [asyncio.ensure_future(c) for c in [first, second, *queued]]
        await asyncio.sleep(0.01)
        rejected = await asyncio.gather(rig.infer("hung"), return_exceptions=True)
        others = [await rig.infer("other") for _ in range(4)]  # served meanwhile
        answered = await asyncio.gather(*hung, return_exceptions=True)
        # Answered, the hung call still holds the version (an unload would wait for it).
        held = version.leases
        gate.set()
        while version.leases:
            await asyncio.sleep(0.001)
        after = await rig.infer("hung")
        return {"rejected": rejected, "others": others, "hung": answered, "after": [after, held]}

    outcome = asyncio.run(asyncio.wait_for(main(), GATE_TIMEOUT))
    hung_model = loader.model(rig.root / "hung" / "1")
    assert len(hung_model.calls) == 2  # the hung call, then the request after it
    assert [error_of(e) for e in outcome["rejected"]] == [ErrorKind.RESOURCE_EXHAUSTED]
    assert all(isinstance(r, InferenceResult) for r in outcome["others"])
    assert [error_of(e) for e in outcome["hung"]] == [ErrorKind.DEADLINE_EXCEEDED] * 4
    assert ("hung", "1", "queue_full") in rig.observer.dropped
    after, held = outcome["after"]
    assert held == 1
    assert isinstance(after, InferenceResult)
    np.testing.assert_array_equal(after.outputs["y"], X)


def test_a_call_without_a_deadline_ends_at_the_maximum_run_time(
    make_rig: Callable[..., Rig],
) -> None:
    loader, gate = gated_models()
    rig = make_rig(loader, max_run_time=0.05)
    rig.add("m")

    async def main() -> tuple[object, InferenceResult]:
        overran = await asyncio.gather(rig.infer("m"), return_exceptions=True)
        gate.set()
        return overran[0], await rig.infer("m")

    overran, result = asyncio.run(asyncio.wait_for(main(), GATE_TIMEOUT))
    assert error_of(overran) is ErrorKind.DEADLINE_EXCEEDED
    assert "maximum run time (0.05 s)" in str(overran)
    np.testing.assert_array_equal(result.outputs["y"], X)


def test_the_queue_limit_applies_with_batching_off(make_rig: Callable[..., Rig]) -> None:
    loader, gate = gated_models()
    limits = BatchingConfig(enabled=False, max_queue_size=2, max_inflight_batches=1)
    rig = make_rig(loader, batching=limits, inference_threads=2)  # one call at a time
    rig.add("m")
    model = loader.model(rig.root / "m" / "1")

    async def main() -> list[object]:
        running = asyncio.ensure_future(rig.infer("m"))
        await asyncio.to_thread(model.run_started.wait, GATE_TIMEOUT)
        queued = [asyncio.ensure_future(rig.infer("m")) for _ in range(2)]
        await asyncio.sleep(0.01)
        rejected = await asyncio.gather(rig.infer("m"), return_exceptions=True)
        gate.set()
        return [*rejected, *await asyncio.gather(running, *queued), await rig.infer("m")]

    rejected, *answers = asyncio.run(asyncio.wait_for(main(), GATE_TIMEOUT))
    assert error_of(rejected) is ErrorKind.RESOURCE_EXHAUSTED
    assert "queue is full (2 requests waiting)" in str(rejected)
    assert len(answers) == 4 and all(isinstance(a, InferenceResult) for a in answers)


# -- shutdown ------------------------------------------------------------------------------


def test_close_with_a_timeout_abandons_a_hung_call_and_closes_its_model(
    make_rig: Callable[..., Rig],
) -> None:
    loader, gate = gated_models()
    rig = make_rig(loader)
    rig.add("m")
    model = loader.model(rig.root / "m" / "1")
    loop = asyncio.new_event_loop()
    hung = loop.create_task(rig.infer("m"))
    loop.run_until_complete(asyncio.to_thread(model.run_started.wait, GATE_TIMEOUT))
    hung.cancel()  # the transport gave up on it (grace period over)
    loop.run_until_complete(asyncio.gather(hung, return_exceptions=True))
    assert rig.manager.get("m").versions[1].leases == 1  # the running call holds it

    assert rig.service.close(timeout=0.05) is False
    assert model.closed
    gate.set()
    loop.close()


def test_after_close_loads_refreshes_and_management_are_refused(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.add("m", load="lazy")
    assert rig.service.close(GATE_TIMEOUT) is True
    with pytest.raises(ServingError) as info:
        asyncio.run(rig.infer("m"))
    assert info.value.kind in (ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE)
    with pytest.raises(ServingError) as info:
        rig.manager.load_model("m")
    assert info.value.kind is ErrorKind.UNAVAILABLE
    with pytest.raises(ServingError, match="shutting down"):
        rig.manager.add_model(model_config("n", rig.root / "m"))
    assert rig.loader.total_loads == 0

    async def poll() -> None:
        poller = RepositoryPoller(rig.manager, 3600)
        await poller.poll_once()  # nothing left to refresh; returns at once
        await poller.stop()

    asyncio.run(asyncio.wait_for(poll(), GATE_TIMEOUT))


def test_abandon_answers_queued_and_running_requests_unavailable(
    make_rig: Callable[..., Rig],
) -> None:
    loader, gate = gated_models()
    rig = make_rig(loader, batching=BatchingConfig(max_inflight_batches=1))
    rig.add("m")
    model = loader.model(rig.root / "m" / "1")

    async def main() -> list[object]:
        running = asyncio.ensure_future(rig.infer("m"))
        await asyncio.to_thread(model.run_started.wait, GATE_TIMEOUT)
        queued = asyncio.ensure_future(rig.infer("m", output_names=["z"]))
        await asyncio.sleep(0.01)
        rig.service.abandon_requests()  # a shutdown's grace period is over
        answers = await asyncio.gather(running, queued, return_exceptions=True)
        gate.set()
        return answers

    answers = asyncio.run(asyncio.wait_for(main(), GATE_TIMEOUT))
    assert [error_of(a) for a in answers] == [ErrorKind.UNAVAILABLE] * 2
    assert all("shutting down" in str(a) for a in answers)
    assert len(model.calls) == 1  # the queued request never ran
