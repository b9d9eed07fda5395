"""The task that samples the status board: a background task owned by the server."""

from __future__ import annotations

from tfmux.core.periodic import Periodic
from tfmux.core.status import StatusBoard


class StatusSampler:
    """Samples a StatusBoard every ``interval`` seconds. Owned by the server: ``start`` on
    its event loop, ``stop`` at shutdown. A failing sample is logged; sampling goes on."""

    def __init__(self, board: StatusBoard, interval: float = 1.0) -> None:
        self._periodic = Periodic(
            board.sample, interval, "tfmux-status-sampler", "sampling the server's status"
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    def cancel(self) -> None:
        """Stop without waiting, from synchronous code (a cluster replica torn down)."""
        self._periodic.cancel()
