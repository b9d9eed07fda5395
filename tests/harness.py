"""Runs a real TfmuxServer on 127.0.0.1:0 in a background thread for end-to-end tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tfmux.config import ServerConfig
from tfmux.server import TfmuxServer

T = TypeVar("T")


class BackgroundLoop:
    """A server (``self.server``, set by the subclass) on its own event loop thread."""

    server: TfmuxServer
    timeout = 120.0  # seconds ``call`` waits by default

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout or self.timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def _start(self) -> None:
        self._thread.start()
        self.call(self.server.start())
        self.call(self.server.wait_for_loads())

    def _stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


class BackgroundServer(BackgroundLoop):
    """A server with its own event loop thread. Use as a context manager."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__()
        self.server = TfmuxServer(
            config.model_copy(update={"http_port": 0, "grpc_port": 0}), **kwargs
        )

    def __enter__(self) -> BackgroundServer:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
