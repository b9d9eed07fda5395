"""One model version's lifecycle (START → LOADING → AVAILABLE → UNLOADING → END) and leases."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from enum import StrEnum
from pathlib import Path
from typing import Any

from tfmux.core.runtime import LoadedModel
from tfmux.errors import ErrorKind, ServingError, unavailable
from tfmux.types import VersionStatus

log = logging.getLogger("tfmux.lifecycle")


class State(StrEnum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


Loader = Callable[[Path], LoadedModel]
LoadListener = Callable[["ModelVersion", float, ServingError | None], None]
# Runs in the load thread just before the loader (admission under a memory budget); raising
# a ServingError fails the load with it.
LoadGate = Callable[["ModelVersion"], None]


class Lease:
    """A hold on a loaded version: while any lease is open the version is not unloaded.

    Release exactly once (use it as a context manager or call ``release``).
    """

    __slots__ = ("_owner", "_released", "model")

    def __init__(self, owner: ModelVersion, model: LoadedModel) -> None:
        self._owner = owner
        self.model = model
        self._released = False

    @property
    def name(self) -> str:
        return self._owner.name

    @property
    def version(self) -> int:
        return self._owner.version

    @property
    def batchers(self) -> dict[Any, Any]:
        """Per-version state the service keeps while the version is loaded (its batchers)."""
        return self._owner.batchers

    def share(self) -> Lease:
        """Another lease on the same version (a running batch holds one until its model call
        returns, even if its requests were answered first). Only while a lease is open."""
        return self._owner._share(self.model)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelVersion:
    """One version of one model. Thread-safe: every method may be called from any thread.

    Loading is single-flight: however many callers ask, ``loader`` runs at most once. The
    object is one-shot: once END it stays END, and serving the version again means a new one.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        loader: Loader,
        on_loaded: LoadListener | None = None,
        before_load: LoadGate | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._loader = loader
        self._on_loaded = on_loaded
        self._before_load = before_load
        self._cond = threading.Condition()
        self._state = State.START
        self._error: ServingError | None = None
        self._model: LoadedModel | None = None
        self._leases = 0
        self._load_future: Future[None] | None = None
        self._closing = False  # finish_unload began
        self.load_seconds: float | None = None
        self.last_used = time.monotonic()
        self.batchers: dict[Any, Any] = {}  # owned by the service; dropped at unload
        # Memory, in bytes: the estimate made before loading and, when it could be measured
        # alone, what the load cost. Set by the manager.
        self.memory_estimate = 0
        self.memory_measured: int | None = None
        self.evicted = False  # unloaded to make room; a request may load it again
        # the budget's (token, RSS before the load, bytes on disk)
        self.measuring: tuple[int, int, int] | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> ServingError | None:
        return self._error

    @property
    def model_bytes(self) -> int:
        """Bytes the loaded model says it holds (a fed version: its weights); 0 when it does
        not say."""
        return int(getattr(self._model, "memory_bytes", 0) or 0)

    @property
    def leases(self) -> int:
        return self._leases

    def status(self) -> VersionStatus:
        with self._cond:
            error = self._error
            code, message = (error.kind.value, error.message) if error else ("OK", "")
            loaded = self._state in (State.LOADING, State.AVAILABLE, State.UNLOADING)
            measured = self.memory_measured
            memory = (measured if measured is not None else self.memory_estimate) or None
            return VersionStatus(
                self.version,
                self._state.value,
                code,
                message,
                memory if loaded else None,
                loaded and measured is not None,
            )

    def start_load(self, executor: Executor) -> Future[None]:
        """Begin loading if not yet begun; the future completes when loading has ended.

        The future never raises: a failed load leaves the version in END with its error.
        """
        with self._cond:
            if self._load_future is not None:
                return self._load_future
            future: Future[None] = Future()
            # Running from the start, so nobody can cancel it: the load is shared by every
            # waiter, and a waiter that gives up must not end it for the others.
            future.set_running_or_notify_cancel()
            self._load_future = future
            if self._state is not State.START:
                future.set_result(None)
                return future
            self._state = State.LOADING
        try:
            executor.submit(self._load, future)
        except RuntimeError:  # the load threads were shut down: the server is stopping
            with self._cond:
                self._state = State.END
                self._error = unavailable("the server is shutting down")
                self._cond.notify_all()
            future.set_result(None)
        return future

    def _load(self, future: Future[None]) -> None:
        started = time.perf_counter()
        error: ServingError | None = None
        model: LoadedModel | None = None
        try:
            if self._before_load is not None:
                self._before_load(self)
            model = self._loader(self.path)
        except ServingError as exc:
            error = exc
        except BaseException as exc:  # a model that cannot load must not take the server down
            error = ServingError(ErrorKind.UNKNOWN, f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - started
        try:
            with self._cond:
                self.load_seconds = seconds
                if model is not None:
                    self._model, self._state = model, State.AVAILABLE
                    self.last_used = time.monotonic()  # loaded for a request: not an LRU victim
                else:
                    self._state, self._error = State.END, error
                self._cond.notify_all()
            if self._on_loaded is not None:
                self._on_loaded(self, seconds, error)
        except Exception:  # a listener that raises must not leave the waiters waiting
            log.exception("load listener of model %s version %s failed", self.name, self.version)
        finally:
            future.set_result(None)

    def acquire(self) -> Lease:
        """A lease on the loaded model; raises UNAVAILABLE unless the version is AVAILABLE."""
        with self._cond:
            if self._state is State.AVAILABLE and self._model is not None:
                self._leases += 1
                self.last_used = time.monotonic()
                return Lease(self, self._model)
            raise self._unavailable_error()

    def _unavailable_error(self) -> ServingError:
        where = f"model {self.name} version {self.version}"
        if self._error is not None and self._error.kind is ErrorKind.RESOURCE_EXHAUSTED:
            return ServingError(ErrorKind.RESOURCE_EXHAUSTED, self._error.message)
        if self._error is not None:
            return unavailable(f"{where} failed to load: {self._error.message}")
        if self._state in (State.START, State.LOADING):
            return unavailable(f"{where} is not loaded yet (state {self._state.value})")
        if self._state is State.UNLOADING:
            return unavailable(f"{where} is unloading")
        return unavailable(f"{where} has been unloaded")

    def _share(self, model: LoadedModel) -> Lease:
        with self._cond:
            self._leases += 1
            return Lease(self, model)

    def _release(self) -> None:
        with self._cond:
            self._leases -= 1
            if self._leases == 0:
                self._cond.notify_all()

    def unload(self, timeout: float | None = None) -> bool:
        """Stop new leases, wait for open ones to be released, then close. Blocks; idempotent.

        A version still loading is waited for first; so is an unload another caller began.
        With ``timeout`` (shutdown), leases still open after that many seconds are abandoned:
        the model is closed under them, which cancels a hung call in the session runtime; a
        load still running then is left to end on its own. Returns False if either happened.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state is State.LOADING:
                if not self._wait(deadline):
                    return False
            if self._state is State.END:
                return True
            if self._state is State.START:
                self._state = State.END
                return True
            self._state = State.UNLOADING
            while self._leases and self._state is State.UNLOADING:
                if not self._wait(deadline):
                    log.warning(
                        "closing model %s version %s with %d call(s) still running",
                        self.name,
                        self.version,
                        self._leases,
                    )
                    break
            abandoned = self._leases > 0
        self.finish_unload()
        return not abandoned

    def _wait(self, deadline: float | None) -> bool:
        """Wait on the condition (lock held) until notified; False once ``deadline`` passed."""
        if deadline is None:
            self._cond.wait()
            return True
        remaining = deadline - time.monotonic()
        return remaining > 0 and (self._cond.wait(remaining) or time.monotonic() < deadline)

    def try_evict(self) -> bool:
        """Claim an idle AVAILABLE version for eviction (no lease open, none can start now).

        On True the version is UNLOADING and the caller must call ``finish_unload``.
        """
        with self._cond:
            if self._state is not State.AVAILABLE or self._leases:
                return False
            self._state = State.UNLOADING
            self.evicted = True
            return True

    def finish_unload(self) -> None:
        """Close an UNLOADING version (its leases released, or abandoned at shutdown), then
        END. A second caller waits for the first one's close."""
        with self._cond:
            if self._state is State.END:
                return
            if self._closing:
                self._cond.wait_for(lambda: self._state is State.END)
                return
            self._closing = True
            model, self._model = self._model, None
            self.batchers = {}
        try:
            if model is not None:
                model.close()
        finally:
            with self._cond:
                self._state = State.END
                self._cond.notify_all()
