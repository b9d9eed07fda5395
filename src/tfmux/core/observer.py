"""What the core reports as it works; metrics (and tests) implement it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Observer(Protocol):
    """Receives events from the core. Called from any thread; must be cheap and not raise."""

    def model_loaded(self, name: str, version: int, seconds: float, error: str | None) -> None:
        """A load ended (``error`` is the error kind's name when it failed)."""

    def request_done(
        self, name: str, version: str, method: str, seconds: float, error: str | None
    ) -> None:
        """A request ended; ``version`` is "" when none was resolved, ``error`` a kind name."""

    def batch_ran(
        self, name: str, version: str, rows: int, requests: int, queue_seconds: list[float]
    ) -> None:
        """A batch of ``requests`` requests (``rows`` rows) started; each waited so long."""

    def request_dropped(self, name: str, version: str, reason: str) -> None:
        """A queued request was dropped: "queue_full", "deadline" or "cancelled"."""

    def routed(self, name: str, arm: str, version: str) -> None:
        """A request that named only ``name`` went to split arm ``arm``, served by ``version``."""

    def shadow_done(
        self, name: str, version: str, shadow_version: str, outcome: str, diffs: dict[str, float]
    ) -> None:
        """A mirror of a request to ``name`` ended: "agree", "disagree", "error", "dropped";
        ``diffs``: mean absolute difference per numeric output."""


class NullObserver:
    """Reports nothing."""

    def batch_ran(
        self, name: str, version: str, rows: int, requests: int, queue_seconds: list[float]
    ) -> None:
        pass

    def request_dropped(self, name: str, version: str, reason: str) -> None:
        pass

    def routed(self, name: str, arm: str, version: str) -> None:
        pass

    def shadow_done(
        self, name: str, version: str, shadow_version: str, outcome: str, diffs: dict[str, float]
    ) -> None:
        pass

    def model_loaded(self, name: str, version: int, seconds: float, error: str | None) -> None:
        pass

    def request_done(
        self, name: str, version: str, method: str, seconds: float, error: str | None
    ) -> None:
        pass


class Observers:
    """Reports every event to each of several observers, in order (metrics, then status).
    Events an observer does not implement are skipped for it."""

    def __init__(self, *observers: object) -> None:
        self._observers = observers

    def __getattr__(self, event: str) -> Callable[..., None]:
        handlers: list[Callable[..., None]] = [
            getattr(o, event) for o in self._observers if hasattr(o, event)
        ]
        if not handlers or event.startswith("_"):
            raise AttributeError(event)

        if len(handlers) == 1:
            (report,) = handlers
        elif len(handlers) == 2:  # the usual pair, without a loop on the request path
            first, second = handlers

            def report(*args: Any) -> None:
                first(*args)
                second(*args)

        else:

            def report(*args: Any) -> None:
                for handler in handlers:
                    handler(*args)

        self.__dict__[event] = report  # resolved once per event name
        return report
