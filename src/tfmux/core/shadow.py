"""Shadow traffic: mirror requests to another version, compare, never touch the caller.

Shadow runs are owned here (tracked tasks, cancelled at close), bounded (beyond
``max_inflight`` concurrent shadow runs a mirror is dropped, not queued, so shadow work can
never pile up behind or slow the primary by more than that share), and their errors only
reach metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import numpy as np

from tfmux.core.observer import Observer
from tfmux.errors import ServingError
from tfmux.types import InferenceResult, ModelRef

log = logging.getLogger("tfmux.shadow")

ShadowCall = Callable[[ModelRef, InferenceResult], Awaitable[InferenceResult]]
OUTCOMES = ("agree", "disagree", "error", "dropped")


@dataclass(frozen=True)
class Shadowing:
    """Mirrored requests of a model since the server started, by outcome."""

    agree: int = 0
    disagree: int = 0
    error: int = 0
    dropped: int = 0


class ShadowTally:
    """Shadow outcomes counted per model since start (the status API reads them): the
    single-process history and the cluster gateway count with it. Thread-safe and cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}

    def shadow_done(
        self, name: str, version: str, shadow_version: str, outcome: str, diffs: dict[str, float]
    ) -> None:
        """The Observer event: one mirror of a request to ``name`` ended with ``outcome``."""
        self.add(name, outcome)

    def add(self, name: str, outcome: str) -> None:
        index = OUTCOMES.index(outcome)
        with self._lock:
            self._counts.setdefault(name, [0, 0, 0, 0])[index] += 1

    def counts(self, name: str) -> Shadowing:
        with self._lock:
            counts = self._counts.get(name)
        return Shadowing(*counts) if counts else Shadowing()

    def keep(self, names: Iterable[str]) -> None:
        """Forget the models not in ``names`` (no longer served)."""
        served = set(names)
        with self._lock:
            for name in [n for n in self._counts if n not in served]:
                del self._counts[name]


def compare(
    primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]
) -> tuple[bool, dict[str, float]]:
    """(every output agrees, mean absolute difference per numeric output)."""
    agreed, diffs = True, dict[str, float]()
    for name, want in primary.items():
        have = shadow.get(name)
        if have is None or have.shape != want.shape:
            agreed = False
            continue
        if want.dtype.kind in "biuf" and have.dtype.kind in "biuf":
            a, b = want.astype(np.float64), have.astype(np.float64)
            diffs[name] = float(np.mean(np.abs(a - b))) if a.size else 0.0
            agreed = agreed and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
        else:
            agreed = agreed and bool(np.array_equal(want, have))
    return agreed, diffs


class ShadowRunner:
    """Event-loop side only. ``call`` runs the mirrored request (same inputs and outputs)."""

    def __init__(self, call: ShadowCall, observer: Observer, max_inflight: int = 2) -> None:
        self._call = call
        self._observer = observer
        self._max = max_inflight
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, ref: ModelRef, primary: InferenceResult) -> None:
        """Mirror one answered request, unless the shadow budget is used up."""
        if len(self._tasks) >= self._max:
            self._observer.shadow_done(
                primary.model_name, str(primary.version), _version(ref), "dropped", {}
            )
            return
        task = asyncio.get_running_loop().create_task(self._mirror(ref, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(self, ref: ModelRef, primary: InferenceResult) -> None:
        name, version = primary.model_name, str(primary.version)
        try:
            shadow = await self._call(ref, primary)
        except ServingError as exc:
            self._observer.shadow_done(name, version, _version(ref), "error", {})
            log.debug("shadow %s failed: %s", ref, exc.message)
            return
        except Exception:  # a shadow must never hurt anything else
            self._observer.shadow_done(name, version, _version(ref), "error", {})
            log.exception("shadow %s failed", ref)
            return
        agreed, diffs = compare(primary.outputs, shadow.outputs)
        outcome = "agree" if agreed else "disagree"
        self._observer.shadow_done(name, version, str(shadow.version), outcome, diffs)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _version(ref: ModelRef) -> str:
    return "" if ref.version is None else str(ref.version)
