"""ModelVersion: states, leases, single-flight loading, unloads that wait."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tfmux.core.lifecycle import LoadListener, ModelVersion, State
from tfmux.errors import ErrorKind, ServingError, not_found
from tfmux.types import VersionStatus

from .fakes import (
    GATE_TIMEOUT,
    FakeLoader,
    FakeModel,
    make_repository,
    model_config,
    wait_until,
)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4, thread_name_prefix="test-load")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def make_version(
    root: Path, loader: FakeLoader, version: int = 1, on_loaded: LoadListener | None = None
) -> ModelVersion:
    repo = make_repository(root, {"m": [version]})
    config = model_config("m", repo / "m")
    path = repo / "m" / str(version)
    return ModelVersion("m", version, path, functools.partial(loader, config), on_loaded)


def load(mv: ModelVersion, executor: ThreadPoolExecutor) -> None:
    mv.start_load(executor).result(GATE_TIMEOUT)


def start_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# -- states ------------------------------------------------------------------------------


def test_new_version_is_start_and_refuses_leases(tmp_path: Path) -> None:
    mv = make_version(tmp_path, FakeLoader())
    assert mv.state is State.START
    assert mv.status() == VersionStatus(1, "START")
    with pytest.raises(ServingError) as info:
        mv.acquire()
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert info.value.message == "model m version 1 is not loaded yet (state START)"


def test_load_goes_through_loading_to_available(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    gate = threading.Event()
    loader = FakeLoader(gate=gate)
    mv = make_version(tmp_path, loader)
    future = mv.start_load(executor)
    assert mv.state is State.LOADING
    assert loader.started.wait(GATE_TIMEOUT)
    with pytest.raises(ServingError, match=r"not loaded yet \(state LOADING\)") as info:
        mv.acquire()
    assert info.value.kind is ErrorKind.UNAVAILABLE
    gate.set()
    assert future.result(GATE_TIMEOUT) is None
    assert mv.state is State.AVAILABLE
    assert mv.status() == VersionStatus(1, "AVAILABLE")
    assert mv.load_seconds is not None and mv.load_seconds >= 0
    with mv.acquire() as lease:
        assert (lease.name, lease.version) == ("m", 1)
        assert lease.model is loader.model(mv.path)
        assert mv.leases == 1
    assert mv.leases == 0


def test_unload_goes_through_unloading_to_end(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    close_gate = threading.Event()
    loader = FakeLoader(factory=lambda config, path: FakeModel(close_gate=close_gate))
    mv = make_version(tmp_path, loader)
    load(mv, executor)
    model = loader.model(mv.path)
    unloader = start_thread(mv.unload)
    assert model.close_started.wait(GATE_TIMEOUT)
    assert mv.state is State.UNLOADING
    assert mv.status() == VersionStatus(1, "UNLOADING")
    close_gate.set()
    unloader.join(GATE_TIMEOUT)
    assert not unloader.is_alive()
    assert mv.state is State.END
    assert mv.status() == VersionStatus(1, "END")
    assert model.close_count == 1


def test_failed_load_ends_with_error_in_status(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    loader = FakeLoader(error=RuntimeError("disk on fire"))
    mv = make_version(tmp_path, loader)
    assert mv.start_load(executor).result(GATE_TIMEOUT) is None  # the future never raises
    assert mv.state is State.END
    assert mv.error is not None
    assert mv.status() == VersionStatus(1, "END", "UNKNOWN", "RuntimeError: disk on fire")


def test_failed_load_keeps_the_kind_of_a_serving_error(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    loader = FakeLoader(error=not_found("SavedModel not found: no saved_model.pb"))
    mv = make_version(tmp_path, loader)
    load(mv, executor)
    status = mv.status()
    assert (status.state, status.error_code) == ("END", "NOT_FOUND")
    assert status.error_message == "SavedModel not found: no saved_model.pb"


def test_acquire_after_failed_load_reports_the_load_error(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    mv = make_version(tmp_path, FakeLoader(error=RuntimeError("disk on fire")))
    load(mv, executor)
    with pytest.raises(ServingError) as info:
        mv.acquire()
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert info.value.message == "model m version 1 failed to load: RuntimeError: disk on fire"


def test_acquire_after_unload_is_unavailable(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    mv = make_version(tmp_path, FakeLoader())
    load(mv, executor)
    mv.unload()
    with pytest.raises(ServingError, match=r"model m version 1 has been unloaded") as info:
        mv.acquire()
    assert info.value.kind is ErrorKind.UNAVAILABLE


def test_load_listener_hears_success_and_failure(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    heard: list[tuple[int, State, ErrorKind | None]] = []

    def listener(mv: ModelVersion, seconds: float, error: ServingError | None) -> None:
        assert seconds >= 0
        heard.append((mv.version, mv.state, None if error is None else error.kind))

    loader = FakeLoader(errors={2: RuntimeError("bad")})
    good = make_version(tmp_path, loader, 1, listener)
    bad = make_version(tmp_path, loader, 2, listener)
    load(good, executor)
    load(bad, executor)
    assert heard == [(1, State.AVAILABLE, None), (2, State.END, ErrorKind.UNKNOWN)]


# -- leases ------------------------------------------------------------------------------


def test_lease_release_is_idempotent(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    mv = make_version(tmp_path, FakeLoader())
    load(mv, executor)
    first, second = mv.acquire(), mv.acquire()
    assert mv.leases == 2
    first.release()
    first.release()
    assert mv.leases == 1
    with second:
        pass
    second.release()
    assert mv.leases == 0


def test_unload_waits_for_an_in_flight_lease(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    loader = FakeLoader()
    mv = make_version(tmp_path, loader)
    load(mv, executor)
    model = loader.model(mv.path)
    leased = threading.Event()
    release = threading.Event()

    def hold_lease() -> None:
        with mv.acquire():
            leased.set()
            assert release.wait(GATE_TIMEOUT)

    holder = start_thread(hold_lease)
    assert leased.wait(GATE_TIMEOUT)
    unloader = start_thread(mv.unload)
    wait_until(lambda: mv.state is State.UNLOADING, "unload to begin")

    # The unload cannot finish while the lease is open; new leases are refused meanwhile.
    assert unloader.is_alive()
    assert not model.closed
    with pytest.raises(ServingError, match=r"version 1 is unloading") as info:
        mv.acquire()
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert mv.leases == 1

    release.set()
    holder.join(GATE_TIMEOUT)
    unloader.join(GATE_TIMEOUT)
    assert not unloader.is_alive()
    assert mv.state is State.END
    assert model.close_count == 1
    mv.unload()  # idempotent
    assert model.close_count == 1


def test_concurrent_unloads_all_return_after_close(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    close_gate = threading.Event()
    loader = FakeLoader(factory=lambda config, path: FakeModel(close_gate=close_gate))
    mv = make_version(tmp_path, loader)
    load(mv, executor)
    model = loader.model(mv.path)
    first = start_thread(mv.unload)
    assert model.close_started.wait(GATE_TIMEOUT)

    closed_when_returned: list[bool] = []

    def second_unload() -> None:
        mv.unload()
        closed_when_returned.append(model.close_returned)

    second = start_thread(second_unload)
    # Give a (buggy) second unload the chance to return early; a correct one blocks until
    # close returns, so this never makes the test flaky.
    second.join(0.05)
    close_gate.set()
    first.join(GATE_TIMEOUT)
    second.join(GATE_TIMEOUT)
    assert closed_when_returned == [True]
    assert model.close_count == 1
    assert mv.state is State.END


# -- single-flight loading ---------------------------------------------------------------


def test_concurrent_start_load_runs_the_loader_once(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    gate = threading.Event()
    loader = FakeLoader(gate=gate)
    mv = make_version(tmp_path, loader)
    callers = 16
    barrier = threading.Barrier(callers)
    futures = []
    futures_lock = threading.Lock()

    def call_start_load() -> None:
        barrier.wait(GATE_TIMEOUT)
        future = mv.start_load(executor)
        with futures_lock:
            futures.append(future)

    threads = [start_thread(call_start_load) for _ in range(callers)]
    for thread in threads:
        thread.join(GATE_TIMEOUT)
    assert len(futures) == callers
    assert all(f is futures[0] for f in futures)
    gate.set()
    futures[0].result(GATE_TIMEOUT)
    assert loader.loads[mv.path] == 1
    assert mv.state is State.AVAILABLE


def test_start_load_after_a_load_does_not_load_again(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    loader = FakeLoader(error=RuntimeError("bad"))
    mv = make_version(tmp_path, loader)
    load(mv, executor)
    load(mv, executor)
    assert loader.total_loads == 1
    assert mv.state is State.END


# -- unload while loading ----------------------------------------------------------------


def test_unload_during_loading_waits_for_the_load(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    gate = threading.Event()
    loader = FakeLoader(gate=gate)
    mv = make_version(tmp_path, loader)
    future = mv.start_load(executor)
    assert loader.started.wait(GATE_TIMEOUT)
    unloader = start_thread(mv.unload)
    assert unloader.is_alive()  # cannot finish: the load is held by the gate
    assert mv.state is State.LOADING
    gate.set()
    unloader.join(GATE_TIMEOUT)
    assert not unloader.is_alive()
    assert future.done()
    assert mv.state is State.END
    assert mv.error is None
    assert loader.model(mv.path).close_count == 1


def test_unload_during_a_failing_load_keeps_the_error(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    gate = threading.Event()
    loader = FakeLoader(gate=gate, error=RuntimeError("bad weights"))
    mv = make_version(tmp_path, loader)
    mv.start_load(executor)
    assert loader.started.wait(GATE_TIMEOUT)
    unloader = start_thread(mv.unload)
    gate.set()
    unloader.join(GATE_TIMEOUT)
    assert not unloader.is_alive()
    assert mv.status() == VersionStatus(1, "END", "UNKNOWN", "RuntimeError: bad weights")


def test_unload_before_any_load_ends_without_loading(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    loader = FakeLoader()
    mv = make_version(tmp_path, loader)
    mv.unload()
    assert mv.state is State.END
    load(mv, executor)  # a load after the end does nothing
    assert mv.state is State.END
    assert loader.total_loads == 0
