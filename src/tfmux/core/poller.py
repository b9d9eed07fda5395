"""Polls the model repository for new and removed versions (``--poll-interval``)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from tfmux.core.manager import ModelManager
from tfmux.core.periodic import Periodic

log = logging.getLogger("tfmux.poller")


class RepositoryPoller:
    """Every ``interval`` seconds, refreshes every model's versions (in parallel threads).

    Owned by the server: ``start`` on its event loop, ``stop`` before unloading. A refresh
    that fails is logged and tried again at the next poll; it never stops the poller.
    Refreshes run in the poller's own threads: ``stop`` cancels the ones not begun and does
    not wait for running ones (they end when the manager closes).
    """

    def __init__(self, manager: ModelManager, interval: float, threads: int = 4) -> None:
        self._manager = manager
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._periodic = Periodic(self.poll_once, interval, "tfmux-repository-poller", "a poll")

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def poll_once(self) -> None:
        """Refresh every model now; waits until new versions are loaded and old ones gone."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="tfmux-poll")
        names = [served.config.name for served in self._manager.models()]
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool, self._manager.refresh, name) for name in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                log.warning("refreshing model %s failed: %s", name, result)
