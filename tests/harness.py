"""Runs a real TfmuxServer on 127.0.0.1:0 in a background thread for end-to-end tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tfmux.config import ServerConfig
from tfmux.server import TfmuxServer

T = TypeVar("T")


class BackgroundServer:
    """A server with its own event loop thread. Use as a context manager."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        self.server = TfmuxServer(
            config.model_copy(update={"http_port": 0, "grpc_port": 0}), **kwargs
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        self.call(self.server.start())
        self.call(self.server.wait_for_loads())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
