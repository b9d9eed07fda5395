"""One owner for a background task that runs a tick every few seconds (pollers, samplers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("tfmux.periodic")

Tick = Callable[[], Awaitable[None] | None]


class Periodic:
    """Runs ``tick`` every ``interval`` seconds (after the interval, not at start) on the
    event loop it is started on, until stopped.

    ``tick`` is a plain function or a coroutine function. A tick that raises is logged
    (as ``what`` failed) and the next one runs at its time: the loop never stops on an error.
    ``stop`` cancels the task, a tick in progress included, and waits for it to end; it is
    idempotent, and ``start`` after ``stop`` starts again.
    """

    def __init__(self, tick: Tick, interval: float, name: str, what: str | None = None) -> None:
        self._tick = tick
        self.interval = interval
        self.name = name
        self._what = what or name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start on the running event loop (a second start while running is a no-op)."""
        if self.interval <= 0:
            raise ValueError(f"the interval of {self.name} must be positive, not {self.interval}")
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cancel(self) -> None:
        """Stop without waiting, from synchronous code (a cluster replica torn down)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                result = self._tick()
                if result is not None:
                    await result
            except Exception:
                log.exception("%s failed; trying again in %g s", self._what, self.interval)
