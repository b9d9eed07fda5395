"""The cluster's placement and routing policy, pure, without Ray."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tfmux.cluster.placement import (
    ReplicaSnapshot,
    choose_replica,
    cluster_status,
    merge_statuses,
)
from tfmux.types import VersionStatus

MiB = 1024 * 1024


def snap(
    name: str,
    models: dict[str, str] | None = None,
    budget: int | None = 100 * MiB,
    used: int = 0,
    size: int = 10 * MiB,
) -> ReplicaSnapshot:
    statuses = {
        model: (VersionStatus(1, state, memory_bytes=size if state == "AVAILABLE" else None),)
        for model, state in (models or {}).items()
    }
    return ReplicaSnapshot(name, budget_bytes=budget, used_bytes=used, models=statuses)


def choose(model: str, replicas: list[ReplicaSnapshot], **kw: object) -> tuple[str, str]:
    inflight = kw.pop("inflight", {})
    placing = kw.pop("placing", {})
    hot = kw.pop("hot", 8)
    spread = kw.pop("may_spread", True)
    decision = choose_replica(model, None, replicas, inflight, placing, hot, spread)  # type: ignore[arg-type]
    assert decision is not None
    return decision.replica, decision.action


def test_no_replica_no_decision() -> None:
    assert choose_replica("m", None, [], {}, {}, 8) is None


def test_resident_model_goes_where_it_lives() -> None:
    replicas = [snap("a", used=5 * MiB), snap("b", {"m": "AVAILABLE"}, used=90 * MiB)]
    assert choose("m", replicas) == ("b", "resident")


def test_resident_beats_loading_and_the_least_busy_holder_serves() -> None:
    replicas = [
        snap("a", {"m": "LOADING"}),
        snap("b", {"m": "AVAILABLE"}),
        snap("c", {"m": "AVAILABLE"}),
    ]
    assert choose("m", replicas, inflight={"b": 3, "c": 1}) == ("c", "resident")
    assert choose("m", [*replicas[:1], snap("b")]) == ("a", "loading")


def test_model_held_nowhere_goes_to_the_most_free_budget() -> None:
    replicas = [snap("a", used=60 * MiB), snap("b", used=20 * MiB), snap("c", used=40 * MiB)]
    assert choose("m", replicas) == ("b", "place")


def test_unbounded_replicas_spread_placements_by_models_held() -> None:
    replicas = [snap("a", {"x": "AVAILABLE"}, budget=None), snap("b", budget=None)]
    assert choose("m", replicas) == ("b", "place")


def test_a_placement_in_progress_holds_the_model_so_a_burst_loads_once() -> None:
    replicas = [snap("a", used=10 * MiB), snap("b", used=50 * MiB)]
    first = choose("m", replicas)
    assert first == ("a", "place")
    # The burst: the replica has not reported the model yet, and is busier now.
    for busy in range(1, 8):
        assert choose("m", replicas, placing={"m": ["a"]}, inflight={"a": busy}) == (
            "a",
            "placing",
        )


def test_a_hot_model_gets_one_more_replica_with_room() -> None:
    replicas = [
        snap("a", {"m": "AVAILABLE"}),
        snap("b", used=95 * MiB),  # no room for a 10 MiB model
        snap("c", used=50 * MiB),
    ]
    assert choose("m", replicas, inflight={"a": 8}) == ("c", "spread")
    # Not hot: stays resident.
    assert choose("m", replicas, inflight={"a": 7}) == ("a", "resident")
    # Hot, but not for long enough yet (the router's call): stays.
    assert choose("m", replicas, inflight={"a": 8}, may_spread=False) == ("a", "resident")
    # Hot but nowhere with room and less busy: stays.
    assert choose("m", replicas, inflight={"a": 8, "c": 9}) == ("a", "resident")


def test_a_model_still_loading_does_not_spread() -> None:
    replicas = [snap("a", {"m": "LOADING"}), snap("c")]
    assert choose("m", replicas, inflight={"a": 20}) == ("a", "loading")
    assert choose("m", [snap("a"), snap("c")], inflight={"a": 20}, placing={"m": ["a"]}) == (
        "a",
        "placing",
    )


def test_a_spread_copy_being_placed_takes_traffic_while_the_first_is_hot() -> None:
    replicas = [snap("a", {"m": "AVAILABLE"}), snap("c")]
    got = choose("m", replicas, inflight={"a": 8, "c": 1}, placing={"m": ["c"]})
    assert got == ("c", "placing")


def test_a_specific_version_needs_that_version() -> None:
    a = ReplicaSnapshot("a", models={"m": (VersionStatus(1, "AVAILABLE"),)})
    b = ReplicaSnapshot("b", models={"m": (VersionStatus(2, "AVAILABLE"),)})
    decision = choose_replica("m", 2, [a, b], {}, {}, 8)
    assert decision is not None and (decision.replica, decision.action) == ("b", "resident")


def test_zipf_traffic_mostly_hits_resident_replicas() -> None:
    """A simulation: replicas hold what the policy placed on them (LRU under the budget);
    after warmup nearly every request finds its model resident."""
    rng = random.Random(7)
    models = [f"m{i}" for i in range(12)]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(models))]
    held: dict[str, list[str]] = {r: [] for r in ("a", "b", "c")}  # LRU order
    capacity = 5  # models per replica (of 12): the cluster holds them all, one replica cannot
    outcomes: Counter[str] = Counter()
    for step in range(3000):
        model = rng.choices(models, weights)[0]
        replicas = [
            snap(
                r,
                dict.fromkeys(ms, "AVAILABLE"),
                used=len(ms) * 10 * MiB,
                budget=capacity * 10 * MiB,
            )
            for r, ms in held.items()
        ]
        replica, action = choose(model, replicas)
        lru = held[replica]
        if model in lru:
            lru.remove(model)
        elif len(lru) >= capacity:
            lru.pop(0)
        lru.append(model)
        if step >= 500:
            outcomes[action] += 1
    assert outcomes["resident"] / sum(outcomes.values()) >= 0.9


def test_wire_round_trip_and_merged_status() -> None:
    original = snap("a", {"m": "AVAILABLE", "n": "START"}, used=10 * MiB)
    assert ReplicaSnapshot.from_wire(original.to_wire()) == original
    merged = merge_statuses("m", [original, snap("b", {"m": "LOADING"})])
    assert cluster_status(merged[1]).state == "AVAILABLE"
    failed = VersionStatus(1, "END", "NOT_FOUND", "no saved_model.pb")
    assert cluster_status([("a", failed), ("b", VersionStatus(1, "END"))]) == failed


@pytest.mark.parametrize("free", [0, 5 * MiB])
def test_free_bytes(free: int) -> None:
    assert snap("a", used=100 * MiB - free).free_bytes == free
    assert snap("a", budget=None).free_bytes == float("inf")
