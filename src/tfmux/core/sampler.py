"""The task that samples the status board: a background task owned by the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tfmux.core.status import StatusBoard

log = logging.getLogger("tfmux.status")


class StatusSampler:
    """Samples a StatusBoard every ``interval`` seconds. Owned by the server: ``start`` on
    its event loop, ``stop`` at shutdown. A failing sample is logged; sampling goes on."""

    def __init__(self, board: StatusBoard, interval: float = 1.0) -> None:
        self._board = board
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tfmux-status-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def cancel(self) -> None:
        """Stop without waiting, from synchronous code (a cluster replica torn down)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self._board.sample()
            except Exception:
                log.exception("sampling the server's status failed")
