"""Frequency-aware eviction (the TinyLFU family) and offline replays to judge eviction policies.

Plain LRU lets a burst of one-off requests push the hot models out. ``tinylfu`` orders victims
by how often each version was asked for, estimated by a count-min sketch that also remembers
versions no longer loaded (so a popular model evicted once comes back with its history) and
halves every count periodically (so yesterday's hot model does not stay hot forever). A small
window of the most recently used versions is evicted last, whatever their count: a version that
has just loaded for a waiting request must not be the next victim before that request runs
(W-TinyLFU's window, without its admission filter: a serving request cannot be refused a
model because it is rare).

Everything here is pure: no clocks, no threads (the budget guards the sketch with its lock).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

from tfmux.core.policy import Resident, eviction_victims

EvictionPolicy = Literal["lru", "tinylfu"]
POLICIES: tuple[EvictionPolicy, ...] = ("lru", "tinylfu")
WINDOW_FRACTION = 0.05  # of the budget: the most recently used versions, evicted last
_SEEDS = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)
# Counters saturate here; aging (every 10 x width increments) keeps them meaningful. Small
# caps let the models at the edge of the budget tie with the hottest: Caffeine's 4-bit
# counters (max 15) cost 3.5 points of hit rate on a Zipf(1.1) replay of 1,000 models with
# room for 70, a cap of 63 cost 5 points with 200 models and room for 14.
_MAX_COUNT = 4095


class FrequencySketch:
    """A count-min sketch of access counts, 4 rows of ``width`` counters capped at 4095.

    ``estimate`` never undercounts (until aging halves everything) and overcounts only by
    collisions. After ``10 * width`` increments every counter is halved (``reset``), so counts
    describe recent traffic.
    """

    def __init__(self, width: int = 4096) -> None:
        if width < 1:
            raise ValueError("width must be positive")
        self._width = 1 << (width - 1).bit_length()  # a power of two
        self._mask = self._width - 1
        self._rows = [[0] * self._width for _ in _SEEDS]
        self._additions = 0
        self.sample_size = 10 * self._width

    def _indexes(self, key: Hashable) -> list[int]:
        h = hash(key) & 0xFFFFFFFFFFFFFFFF
        return [(((h ^ (h >> 29)) * seed) >> 17) & self._mask for seed in _SEEDS]

    def increment(self, key: Hashable) -> None:
        for row, index in zip(self._rows, self._indexes(key), strict=True):
            if row[index] < _MAX_COUNT:
                row[index] += 1
        self._additions += 1
        if self._additions >= self.sample_size:
            self.reset()

    def estimate(self, key: Hashable) -> int:
        return min(row[index] for row, index in zip(self._rows, self._indexes(key), strict=True))

    def reset(self) -> None:
        """Age: halve every counter."""
        for row in self._rows:
            row[:] = [count >> 1 for count in row]
        self._additions //= 2


def frequency_victims(
    residents: Iterable[Resident],
    needed: int,
    budget: int,
    frequency: dict[tuple[str, int], int],
    window_fraction: float = WINDOW_FRACTION,
) -> list[tuple[str, int]] | None:
    """Evictable versions to unload so ``needed`` more bytes fit: least frequently used first
    (ties: least recently used), the window of most recently used ones (``window_fraction`` of
    the budget, at least one version) last, in LRU order.

    ``[]`` when it already fits; None when even evicting every evictable version is not enough.
    """
    residents = list(residents)
    excess = sum(r.size for r in residents) + needed - budget
    if excess <= 0:
        return []
    evictable = sorted((r for r in residents if r.evictable), key=lambda r: r.last_used)
    window: list[Resident] = []
    room = window_fraction * budget
    while evictable and (not window or evictable[-1].size <= room):
        room -= evictable[-1].size
        window.insert(0, evictable.pop())
    order = sorted(evictable, key=lambda r: (frequency.get(r.key, 0), r.last_used)) + window
    victims: list[tuple[str, int]] = []
    for resident in order:
        victims.append(resident.key)
        excess -= resident.size
        if excess <= 0:
            return victims
    return None


def choose_victims(
    policy: EvictionPolicy,
    residents: Iterable[Resident],
    needed: int,
    budget: int,
    frequency: dict[tuple[str, int], int],
) -> list[tuple[str, int]] | None:
    if policy == "lru":
        return eviction_victims(residents, needed, budget)
    return frequency_victims(residents, needed, budget, frequency)


# -- offline replays ------------------------------------------------------------------------


def replay(
    policy: EvictionPolicy,
    requests: Sequence[str],
    sizes: dict[str, int],
    budget: int,
    sketch_width: int = 4096,
) -> float:
    """Hit rate of ``policy`` serving ``requests`` one after another (version 1 of each name)
    under ``budget``, with the same victim choice the server makes. A name larger than the
    budget is a miss that loads nothing."""
    sketch = FrequencySketch(sketch_width)
    resident: dict[str, Resident] = {}
    hits = 0
    for clock, name in enumerate(requests):
        key = (name, 1)
        sketch.increment(key)
        if name in resident:
            hits += 1
        else:
            frequency = {(n, 1): sketch.estimate((n, 1)) for n in resident}
            victims = choose_victims(policy, resident.values(), sizes[name], budget, frequency)
            if victims is None:
                continue
            for victim_name, _ in victims:
                del resident[victim_name]
        resident[name] = Resident(key, sizes[name], float(clock), evictable=True)
    return hits / len(requests) if requests else 0.0


def optimal_replay(requests: Sequence[str], sizes: dict[str, int], budget: int) -> float:
    """Hit rate of Belady's offline policy: on a miss, evict the residents next requested
    furthest in the future (never again first). Optimal for equal sizes; for unequal sizes
    it is the usual approximation of the (NP-hard) optimum."""
    never = len(requests)
    next_use = [never] * len(requests)
    seen: dict[str, int] = {}
    for i in range(len(requests) - 1, -1, -1):
        next_use[i] = seen.get(requests[i], never)
        seen[requests[i]] = i
    resident: dict[str, int] = {}  # name -> index of its next request
    used = hits = 0
    for i, name in enumerate(requests):
        if name in resident:
            hits += 1
        elif sizes[name] > budget:
            continue
        else:
            for victim in sorted(resident, key=resident.__getitem__, reverse=True):
                if used + sizes[name] <= budget:
                    break
                used -= sizes[victim]
                del resident[victim]
            used += sizes[name]
        resident[name] = next_use[i]
    return hits / len(requests) if requests else 0.0
