"""Frequency-aware eviction (TinyLFU), pure, plus the offline replays and the budget using it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfmux.config import ServerConfig
from tfmux.core.eviction import (
    FrequencySketch,
    choose_victims,
    frequency_victims,
    optimal_replay,
    replay,
)
from tfmux.core.policy import Resident, eviction_victims

from .test_core_budget import Stack, U, make_stack  # noqa: F401  (make_stack: a fixture)

keys = st.tuples(st.sampled_from("abcdefghij"), st.integers(1, 3))


# -- the sketch ------------------------------------------------------------------------------


@given(st.lists(keys, max_size=300))
def test_sketch_never_undercounts_before_aging(accesses: list[tuple[str, int]]) -> None:
    sketch = FrequencySketch(width=16)  # narrow: collisions happen
    for key in accesses:
        sketch.increment(key)
    for key, count in Counter(accesses).items():
        assert sketch.estimate(key) >= min(count, 4095)


def test_sketch_counts_exactly_without_collisions_and_ages_by_halving() -> None:
    sketch = FrequencySketch(width=4096)
    for _ in range(10):
        sketch.increment(("hot", 1))
    sketch.increment(("cold", 1))
    assert sketch.estimate(("hot", 1)) == 10
    assert sketch.estimate(("cold", 1)) == 1
    assert sketch.estimate(("never", 1)) == 0
    sketch.reset()
    assert sketch.estimate(("hot", 1)) == 5
    assert sketch.estimate(("cold", 1)) == 0


def test_sketch_ages_itself_after_its_sample_size() -> None:
    sketch = FrequencySketch(width=16)  # ages after 160 increments
    for _ in range(sketch.sample_size - 1):
        sketch.increment(("a", 1))
    assert sketch.estimate(("a", 1)) == 159
    sketch.increment(("a", 1))  # the sample is complete: everything halves
    assert sketch.estimate(("a", 1)) == 80


def test_sketch_width_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrequencySketch(width=0)


# -- choosing victims ------------------------------------------------------------------------


def resident(name: str, size: int = 10, last_used: float = 0.0, evictable: bool = True) -> Resident:
    return Resident((name, 1), size, last_used, evictable)


def test_frequency_victims_examples() -> None:
    hot = resident("hot", last_used=1.0)
    rare = resident("rare", last_used=2.0)
    newest = resident("new", last_used=9.0)
    busy = resident("busy", last_used=0.0, evictable=False)
    freq = {("hot", 1): 9, ("rare", 1): 1, ("new", 1): 0}
    everyone = [hot, rare, newest, busy]
    assert frequency_victims(everyone, 10, 60, freq) == []
    # LRU would take hot (least recently used); TinyLFU takes the rare one; the newest is
    # in the window even though its count is lowest.
    assert eviction_victims(everyone, 10, 40) == [("hot", 1)]
    assert frequency_victims(everyone, 10, 40, freq) == [("rare", 1)]
    assert frequency_victims(everyone, 20, 40, freq) == [("rare", 1), ("hot", 1)]
    assert frequency_victims(everyone, 30, 40, freq) == [("rare", 1), ("hot", 1), ("new", 1)]
    assert frequency_victims(everyone, 31, 40, freq) is None
    # equal counts: least recently used first
    assert frequency_victims([hot, rare, newest], 10, 30, {}) == [("hot", 1)]
    assert choose_victims("lru", everyone, 10, 40, freq) == [("hot", 1)]
    assert choose_victims("tinylfu", everyone, 10, 40, freq) == [("rare", 1)]


residents_lists = st.lists(
    st.tuples(st.integers(1, 50), st.integers(0, 100), st.booleans(), st.integers(0, 20)),
    max_size=12,
)


@given(residents_lists, st.integers(0, 200), st.integers(1, 400))
def test_frequency_victims_free_enough_and_only_evictable(
    specs: list[tuple[int, int, bool, int]], needed: int, budget: int
) -> None:
    residents = [
        Resident((f"m{i}", 1), size, float(used), evictable)
        for i, (size, used, evictable, _) in enumerate(specs)
    ]
    freq = {r.key: spec[3] for r, spec in zip(residents, specs, strict=True)}
    victims = frequency_victims(residents, needed, budget, freq)
    total = sum(r.size for r in residents)
    freeable = sum(r.size for r in residents if r.evictable)
    if total + needed <= budget:
        assert victims == []
        return
    if total - freeable + needed > budget:
        assert victims is None
        return
    assert victims is not None
    by_key = {r.key: r for r in residents}
    chosen = [by_key[key] for key in victims]
    assert all(r.evictable for r in chosen)
    assert len(set(victims)) == len(victims)
    assert total - sum(r.size for r in chosen) + needed <= budget
    # minimal in order: without the last victim it would not fit
    assert total - sum(r.size for r in chosen[:-1]) + needed > budget


# -- replays ---------------------------------------------------------------------------------

sequences = st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=120)


@settings(max_examples=60)
@given(sequences, st.integers(1, 8))
def test_optimal_replay_is_at_least_every_online_policy_for_equal_sizes(
    requests: list[str], capacity: int
) -> None:
    sizes = dict.fromkeys("abcdefgh", 1)
    best = optimal_replay(requests, sizes, capacity)
    assert replay("lru", requests, sizes, capacity) <= best + 1e-9
    assert replay("tinylfu", requests, sizes, capacity) <= best + 1e-9
    distinct = len(set(requests))
    if capacity >= distinct:  # everything fits: only the first request of each misses
        expected = pytest.approx(1 - distinct / len(requests))
        assert best == expected
        assert replay("lru", requests, sizes, capacity) == expected


def test_replays_by_hand() -> None:
    sizes = dict.fromkeys("abc", 1)
    # capacity 2, a b c a b c ...: LRU always misses; Belady keeps one of two
    cycle = list("abc" * 4)
    assert replay("lru", cycle, sizes, 2) == 0.0
    assert optimal_replay(cycle, sizes, 2) == pytest.approx(5 / 12)
    assert replay("lru", [], sizes, 2) == optimal_replay([], sizes, 2) == 0.0
    assert optimal_replay(["a", "a"], {"a": 5}, 4) == 0.0  # bigger than the budget


def test_tinylfu_keeps_hot_models_through_a_scan_that_flushes_lru() -> None:
    hot = ["h1", "h2", "h3"]
    scan = [f"once{i}" for i in range(60)]
    bursts = [scan[i : i + 3] for i in range(0, len(scan), 3)]  # three one-offs, then the hot
    requests = hot * 20 + [x for burst in bursts for x in (*burst, *hot)]
    sizes = dict.fromkeys(hot + scan, 1)
    lru = replay("lru", requests, sizes, 4)
    tinylfu = replay("tinylfu", requests, sizes, 4)
    assert tinylfu > lru + 0.2
    assert tinylfu <= optimal_replay(requests, sizes, 4)


# -- the budget, over the fake runtime -------------------------------------------------------


def test_server_default_is_tinylfu_and_lru_stays_selectable() -> None:
    assert ServerConfig().eviction_policy == "tinylfu"
    assert ServerConfig(eviction_policy="lru").eviction_policy == "lru"


@pytest.mark.parametrize(
    ("policy", "survivors"), [("tinylfu", {"hot", "warm", "new"}), ("lru", {"rare", "warm", "new"})]
)
def test_budget_evicts_by_policy(
    make_stack: Callable[..., Stack],  # noqa: F811
    policy: str,
    survivors: set[str],
) -> None:
    stack = make_stack(budget=3.5, eviction_policy=policy)
    for name in ("hot", "rare", "warm", "new"):
        stack.add(name)
    for _ in range(5):
        stack.infer("hot")
    stack.infer("rare")  # LRU's victim becomes hot, the least recently used
    stack.infer("warm")  # the most recent: in TinyLFU's window
    stack.infer("new")
    assert stack.loaded() == survivors
    assert stack.manager.budget.policy == policy
    if policy == "tinylfu":
        assert stack.manager.budget.frequency(("hot", 1)) == 5
    assert stack.manager.budget.used() <= 3.5 * U


def test_budget_refuses_an_unknown_policy(make_stack: Callable[..., Stack]) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="eviction policy"):
        make_stack(budget=1, eviction_policy="random")


def test_sketch_counters_saturate() -> None:
    sketch = FrequencySketch(width=1024)  # ages after 10,240 increments
    for _ in range(5000):
        sketch.increment(("hot", 1))
    assert sketch.estimate(("hot", 1)) == 4095
