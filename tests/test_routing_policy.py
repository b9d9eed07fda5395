"""The pure traffic policy: weighted choice, sticky keys, minimal movement, validation.

Shares are checked against the weights within 4 standard deviations of a binomial count
(a false alarm about once in 16,000 checks); every random sequence is seeded, so a run is
reproducible.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfmux.core.routing import Shadow, Split, choose_arm, mirrored, unit_hash
from tfmux.errors import ErrorKind, ServingError

DRAWS = 20_000
KEYS = [f"user-{i}" for i in range(DRAWS)]
WEIGHT_SETS: list[dict[str, float]] = [
    {"a": 1, "b": 1},
    {"stable": 90, "canary": 10},
    {"a": 1, "b": 2, "c": 3, "off": 0},
    {"x": 0.5, "y": 99.5},
    {"v1": 5, "v2": 5, "v3": 5, "v4": 5, "v5": 80},
]


def tolerance(n: int, p: float) -> float:
    """4 standard deviations of a Binomial(n, p) count."""
    return 4 * math.sqrt(n * p * (1 - p))


def assert_shares(counts: Mapping[str, int], weights: Mapping[str, float]) -> None:
    n = sum(counts.values())
    total = sum(weights.values())
    for arm, weight in weights.items():
        expected = n * weight / total
        assert abs(counts.get(arm, 0) - expected) <= tolerance(n, weight / total), (
            arm,
            counts,
            weights,
        )


# -- shares follow the weights ------------------------------------------------------------------


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=str)
def test_random_choice_follows_the_weights(weights: dict[str, float]) -> None:
    rng = random.Random(20240601)
    counts = Counter(choose_arm(weights, None, rng.random()) for _ in range(DRAWS))
    assert_shares(counts, weights)


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=str)
def test_keyed_choice_follows_the_weights_over_distinct_keys(weights: dict[str, float]) -> None:
    counts = Counter(choose_arm(weights, key, 0.0) for key in KEYS)
    assert_shares(counts, weights)


def test_draw_edges_pick_the_first_and_last_positive_arms() -> None:
    weights = {"off": 0.0, "a": 1.0, "b": 3.0, "off2": 0.0}
    assert choose_arm(weights, None, 0.0) == "a"
    assert choose_arm(weights, None, 0.2499) == "a"
    assert choose_arm(weights, None, 0.25) == "b"
    assert choose_arm(weights, None, math.nextafter(1.0, 0.0)) == "b"


def test_zero_weight_arms_are_never_chosen() -> None:
    weights = {"zero": 0.0, "live": 1.0, "nil": 0.0, "other": 2.0}
    rng = random.Random(7)
    chosen = {choose_arm(weights, None, rng.random()) for _ in range(5_000)}
    chosen |= {choose_arm(weights, key, 0.0) for key in KEYS[:5_000]}
    assert chosen == {"live", "other"}


def test_a_split_with_no_positive_weight_is_refused() -> None:
    with pytest.raises(ServingError) as info:
        choose_arm({"a": 0.0, "b": 0.0}, None, 0.5)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert info.value.message == "no arm of the split has a positive weight"
    assert choose_arm({"a": 0.0, "b": 1.0}, None, 0.5) == "b"


# -- sticky keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=str)
def test_same_key_and_weights_always_land_on_the_same_arm(weights: dict[str, float]) -> None:
    rng = random.Random(3)
    first = {key: choose_arm(weights, key, rng.random()) for key in KEYS[:2_000]}
    for _ in range(3):  # the draw is ignored when a key is given
        assert {key: choose_arm(weights, key, rng.random()) for key in first} == first
    reordered = dict(reversed(list(weights.items())))  # arm order does not matter either
    assert {key: choose_arm(reordered, key, 0.5) for key in first} == first


def test_unit_hash_is_stable_across_runs() -> None:
    assert unit_hash("user-1", "stable") == 0.12282294114339573
    assert unit_hash("user-1", "canary") == 0.9943629743953937
    assert unit_hash("") == 0.8931675160897388
    assert unit_hash("a", "b") == 0.9699142814205318
    assert all(0 < unit_hash(key) < 1 for key in KEYS[:1_000])


# -- minimal movement ---------------------------------------------------------------------------

WEIGHT = st.one_of(st.just(0.0), st.floats(0.01, 1_000.0))
MOVE_KEYS = KEYS[:2_000]


@st.composite
def weight_changes(draw: st.DrawFn) -> tuple[dict[str, float], str, float]:
    """(weights, the arm whose weight changes, its new weight); both splits are valid."""
    count = draw(st.integers(2, 5))
    weights = {f"arm{i}": draw(WEIGHT) for i in range(count)}
    arm = draw(st.sampled_from(sorted(weights)))
    new = draw(WEIGHT)
    rest = sum(w for a, w in weights.items() if a != arm)
    if rest == 0 and (weights[arm] == 0 or new == 0):
        weights[sorted(set(weights) - {arm})[0]] = 1.0
    return weights, arm, new


@settings(max_examples=60, deadline=None, derandomize=True)
@given(weight_changes())
def test_changing_one_weight_moves_only_keys_to_or_from_that_arm(
    change: tuple[dict[str, float], str, float],
) -> None:
    weights, arm, new = change
    after = {**weights, arm: new}
    moved = 0
    for key in MOVE_KEYS:
        old_arm, new_arm = choose_arm(weights, key, 0.0), choose_arm(after, key, 0.0)
        if old_arm != new_arm:
            moved += 1
            assert arm in (old_arm, new_arm), (key, old_arm, new_arm)
    delta = abs(new / sum(after.values()) - weights[arm] / sum(weights.values()))
    n = len(MOVE_KEYS)
    # +2: a change of a tiny share may still move a key or two
    assert abs(moved - n * delta) <= tolerance(n, delta) + 2, (moved, n * delta)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"stable": 90, "canary": 10}, {"stable": 90, "canary": 20}),
        ({"stable": 90, "canary": 10}, {"stable": 90, "canary": 0}),
        ({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 2}),
        ({"stable": 99, "canary": 1}, {"stable": 50, "canary": 1}),
    ],
    ids=str,
)
def test_fraction_of_keys_moved_is_the_change_of_share(
    before: dict[str, float], after: dict[str, float]
) -> None:
    moved = sum(choose_arm(before, k, 0.0) != choose_arm(after, k, 0.0) for k in KEYS)
    arm = next(a for a in before if before[a] != after[a])
    delta = abs(after[arm] / sum(after.values()) - before[arm] / sum(before.values()))
    assert abs(moved - DRAWS * delta) <= tolerance(DRAWS, delta)


# -- validation ---------------------------------------------------------------------------------

KNOWN = {"stable", "canary", "1", "2"}


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (Split({"stable": -1.0}), "weight of 'stable' must be >= 0, not -1.0"),
        (Split({"stable": math.nan}), "weight of 'stable' must be >= 0, not nan"),
        (Split({"stable": math.inf}), "weight of 'stable' must be >= 0, not inf"),
        (Split({"stable": 0.0, "canary": 0.0}), "split weights must sum to more than 0"),
        (Split({"stable": 1.0, "beta": 1.0}), "split arm 'beta' is not a label"),
        (Split({}, Shadow("beta", 10)), "shadow target 'beta' is not a label"),
        (Split({}, Shadow("canary", -1)), "shadow percent must be between 0 and 100"),
        (Split({}, Shadow("canary", 100.5)), "shadow percent must be between 0 and 100"),
        (Split({}, Shadow("canary", math.nan)), "shadow percent must be between 0 and 100"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_invalid_splits_are_refused(split: Split, message: str) -> None:
    with pytest.raises(ServingError) as info:
        split.validate(KNOWN, "label")
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert info.value.message == message
    Split({"stable": 90, "canary": 10}, Shadow("2", 5)).validate(KNOWN, "label")


@pytest.mark.parametrize(
    "split",
    [
        Split(),
        Split({"stable": 1.0, "canary": 0.0}),
        Split({}, Shadow("canary", 0)),
        Split({"1": 0.5, "2": 0.5}, Shadow("stable", 100)),
    ],
    ids=str,
)
def test_valid_splits_pass(split: Split) -> None:
    split.validate(KNOWN, "label")


# -- shadows ------------------------------------------------------------------------------------


def test_mirrored_follows_the_percentage() -> None:
    assert not mirrored(None, 0.0)
    assert not any(mirrored(Shadow("2", 0), d / 100) for d in range(100))
    assert all(mirrored(Shadow("2", 100), d / 100) for d in range(100))
    assert mirrored(Shadow("2", 100), math.nextafter(1.0, 0.0))
    assert mirrored(Shadow("2", 25), 0.2499) and not mirrored(Shadow("2", 25), 0.25)
    for percent in (1, 10, 50, 90):
        rng = random.Random(percent)
        hits = sum(mirrored(Shadow("2", percent), rng.random()) for _ in range(DRAWS))
        p = percent / 100
        assert abs(hits - DRAWS * p) <= tolerance(DRAWS, p), (percent, hits)
