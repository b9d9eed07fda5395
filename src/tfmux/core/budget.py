"""Memory accounting and admission under a byte budget, with LRU or TinyLFU eviction."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tfmux.core.eviction import POLICIES, EvictionPolicy, FrequencySketch, choose_victims
from tfmux.core.lifecycle import ModelVersion, State
from tfmux.core.memory import MemoryProbe, format_bytes, size_on_disk
from tfmux.core.policy import Resident
from tfmux.errors import ErrorKind, ServingError

CHARGED = (State.LOADING, State.AVAILABLE, State.UNLOADING)


@dataclass(frozen=True)
class Held:
    """A version that holds memory, and whether it may be evicted (its model is not pinned)."""

    version: ModelVersion
    pinned: bool


def charge(mv: ModelVersion) -> int:
    """Bytes a version counts against the budget: measured when known, else estimated."""
    return mv.memory_measured if mv.memory_measured is not None else mv.memory_estimate


class MemoryBudget:
    """Estimates, measures and admits model loads. Thread-safe.

    The estimate is the SavedModel's size on disk times a ratio learned from loads measured
    alone (resident memory before and after, with free heap returned to the OS first). Under a
    limit every load is measured alone (``admit``); without one, loads run in parallel and
    those that overlap another keep their estimate.
    """

    def __init__(
        self,
        limit: int | None,
        probe: MemoryProbe,
        held: Callable[[], Iterable[Held]],
        ratio: float = 1.1,
        policy: EvictionPolicy = "lru",
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r}; expected one of {POLICIES}")
        self.limit = limit
        self.policy = policy
        self._sketch = FrequencySketch()
        self._probe = probe
        self._held = held
        self._ratio = ratio
        self._lock = threading.Lock()
        self._loading = 0
        self._epoch = 0  # counts load starts; a measurement is alone if it saw only its own
        self._window = threading.Lock()  # one load admitted and measured at a time (a limit)
        self._window_holder: ModelVersion | None = None

    def accessed(self, mv: ModelVersion) -> None:
        """A request took ``mv``: count it for the frequency-aware policy (cheap; no-op
        without a budget or under LRU, which reads ``last_used``)."""
        if self.limit is not None and self.policy == "tinylfu":
            key = (mv.name, mv.version)
            with self._lock:
                self._sketch.increment(key)

    def frequency(self, key: tuple[str, int]) -> int:
        """The estimated recent request count of a version (0 under LRU)."""
        with self._lock:
            return self._sketch.estimate(key)

    # -- before and after a load (load threads) --------------------------------------------

    def admit(self, mv: ModelVersion) -> None:
        """Estimate ``mv``, make room for it (evicting idle versions), and begin measuring.

        Raises RESOURCE_EXHAUSTED when it cannot fit even after evicting everything evictable.
        Every successful ``admit`` is followed by ``loaded``.

        Under a limit, loads are admitted and measured one at a time (the measurement window,
        from before its evictions until ``loaded``): a load that overlapped another could not
        be told apart from it and kept an estimate, which drifted from the real cost under
        churn. Requests to loaded models do not wait for it; other loads do.
        """
        if self.limit is not None:
            self._window.acquire()
            self._window_holder = mv
        try:
            self._admit(mv)
        except BaseException:
            self._close_window(mv)
            raise

    def _close_window(self, mv: ModelVersion) -> None:
        if self._window_holder is mv:
            self._window_holder = None
            self._window.release()

    def _admit(self, mv: ModelVersion) -> None:
        disk = size_on_disk(mv.path)  # walked once per load: measured against it after
        estimate = int(disk * self._ratio)
        while True:
            with self._lock:
                mv.memory_estimate = estimate
                claimed, complete = self._claim_victims(mv)
            for victim in claimed:
                victim.finish_unload()
            if complete:
                break
        self._probe.release()
        rss_before = self._probe.rss()
        with self._lock:
            alone = self._loading == 0
            self._loading += 1
            self._epoch += 1
            mv.measuring = (self._epoch if alone else -1, rss_before, disk)

    def _claim_victims(self, mv: ModelVersion) -> tuple[list[ModelVersion], bool]:
        if self.limit is None:
            return [], True
        held = [h for h in self._held() if h.version is not mv and h.version.state in CHARGED]
        by_key = {(h.version.name, h.version.version): h.version for h in held}
        residents = [
            Resident(
                key=(h.version.name, h.version.version),
                size=charge(h.version),
                last_used=h.version.last_used,
                evictable=not h.pinned
                and h.version.state is State.AVAILABLE
                and h.version.leases == 0,
            )
            for h in held
        ]
        frequency = (
            {r.key: self._sketch.estimate(r.key) for r in residents if r.evictable}
            if self.policy == "tinylfu"
            else {}
        )
        victims = choose_victims(self.policy, residents, mv.memory_estimate, self.limit, frequency)
        if victims is None:
            raise self._too_big(mv, residents)
        claimed = [by_key[key] for key in victims if by_key[key].try_evict()]
        return claimed, len(claimed) == len(victims)

    def _too_big(self, mv: ModelVersion, residents: list[Resident]) -> ServingError:
        assert self.limit is not None
        kept = sum(r.size for r in residents if not r.evictable)
        return ServingError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"model {mv.name} version {mv.version} needs about "
            f"{format_bytes(mv.memory_estimate)}, but the memory budget is "
            f"{format_bytes(self.limit)} and {format_bytes(kept)} of it is held by models "
            "in use or pinned",
        )

    def loaded(self, mv: ModelVersion, ok: bool) -> None:
        """Record what an admitted load cost; learn the estimate ratio from loads measured
        alone (no other load running at any time during it)."""
        if mv.measuring is None:
            return  # never admitted: the load failed before admission ended
        (token, rss_before, disk), mv.measuring = mv.measuring, None
        try:
            rss_after = self._probe.rss() if ok else rss_before
        finally:
            self._close_window(mv)
        with self._lock:
            alone = self._epoch == token and self._loading == 1
            self._loading -= 1
        if not ok or not alone:
            return
        # A fed version holds at least its weights, even when the RSS delta says less
        # (memory the process already held was reused).
        measured = max(rss_after - rss_before, mv.model_bytes)
        if measured <= 0:
            return  # reused memory already held (or another unload): nothing to attribute
        mv.memory_measured = measured
        if disk > 0:
            observed = min(max(measured / disk, 0.5), 10.0)
            with self._lock:
                self._ratio = 0.7 * self._ratio + 0.3 * observed

    def released(self) -> None:
        """A version was unloaded: hand its freed memory back to the OS."""
        self._probe.release()

    # -- reporting -------------------------------------------------------------------------

    def used(self) -> int:
        return sum(charge(h.version) for h in self._held() if h.version.state in CHARGED)
