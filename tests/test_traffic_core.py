"""TrafficTable and ServingService over the fake runtime: splits, aliases, shadows, updates.

Models come from tests/fakes.py: version N's output is ``x * N`` unless a test builds its own.
Coroutines are driven with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfmux.config import AliasConfig, ModelConfig, ShadowConfig, TrafficConfig
from tfmux.core.manager import ModelManager
from tfmux.core.service import Management, ServingService
from tfmux.core.traffic import Route, TrafficTable
from tfmux.errors import ErrorKind, ServingError
from tfmux.types import InferenceResult, ModelRef

from .fakes import (
    GATE_TIMEOUT,
    FakeLoader,
    FakeModel,
    RecordingObserver,
    make_repository,
    model_config,
    signature,
    version_factor_model,
)

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
N = 20_000
LABELS = {"stable": 1, "canary": 2}
CANARY_10 = TrafficConfig(split={"stable": 90, "canary": 10})


def within(count: int, n: int, p: float) -> bool:
    """``count`` of ``n`` is within 4 standard deviations of Binomial(n, p)."""
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def table(*configs: ModelConfig) -> TrafficTable:
    traffic = TrafficTable(random.Random(1).random)
    for config in configs:
        traffic.configure_model(config)
    return traffic


def config(name: str = "m", **fields: Any) -> ModelConfig:
    return model_config(name, Path("/models") / name, **fields)


def error_of(call: Callable[[], object]) -> ServingError:
    with pytest.raises(ServingError) as info:
        call()
    return info.value


# -- TrafficTable.route -------------------------------------------------------------------------


def test_split_over_labels_routes_to_the_labels_versions_by_weight() -> None:
    traffic = table(config(labels=LABELS, traffic=CANARY_10))
    routes = Counter(traffic.route(ModelRef("m")) for _ in range(N))
    assert set(routes) == {
        Route(ModelRef("m", version=1), arm="stable"),
        Route(ModelRef("m", version=2), arm="canary"),
    }
    assert within(routes[Route(ModelRef("m", version=2), arm="canary")], N, 0.1)


def test_split_over_version_numbers() -> None:
    traffic = table(config(traffic=TrafficConfig(split={"1": 1, "3": 3, "7": 0})))
    versions = Counter(traffic.route(ModelRef("m")).ref.version for _ in range(N))
    assert set(versions) == {1, 3}
    assert within(versions[3], N, 0.75)


def test_requests_naming_a_version_or_label_bypass_the_split() -> None:
    traffic = table(config(labels=LABELS, traffic=CANARY_10))
    for ref in (ModelRef("m", version=2), ModelRef("m", label="stable"), ModelRef("other")):
        assert traffic.route(ref) == Route(ref)
    assert table(config()).route(ModelRef("m")) == Route(ModelRef("m"))  # no split


def test_routing_key_is_sticky_and_kept_on_the_route() -> None:
    traffic = table(config(labels=LABELS, traffic=TrafficConfig(split={"stable": 1, "canary": 1})))
    for key in (f"k{i}" for i in range(200)):
        first = traffic.route(ModelRef("m", routing_key=key))
        assert first.ref.routing_key == key
        assert all(traffic.route(ModelRef("m", routing_key=key)) == first for _ in range(5))


def test_shadow_is_resolved_to_a_version_and_mirrors_its_percentage() -> None:
    always = TrafficConfig(split={"stable": 1}, shadow=ShadowConfig(target="canary"))
    assert table(config(labels=LABELS, traffic=always)).route(ModelRef("m")) == Route(
        ModelRef("m", version=1), ModelRef("m", version=2), "stable"
    )
    some = TrafficConfig(shadow=ShadowConfig(target="3", percent=30))  # no split: latest
    traffic = table(config(traffic=some))
    shadows = Counter(traffic.route(ModelRef("m")).shadow for _ in range(N))
    assert set(shadows) == {None, ModelRef("m", version=3)}
    assert within(shadows[ModelRef("m", version=3)], N, 0.3)
    never = TrafficConfig(split={"1": 1}, shadow=ShadowConfig(target="2", percent=0))
    assert all(table(config(traffic=never)).route(ModelRef("m")).shadow is None for _ in range(99))


def test_alias_picks_a_model_then_that_models_own_split() -> None:
    traffic = table(
        config("a", labels=LABELS, traffic=TrafficConfig(split={"canary": 1})),
        config("b"),
    )
    traffic.set_aliases([AliasConfig(name="ab", split={"a": 1, "b": 3})])
    routes = Counter(traffic.route(ModelRef("ab")) for _ in range(N))
    assert set(routes) == {
        Route(ModelRef("a", version=2), arm="a"),  # the alias's arm; a's split chose canary
        Route(ModelRef("b"), arm="b"),
    }
    assert within(routes[Route(ModelRef("b"), arm="b")], N, 0.75)


def test_alias_shadow_or_else_the_target_models_shadow() -> None:
    mirrored = TrafficConfig(split={"1": 1}, shadow=ShadowConfig(target="2"))
    traffic = table(config("a", traffic=mirrored), config("b"))
    traffic.set_aliases(
        [
            AliasConfig(name="own", split={"a": 1}, shadow=ShadowConfig(target="b")),
            AliasConfig(name="inherit", split={"a": 1}),
        ]
    )
    assert traffic.route(ModelRef("own")).shadow == ModelRef("b")
    assert traffic.route(ModelRef("inherit")).shadow == ModelRef("a", version=2)


def test_bad_aliases_and_splits_are_refused_at_configuration() -> None:
    traffic = table(config("a"))
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: traffic.set_aliases([AliasConfig(name="a", split={"a": 1})]),
            "alias 'a' is also the name of a model",
        ),
        (
            lambda: traffic.set_aliases([AliasConfig(name="x", split={"nope": 1})]),
            "split arm 'nope' is not a configured model",
        ),
        (
            lambda: traffic.configure_model(
                config("c", traffic=TrafficConfig(split={"canary": 1}))
            ),
            "split arm 'canary' is not a label or version of model c",
        ),
    ]
    for call, message in cases:
        error = error_of(call)
        assert (error.kind, error.message) == (ErrorKind.INVALID_ARGUMENT, message)
    traffic.set_aliases([AliasConfig(name="x", split={"a": 1})])
    assert traffic.route(ModelRef("x")) == Route(ModelRef("a"), arm="a")


# -- TrafficTable.update ------------------------------------------------------------------------

SERVED = {1: True, 2: True, 3: False}  # version 3 is served but not AVAILABLE


@pytest.mark.parametrize(
    ("labels", "traffic", "kind", "message"),
    [
        (None, TrafficConfig(split={"stable": -1}), "INVALID_ARGUMENT", "weight of 'stable'"),
        (None, TrafficConfig(split={"stable": 0}), "INVALID_ARGUMENT", "must sum to more than 0"),
        (None, TrafficConfig(split={"beta": 1}), "INVALID_ARGUMENT", "split arm 'beta' is not"),
        (None, TrafficConfig(split={"9": 1}), "INVALID_ARGUMENT", "split arm '9' is not"),
        (
            None,
            TrafficConfig(shadow=ShadowConfig(target="beta")),
            "INVALID_ARGUMENT",
            "shadow target 'beta'",
        ),
        ({"bad-label": 1}, None, "INVALID_ARGUMENT", "label 'bad-label' must match"),
        ({"stable": 9}, None, "FAILED_PRECONDITION", "model m has no version 9"),
        ({"stable": 1, "canary": 3}, None, "FAILED_PRECONDITION", "version 3 of model m is not"),
        ({"stable": 1}, None, "INVALID_ARGUMENT", "split arm 'canary' is not"),  # still in split
    ],
)
def test_invalid_updates_are_refused_and_change_nothing(
    labels: dict[str, int] | None, traffic: TrafficConfig | None, kind: str, message: str
) -> None:
    table_ = table(config(labels=LABELS, traffic=CANARY_10))
    before = table_.routing("m")
    error = error_of(lambda: table_.update("m", labels, traffic, SERVED))
    assert error.kind.value == kind and message in error.message, error.message
    assert table_.routing("m") == before
    table_.update("m", {"stable": 2, "canary": 1}, None, SERVED)  # a good update still works
    assert table_.label_version("m", "stable") == 2


def test_update_of_an_unknown_model_is_not_found() -> None:
    error = error_of(lambda: table().update("m", LABELS, None, SERVED))
    assert error.kind is ErrorKind.NOT_FOUND


def test_label_may_point_at_an_unavailable_version_only_when_allowed() -> None:
    traffic = table(config(labels=LABELS))
    moved = {"stable": 1, "canary": 3}
    assert error_of(lambda: traffic.update("m", moved, None, SERVED)).kind.value == (
        "FAILED_PRECONDITION"
    )
    routing = traffic.update("m", moved, None, SERVED, allow_unavailable=True)
    assert routing.labels == moved


def test_updating_labels_keeps_the_split_and_the_other_way_round() -> None:
    traffic = table(config(labels=LABELS, traffic=CANARY_10))
    traffic.update("m", {"stable": 2, "canary": 1}, None, SERVED)
    routing = traffic.routing("m")
    assert routing is not None and dict(routing.split.weights) == CANARY_10.split
    traffic.update("m", None, TrafficConfig(split={"canary": 1}), SERVED)
    assert traffic.route(ModelRef("m")) == Route(ModelRef("m", version=1), arm="canary")


def test_concurrent_updates_do_not_lose_each_others_changes() -> None:
    """One thread moves labels while another changes the split: both last changes stay."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            traffic = table(config(labels={"stable": 1}))

            def move_labels(t: TrafficTable = traffic) -> None:
                for i in range(40):
                    t.update("m", {"stable": 1 + i % 2}, None, SERVED)
                t.update("m", {"stable": 2, "canary": 1}, None, SERVED)

            def change_split(t: TrafficTable = traffic) -> None:
                for i in range(41):
                    t.update("m", None, TrafficConfig(split={"1": i + 1}), SERVED)

            threads = [threading.Thread(target=move_labels), threading.Thread(target=change_split)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(GATE_TIMEOUT)
            routing = traffic.routing("m")
            assert routing is not None
            assert (routing.labels, dict(routing.split.weights)) == (
                {"stable": 2, "canary": 1},
                {"1": 41},
            )
    finally:
        sys.setswitchinterval(interval)


# -- ServingService -----------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    loader: FakeLoader
    manager: ModelManager
    service: ServingService
    observer: RecordingObserver

    def add(self, name: str, versions: tuple[int, ...] = (1, 2), **fields: Any) -> None:
        make_repository(self.root, {name: versions})
        self.manager.add_model(model_config(name, self.root / name, version_policy="all", **fields))
        self.manager.wait_for_loads(GATE_TIMEOUT)

    async def infer(self, name: str, key: str | None = None) -> InferenceResult:
        return await self.service.infer(ModelRef(name, routing_key=key), {"x": X})

    async def wait_shadows(self, count: int) -> None:
        """Until ``count`` shadow outcomes have been recorded."""
        for _ in range(int(GATE_TIMEOUT * 1000)):
            if len(self.observer.shadows) >= count:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"{len(self.observer.shadows)} shadow outcomes, wanted {count}")

    def outcomes(self) -> Counter[str]:
        return Counter(outcome for *_, outcome, _ in self.observer.shadows)


def models_by_version(models: Mapping[int, FakeModel]) -> Callable[[ModelConfig, Path], FakeModel]:
    """A loader factory: the given model for those versions, ``x * version`` otherwise."""

    def build(config: ModelConfig, path: Path) -> FakeModel:
        return models.get(int(path.name)) or version_factor_model(config, path)

    return build


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(models: Mapping[int, FakeModel] | None = None, **service_kw: Any) -> Stack:
        loader = FakeLoader(models_by_version(models or {}))
        observer = RecordingObserver()
        manager = ModelManager(loader, observer=observer)
        service = ServingService(manager, inference_threads=4, observer=observer, **service_kw)
        stacks.append(Stack(tmp_path / f"r{len(stacks)}", loader, manager, service, observer))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.service.close()


def shadowed(percent: float = 100) -> dict[str, Any]:
    """Model fields: everything to stable (version 1), mirrored to version 2."""
    shadow = ShadowConfig(target="2", percent=percent)
    return {"labels": LABELS, "traffic": TrafficConfig(split={"stable": 1}, shadow=shadow)}


def test_result_names_arm_and_version_and_the_observer_sees_routes(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    stack.add("m", labels=LABELS, traffic=TrafficConfig(split={"stable": 1, "canary": 1}))

    async def main() -> list[InferenceResult]:
        return [await stack.infer("m", f"user{i}") for i in range(40)]

    results = asyncio.run(main())
    for result in results:
        assert LABELS[result.arm] == result.version
        np.testing.assert_array_equal(result.outputs["y"], X * result.version)
    assert {r.arm for r in results} == {"stable", "canary"}
    assert stack.observer.routes == [("m", r.arm, str(r.version)) for r in results]
    explicit = asyncio.run(stack.service.infer(ModelRef("m", version=2), {"x": X}))
    assert (explicit.arm, explicit.version, len(stack.observer.routes)) == ("", 2, 40)


def test_alias_result_comes_from_the_target_model(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.add("a", labels=LABELS, traffic=TrafficConfig(split={"canary": 1}))
    stack.add("b", versions=(5,))
    stack.manager.traffic.set_aliases([AliasConfig(name="ab", split={"a": 1, "b": 1})])

    async def main() -> list[InferenceResult]:
        return await asyncio.gather(*(stack.infer("ab", f"k{i}") for i in range(20)))

    results = asyncio.run(main())
    assert {(r.model_name, r.version, r.arm) for r in results} == {("a", 2, "a"), ("b", 5, "b")}
    assert Counter(e[0] for e in stack.observer.routes) == {"ab": 20}


def test_caller_gets_the_primary_and_a_disagreeing_shadow_is_recorded(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    stack.add("m", **shadowed())

    async def main() -> list[InferenceResult]:
        results = []
        for i in range(10):
            results.append(await stack.infer("m"))
            await stack.wait_shadows(i + 1)
        return results

    for result in asyncio.run(main()):
        assert (result.version, result.arm) == (1, "stable")
        np.testing.assert_array_equal(result.outputs["y"], X)
    assert stack.observer.shadows == [("m", "1", "2", "disagree", {"y": 2.0})] * 10


def test_an_agreeing_shadow_has_no_difference(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack({2: FakeModel(factor=1.0)})
    stack.add("m", **shadowed())

    async def main() -> None:
        for i in range(5):
            await stack.infer("m")
            await stack.wait_shadows(i + 1)

    asyncio.run(main())
    assert stack.observer.shadows == [("m", "1", "2", "agree", {"y": 0.0})] * 5


@pytest.mark.parametrize(
    "broken",
    [
        FakeModel(fail_when=lambda inputs: True),  # fails at run time
        FakeModel([signature(inputs={"z": ("float32", (None, 3))})]),  # refuses the inputs
    ],
    ids=["raises", "other-signature"],
)
def test_shadow_errors_never_reach_the_caller(
    make_stack: Callable[..., Stack], broken: FakeModel
) -> None:
    stack = make_stack({2: broken})
    stack.add("m", **shadowed())

    async def main() -> list[InferenceResult]:
        results = []
        for i in range(10):
            results.append(await stack.infer("m"))
            await stack.wait_shadows(i + 1)
        return results

    for result in asyncio.run(main()):
        assert result.version == 1
        np.testing.assert_array_equal(result.outputs["y"], X)
    assert stack.outcomes() == {"error": 10}
    assert all(event[2] == "2" for event in stack.observer.shadows)  # the failing version
    assert [e.error for e in stack.observer.requests] == [None] * 10  # callers saw no error


def test_shadow_work_is_bounded_and_primaries_still_complete(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack({2: FakeModel(factor=1.0, run_gate=gate)})
    stack.add("m", **shadowed())

    async def main() -> list[InferenceResult]:
        results = [await stack.infer("m") for _ in range(10)]  # 2 mirrors held, 8 dropped
        assert stack.outcomes() == {"dropped": 8}
        gate.set()
        await stack.wait_shadows(10)
        return results

    try:
        results = asyncio.run(main())
    finally:
        gate.set()
    assert [r.version for r in results] == [1] * 10
    assert stack.outcomes() == {"dropped": 8, "agree": 2}


def test_stop_shadows_cancels_pending_mirrors(make_stack: Callable[..., Stack]) -> None:
    gate = threading.Event()
    stack = make_stack({2: FakeModel(factor=1.0, run_gate=gate)})
    stack.add("m", **shadowed())

    async def main() -> None:
        await stack.infer("m")
        await stack.infer("m")
        await stack.service.stop_shadows()
        assert stack.observer.shadows == []  # cancelled mirrors report nothing
        gate.set()
        await stack.infer("m")  # after the stop, mirrors run again
        await stack.wait_shadows(1)

    try:
        asyncio.run(main())
    finally:
        gate.set()
    assert stack.outcomes() == {"agree": 1}


def test_set_traffic_checks_availability_and_authorization(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(management=Management(admin_token="s3cret"))
    stack.loader.errors[3] = RuntimeError("cannot load")
    stack.add("m", versions=(1, 2, 3), labels=LABELS)
    token = "Bearer s3cret"
    moved = {"stable": 1, "canary": 3}
    error = error_of(lambda: stack.service.set_traffic("m", moved))
    assert error.kind is ErrorKind.UNAUTHENTICATED
    error = error_of(lambda: stack.service.set_traffic("m", moved, authorization=token))
    assert error.kind is ErrorKind.FAILED_PRECONDITION
    routing = stack.service.set_traffic("m", moved, allow_unavailable=True, authorization=token)
    assert routing.labels == moved
    routing = stack.service.set_traffic(
        "m", None, TrafficConfig(split={"stable": 1}), authorization=token
    )
    assert asyncio.run(stack.infer("m")).version == 1


# -- atomic updates -----------------------------------------------------------------------------

# Every consistent configuration sends requests to version 1; a request that sees the split of
# one and the labels of another lands on version 2, or fails on a label that is gone.
CONSISTENT = [
    ({"stable": 1, "canary": 2}, TrafficConfig(split={"stable": 1})),
    ({"stable": 2, "canary": 1}, TrafficConfig(split={"canary": 1})),
    ({"stable": 1}, TrafficConfig(split={"stable": 1})),
    ({"stable": 2, "canary": 1}, TrafficConfig(split={"canary": 1})),
]


def test_concurrent_requests_never_see_a_half_updated_split(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    labels, traffic = CONSISTENT[0]
    # Four readers on one event loop (batchers, unbatched ones too, belong to one loop) race a
    # writer thread.
    stack.add("m", labels=labels, traffic=traffic, batching={"enabled": False})
    done = threading.Event()
    seen: Counter[tuple[str, int | str]] = Counter()
    swaps = 0
    lock = threading.Lock()

    async def requests() -> None:
        for _ in range(500):
            try:
                result = await stack.infer("m")
                outcome: tuple[str, int | str] = (result.arm, result.version)
            except ServingError as exc:
                outcome = ("error", exc.message)
            with lock:
                seen[outcome] += 1

    def swap() -> None:
        nonlocal swaps
        while not done.is_set():
            stack.service.set_traffic("m", *CONSISTENT[swaps % len(CONSISTENT)])
            swaps += 1

    async def four_readers() -> None:
        await asyncio.gather(*(requests() for _ in range(4)))

    readers = [threading.Thread(target=asyncio.run, args=(four_readers(),))]
    writer = threading.Thread(target=swap)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave threads finely
    try:
        for thread in [writer, *readers]:
            thread.start()
        for thread in readers:
            thread.join(60)
    finally:
        done.set()
        writer.join(60)
        sys.setswitchinterval(interval)
    assert set(seen) <= {("stable", 1), ("canary", 1)}, seen
    assert sum(seen.values()) == 2_000 and swaps > 100, (seen, swaps)
