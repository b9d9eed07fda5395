"""Pure policies: which versions on disk to serve, which version ``latest`` means."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfmux.config import VersionPolicy
from tfmux.core.policy import latest_version, versions_to_serve

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")

versions_on_disk = st.lists(st.integers(min_value=0, max_value=10**12), max_size=20)
version_sets = st.frozensets(st.integers(min_value=0, max_value=50), min_size=1, max_size=10)


# -- versions_to_serve -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_disk", "policy", "expected"),
    [
        ([], VersionPolicy(), []),
        ([], VersionPolicy(kind="all"), []),
        ([], VersionPolicy(kind="specific", versions=(1,)), []),
        ([3], VersionPolicy(), [3]),
        ([1, 2, 3], VersionPolicy(), [3]),
        ([3, 1, 2], VersionPolicy(num_versions=2), [2, 3]),
        ([1, 2, 3], VersionPolicy(num_versions=3), [1, 2, 3]),
        ([1, 2, 3], VersionPolicy(num_versions=10), [1, 2, 3]),
        ([9, 10, 100], VersionPolicy(), [100]),  # numeric, not lexicographic
        ([0, 7], VersionPolicy(), [7]),
        ([2, 2, 1], VersionPolicy(kind="all"), [1, 2]),
        ([5, 1, 3], VersionPolicy(kind="all"), [1, 3, 5]),
        ([1, 2, 3], VersionPolicy(kind="specific", versions=(1, 3)), [1, 3]),
        ([1, 2, 3], VersionPolicy(kind="specific", versions=(3, 4)), [3]),
        ([1, 2, 3], VersionPolicy(kind="specific", versions=(7, 8)), []),
        ([0, 1], VersionPolicy(kind="specific", versions=(0,)), [0]),
    ],
)
def test_versions_to_serve(on_disk: list[int], policy: VersionPolicy, expected: list[int]) -> None:
    assert versions_to_serve(on_disk, policy) == expected


def test_versions_to_serve_accepts_any_iterable() -> None:
    assert versions_to_serve(iter({4: "a", 2: "b"}), VersionPolicy(kind="all")) == [2, 4]
    assert versions_to_serve((v for v in (4, 2)), VersionPolicy()) == [4]


@given(on_disk=versions_on_disk, n=st.integers(min_value=1, max_value=25))
def test_latest_n_is_the_n_largest_ascending(on_disk: list[int], n: int) -> None:
    chosen = versions_to_serve(on_disk, VersionPolicy(kind="latest", num_versions=n))
    distinct = sorted(set(on_disk))
    assert chosen == sorted(chosen)
    assert len(chosen) == min(n, len(distinct))
    assert chosen == distinct[len(distinct) - len(chosen) :]
    assert all(v > w for v in chosen for w in set(distinct) - set(chosen))


@given(on_disk=versions_on_disk)
def test_all_is_every_version_once_ascending(on_disk: list[int]) -> None:
    assert versions_to_serve(on_disk, VersionPolicy(kind="all")) == sorted(set(on_disk))


@given(on_disk=st.lists(st.integers(min_value=0, max_value=50), max_size=20), wanted=version_sets)
def test_specific_is_what_was_asked_for_and_exists(
    on_disk: list[int], wanted: frozenset[int]
) -> None:
    policy = VersionPolicy(kind="specific", versions=tuple(sorted(wanted)))
    chosen = versions_to_serve(on_disk, policy)
    assert chosen == sorted(chosen)
    assert set(chosen) == set(on_disk) & wanted


# -- latest_version ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({}, None),
        ({1: "AVAILABLE"}, 1),
        ({1: "AVAILABLE", 2: "AVAILABLE"}, 2),
        ({1: "AVAILABLE", 2: "LOADING"}, 1),  # a ready version beats a newer loading one
        ({1: "AVAILABLE", 2: "END"}, 1),  # a failed newer version is skipped
        ({1: "AVAILABLE", 2: "UNLOADING"}, 1),
        ({9: "AVAILABLE", 10: "AVAILABLE"}, 10),
        ({1: "START", 2: "START"}, 2),  # lazy: the newest, which a request then loads
        ({1: "START", 2: "LOADING"}, 2),
        ({1: "LOADING", 2: "START", 3: "END"}, 2),
        ({1: "END", 2: "END"}, 2),  # nothing can serve: the newest, whose error is reported
        ({1: "END", 2: "UNLOADING"}, 2),
        ({3: "UNLOADING", 2: "END"}, 3),
    ],
)
def test_latest_version(states: dict[int, str], expected: int | None) -> None:
    assert latest_version(states) == expected


@given(st.dictionaries(st.integers(min_value=0, max_value=100), st.sampled_from(STATES)))
def test_latest_version_prefers_available_then_startable_then_newest(
    states: dict[int, str],
) -> None:
    chosen = latest_version(states)
    if not states:
        assert chosen is None
        return
    assert chosen in states
    available = [v for v, s in states.items() if s == "AVAILABLE"]
    startable = [v for v, s in states.items() if s in ("START", "LOADING")]
    if available:
        assert chosen == max(available)
    elif startable:
        assert chosen == max(startable)
    else:
        assert chosen == max(states)
