"""core.periodic.Periodic, the owner of the pollers' and the status sampler's tasks: it ticks,
a raising tick is logged and the loop goes on, stop ends it (a tick in progress included)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tfmux.core.periodic import Periodic

INTERVAL = 0.001


async def _until(condition: object, what: str) -> None:
    for _ in range(5000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(INTERVAL)
    raise AssertionError(f"timed out waiting for {what}")


def test_ticks_until_stopped_and_stops_cleanly() -> None:
    ticks: list[int] = []

    async def scenario() -> None:
        periodic = Periodic(lambda: ticks.append(1), INTERVAL, "test-ticker")
        assert not ticks and not periodic.running
        periodic.start()
        periodic.start()  # a second start while running changes nothing
        await _until(lambda: len(ticks) >= 3, "three ticks")
        await periodic.stop()
        assert not periodic.running
        stopped_at = len(ticks)
        await asyncio.sleep(20 * INTERVAL)
        assert len(ticks) == stopped_at  # no tick after stop
        await periodic.stop()  # idempotent
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "test-ticker"]
        periodic.start()  # and it can start again
        await _until(lambda: len(ticks) > stopped_at, "a tick after the restart")
        await periodic.stop()

    asyncio.run(scenario())


def test_a_raising_tick_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def tick() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError(f"tick {len(calls)} broke")

    async def scenario() -> None:
        periodic = Periodic(tick, INTERVAL, "test-raiser", "the test tick")
        periodic.start()
        await _until(lambda: len(calls) >= 4, "ticks after the failing ones")
        assert periodic.running
        await periodic.stop()

    with caplog.at_level(logging.ERROR, logger="tfmux.periodic"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if "the test tick failed" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info is not None and "tick 1 broke" in str(failures[0].exc_info[1])


def test_stop_cancels_a_tick_in_progress() -> None:
    state = {"started": False, "cancelled": False}

    async def slow_tick() -> None:
        state["started"] = True
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def scenario() -> None:
        periodic = Periodic(slow_tick, INTERVAL, "test-slow")
        periodic.start()
        await _until(lambda: state["started"], "the tick to start")
        await asyncio.wait_for(periodic.stop(), 5)
        assert state["cancelled"] and not periodic.running

    asyncio.run(scenario())


def test_a_non_positive_interval_is_refused_at_start() -> None:
    async def scenario() -> None:
        periodic = Periodic(lambda: None, 0, "test-zero")  # built (a poller that is off)
        with pytest.raises(ValueError, match="test-zero"):
            periodic.start()

    asyncio.run(scenario())
