"""The status board over a fake runtime: the bounded history, the rolling window, the events
found by comparing snapshots (loads, failures, unloads, evictions, swaps, label and split
moves), and the overview. No TensorFlow, no sockets, no timing: the test closes intervals."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from tfmux.config import ModelConfig, TrafficConfig, VersionPolicy
from tfmux.core.history import BINS, LATENCY_EDGES, MAX_OPEN, SERIES, TrafficHistory, percentiles
from tfmux.core.manager import ModelManager
from tfmux.core.observer import Observers
from tfmux.core.service import Management, ServingService
from tfmux.core.status import StatusBoard
from tfmux.types import ModelRef

from .fakes import FakeLoader, FakeMemory, RecordingObserver, make_repository, wait_until

U = 1024 * 1024
X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_history_points_rates_and_percentiles() -> None:
    history = TrafficHistory(resolution=5.0, points=4)
    for _ in range(90):
        history.request_done("a", "1", "predict", 0.002, None)
    for _ in range(10):
        history.request_done("a", "1", "predict", 0.4, None)
    history.request_done("a", "1", "predict", 0.0, "INVALID_ARGUMENT")
    history.batch_ran("a", "1", rows=12, requests=3, queue_seconds=[0.0] * 3)
    history.batch_ran("a", "1", rows=4, requests=1, queue_seconds=[0.0])
    assert history.tick(5.0, ["a", "b"], {"a": 7}) == 101
    series = history.series("a")
    assert series is not None and set(series) == set(SERIES)
    assert series["requests_per_second"][-1] == pytest.approx(101 / 5, rel=1e-3)
    assert series["error_rate"][-1] == pytest.approx(1 / 101, rel=1e-2)
    assert 0.002 / 1.4 < series["p50_ms"][-1] / 1000 < 0.002 * 1.4  # type: ignore[operator]
    assert 0.4 / 1.4 < series["p99_ms"][-1] / 1000 < 0.4 * 1.4  # type: ignore[operator]
    assert series["mean_batch_size"][-1] == 8
    assert series["queue_depth"][-1] == 7
    assert series["requests_per_second"][:-1] == [None, None, None]  # no point yet
    idle = history.series("b")
    assert idle is not None and idle["requests_per_second"][-1] == 0
    assert idle["p50_ms"][-1] is None  # no latency without requests
    window = history.window("a", "1")
    assert window.requests_per_second == pytest.approx(101 / 5, rel=1e-3)
    assert window.mean_batch_size == 8
    assert history.busiest(5) == ["a"]


def test_history_is_bounded_in_time_and_models() -> None:
    history = TrafficHistory(resolution=5.0, points=3)
    for tick in range(10):
        history.request_done("a", "1", "predict", 0.001, None)
        history.tick(5.0 * (tick + 1), ["a"], {})
    series = history.series("a")
    assert series is not None and len(series["requests_per_second"]) == 3
    # The minute window holds 12 intervals of 1 request each.
    assert history.window("a", "1").requests_per_second == pytest.approx(10 / 50)
    for _ in range(12):
        history.tick(0.0, ["a"], {})
    assert history.window("a", "1").requests_per_second == 0  # the minute has passed
    history.tick(0.0, [], {})  # "a" no longer served: forgotten
    assert history.series("a") is None and history.busiest(5) == []
    for i in range(MAX_OPEN + 10):  # requests naming unknown models are bounded
        history.request_done(f"nope{i}", "", "predict", 0.001, "NOT_FOUND")
    assert len(history._open) == MAX_OPEN
    assert history.tick(0.0, [], {}) == 0
    history.known = {"a"}.__contains__  # what a watched board sets: the manager's serves
    for i in range(100):  # with the served names known, unknown ones are not even tracked
        history.request_done(f"nope{i}", "", "predict", 0.001, "NOT_FOUND")
        history.batch_ran(f"nope{i}", "", 1, 1, [0.0])
    history.request_done("a", "1", "predict", 0.001, None)
    assert list(history._open) == [("a", "1")]


def test_percentiles_of_histograms() -> None:
    assert percentiles([0] * BINS, (0.5, 0.99)) == [None, None]
    hist = [0] * BINS
    hist[0] = 3
    (only,) = percentiles(hist, (0.99,))
    assert only is not None and only < LATENCY_EDGES[0]
    hist = [0] * BINS
    hist[10], hist[20] = 98, 2  # 98% in bin 10, the slowest 2% in bin 20
    p50, p99 = percentiles(hist, (0.5, 0.99))
    assert p50 is not None and LATENCY_EDGES[9] < p50 < LATENCY_EDGES[10]
    assert p99 is not None and LATENCY_EDGES[19] < p99 < LATENCY_EDGES[20]


def test_observers_fan_out_and_skip_missing_events() -> None:
    first, second = RecordingObserver(), StatusBoard()
    both = Observers(first, second)
    both.request_done("m", "1", "predict", 0.01, None)
    both.model_loaded("m", 1, 0.5, None)
    assert len(first.requests) == 1 and len(first.loads) == 1
    assert second.history._open[("m", "1")].requests == 1
    with pytest.raises(AttributeError):
        both.no_such_event  # noqa: B018


def _stack(tmp_path: Path, budget: int | None = None) -> tuple[ModelManager, StatusBoard, Clock]:
    clock = Clock()
    board = StatusBoard(resolution=5.0, points=12, clock=clock)
    loader = FakeLoader(errors={9: RuntimeError("bad weights")})
    manager = ModelManager(loader, 1, board, budget, FakeMemory(loader))
    board.watch(manager)
    return manager, board, clock


def _kinds(board: StatusBoard) -> list[tuple[str, str, int | None]]:
    return [(e.kind, e.model, e.version) for e in board.events.after(0)]


def test_events_from_snapshots(tmp_path: Path) -> None:
    make_repository(tmp_path, {"a": [1], "bad": [9], "b": [1, 2]}, size=U)
    manager, board, clock = _stack(tmp_path)
    try:
        board.sample()
        manager.add_model(ModelConfig(name="a", base_path=tmp_path / "a"))
        manager.add_model(ModelConfig(name="bad", base_path=tmp_path / "bad"))
        policy = VersionPolicy(kind="specific", versions=(1,))
        manager.add_model(
            ModelConfig(name="b", base_path=tmp_path / "b", version_policy=policy, labels={"s": 1})
        )
        manager.wait_for_loads()
        board.sample()
        assert set(_kinds(board)) == {("load", "a", 1), ("failure", "bad", 9), ("load", "b", 1)}
        failure = next(e for e in board.events.after(0) if e.kind == "failure")
        assert "bad weights" in failure.message
        # A swap: the policy now serves version 2 only, so version 1 is replaced.
        manager.load_model(
            "b", ModelConfig(name="b", base_path=tmp_path / "b", labels={"s": 1}, load="eager")
        )
        manager.traffic.update("b", {"s": 2}, TrafficConfig(split={"s": 100}), {2: True})
        manager.unload_model("a")
        clock.now += 1
        last = board.events.after(0)[-1].id
        board.sample()
        new = [(e.kind, e.model, e.version) for e in board.events.after(last)]
        assert ("load", "b", 2) in new and ("swap", "b", 1) in new
        assert ("unload", "a", 1) in new and ("label", "b", 2) in new
        assert ("split", "b", None) in new
        messages = {e.kind: e.message for e in board.events.after(last)}
        assert messages["unload"] == "unloaded on request"
        assert messages["label"] == "label s moved from version 1 to 2"
        manager.remove_model("bad")
        board.sample()
        assert board.events.after(0)[-1].kind != "unload"  # a failed version held nothing
    finally:
        manager.close()


def test_eviction_and_overview(tmp_path: Path) -> None:
    make_repository(tmp_path, {"a": [1], "b": [1]}, size=U)
    manager, board, clock = _stack(tmp_path, budget=int(1.5 * U))
    service = ServingService(manager, 1, board, management=Management(admin_token="t"))
    service.status_board = board
    try:
        for name in ("a", "b"):
            manager.add_model(ModelConfig(name=name, base_path=tmp_path / name, load="lazy"))
        board.sample()

        async def traffic() -> None:
            await service.infer(ModelRef("a"), {"x": X})
            board.sample()
            await service.infer(ModelRef("b"), {"x": X})  # evicts a
            await service.infer(ModelRef("b"), {"x": X})

        asyncio.run(traffic())
        wait_until(lambda: manager.get("a").versions[1].evicted, "a evicted")
        clock.now += 5
        board.sample()
        kinds = _kinds(board)
        assert ("eviction", "a", 1) in kinds and ("load", "b", 1) in kinds
        overview = service.overview()
        assert overview.admin_token_required and overview.management_enabled
        assert overview.memory_budget_bytes == int(1.5 * U)
        rows = {m.name: m for m in overview.models}
        (a,) = rows["a"].versions
        (b,) = rows["b"].versions
        assert a.state == "END" and a.evicted and a.memory_bytes is None
        assert b.state == "AVAILABLE" and b.memory_bytes and b.memory_bytes >= U
        assert overview.memory_used_bytes == b.memory_bytes
        assert b.requests_per_second == pytest.approx(2 / 5)
        assert b.p50_ms is not None and b.error_rate == 0
        report = service.history(["a"], busiest=1)
        assert report.busiest == ["b"] and set(report.models) == {"a", "b"}
        assert report.overall["evictions"][-1] == 1 and report.overall["loads"][-1] == 2
        assert report.overall["memory_used_bytes"][-1] == b.memory_bytes
        assert service.events(after=overview.events[-1].id) == []
    finally:
        service.close()


def test_service_without_a_board_says_so(tmp_path: Path) -> None:
    manager = ModelManager(FakeLoader())
    service = ServingService(manager, 1)
    try:
        with pytest.raises(Exception, match="status is not kept"):
            service.overview()
    finally:
        service.close()
        shutil.rmtree(tmp_path, ignore_errors=True)
