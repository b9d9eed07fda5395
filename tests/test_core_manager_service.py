"""ModelManager + ServingService over the fake runtime: loading, resolution, validation, errors.

pytest-asyncio is not used: each test drives its coroutines with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tfmux.config import ModelConfig
from tfmux.core.lifecycle import State
from tfmux.core.manager import ModelManager
from tfmux.core.service import InputDecoder, Inputs, ServingService
from tfmux.errors import ErrorKind, ServingError
from tfmux.types import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    InferenceResult,
    ModelRef,
    SignatureSpec,
    VersionStatus,
)

from .fakes import (
    GATE_TIMEOUT,
    FakeLoader,
    FakeModel,
    LoadEvent,
    RecordingObserver,
    RequestEvent,
    make_repository,
    model_config,
    signature,
    wait_until,
)

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


@dataclass
class Stack:
    """A manager and a service over one fake loader and a repository under ``root``."""

    root: Path
    loader: FakeLoader
    manager: ModelManager
    service: ServingService
    observer: RecordingObserver

    def add(self, name: str, versions: Sequence[int] = (1,), **fields: Any) -> ModelConfig:
        """Put ``versions`` of ``name`` on disk and serve it (eager loads are waited for)."""
        make_repository(self.root, {name: versions})
        config = model_config(name, self.root / name, **fields)
        self.manager.add_model(config)
        self.manager.wait_for_loads(GATE_TIMEOUT)
        return config

    def infer(
        self, name: str, inputs: Inputs | InputDecoder | None = None, **kwargs: Any
    ) -> InferenceResult:
        return asyncio.run(self.infer_async(name, inputs, **kwargs))

    async def infer_async(
        self,
        name: str,
        inputs: Inputs | InputDecoder | None = None,
        *,
        version: int | None = None,
        label: str | None = None,
        **kwargs: Any,
    ) -> InferenceResult:
        ref = ModelRef(name, version, label)
        return await self.service.infer(ref, {"x": X} if inputs is None else inputs, **kwargs)

    def infer_error(self, name: str, inputs: Inputs | None = None, **kwargs: Any) -> ServingError:
        with pytest.raises(ServingError) as info:
            self.infer(name, inputs, **kwargs)
        return info.value

    def path(self, name: str, version: int) -> Path:
        return (self.root / name / str(version)).resolve()


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(loader: FakeLoader | None = None, **manager_kwargs: Any) -> Stack:
        loader = loader or FakeLoader()
        observer = RecordingObserver()
        manager = ModelManager(loader, observer=observer, **manager_kwargs)
        service = ServingService(manager, inference_threads=4, observer=observer)
        stack = Stack(tmp_path / f"repo{len(stacks)}", loader, manager, service, observer)
        stack.root.mkdir()
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.service.close()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


def states(stack: Stack, name: str) -> list[tuple[int, str]]:
    return [(s.version, s.state) for s in stack.service.status(name)]


# -- eager and lazy loading --------------------------------------------------------------


def test_eager_model_loads_at_add(stack: Stack) -> None:
    stack.add("m", [1, 2], version_policy="all")
    assert states(stack, "m") == [(2, "AVAILABLE"), (1, "AVAILABLE")]
    assert stack.loader.loads == {stack.path("m", 1): 1, stack.path("m", 2): 1}
    assert stack.service.ready()


def test_service_is_not_ready_while_an_eager_load_runs(make_stack: Callable[..., Stack]) -> None:
    gate = threading.Event()
    stack = make_stack(FakeLoader(gate=gate))
    make_repository(stack.root, {"m": [1]})
    stack.manager.add_model(model_config("m", stack.root / "m"))
    assert stack.loader.started.wait(GATE_TIMEOUT)
    assert not stack.service.ready()
    gate.set()
    stack.manager.wait_for_loads(GATE_TIMEOUT)
    assert stack.service.ready()


def test_lazy_model_is_not_loaded_until_first_request(stack: Stack) -> None:
    stack.add("m", [1], load="lazy")
    assert states(stack, "m") == [(1, "START")]
    assert stack.loader.total_loads == 0
    assert stack.service.ready()  # lazy versions do not hold readiness back
    result = stack.infer("m")
    np.testing.assert_array_equal(result.outputs["y"], X * 1)
    assert states(stack, "m") == [(1, "AVAILABLE")]
    assert stack.loader.total_loads == 1


def test_concurrent_first_requests_to_a_lazy_model_load_it_once(
    make_stack: Callable[..., Stack],
) -> None:
    gate = threading.Event()
    stack = make_stack(FakeLoader(gate=gate))
    stack.add("m", [3], load="lazy")

    async def main() -> list[InferenceResult]:
        requests = asyncio.gather(*(stack.infer_async("m") for _ in range(50)))
        await asyncio.to_thread(stack.loader.started.wait, GATE_TIMEOUT)
        gate.set()
        return await requests

    results = asyncio.run(main())
    assert len(results) == 50
    for result in results:
        assert (result.model_name, result.version) == ("m", 3)
        np.testing.assert_array_equal(result.outputs["y"], X * 3)
    assert stack.loader.total_loads == 1


def test_failed_lazy_load_makes_every_request_unavailable(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(FakeLoader(error=RuntimeError("disk on fire")))
    stack.add("m", [1], load="lazy")

    async def main() -> list[InferenceResult | BaseException]:
        return await asyncio.gather(
            *(stack.infer_async("m") for _ in range(5)), return_exceptions=True
        )

    outcomes = [*asyncio.run(main()), stack.infer_error("m")]
    for outcome in outcomes:
        assert isinstance(outcome, ServingError)
        assert outcome.kind is ErrorKind.UNAVAILABLE
        assert outcome.message == "model m version 1 failed to load: RuntimeError: disk on fire"
    assert stack.service.status("m") == [
        VersionStatus(1, "END", "UNKNOWN", "RuntimeError: disk on fire")
    ]
    assert stack.loader.total_loads == 1


def test_metadata_loads_a_lazy_model(stack: Stack) -> None:
    stack.add("m", [4], load="lazy")
    metadata = asyncio.run(stack.service.metadata(ModelRef("m")))
    assert (metadata.name, metadata.version) == ("m", 4)
    assert list(metadata.signatures) == [DEFAULT_SIGNATURE]
    assert states(stack, "m") == [(4, "AVAILABLE")]


# -- resolving what a request names ------------------------------------------------------


def test_unknown_model_is_not_found(stack: Stack) -> None:
    error = stack.infer_error("nope")
    assert error.kind is ErrorKind.NOT_FOUND
    assert error.message == "Servable not found for request: Latest(nope)"


def test_unknown_version_is_not_found(stack: Stack) -> None:
    stack.add("m", [1])
    for name in ("m", "nope"):
        error = stack.infer_error(name, version=7)
        assert error.kind is ErrorKind.NOT_FOUND
        assert error.message == f"Servable not found for request: Specific({name}, 7)"


def test_labels_resolve_to_their_versions(stack: Stack) -> None:
    stack.add("m", [1, 2, 3], version_policy="all", labels={"stable": 1, "canary": 2})
    assert stack.infer("m", label="stable").version == 1
    assert stack.infer("m", label="canary").version == 2
    assert stack.infer("m").version == 3


def test_unknown_label_is_not_found(stack: Stack) -> None:
    stack.add("m", [1], labels={"stable": 1, "gone": 9})
    error = stack.infer_error("m", label="beta")
    assert error.kind is ErrorKind.NOT_FOUND
    assert "beta" in error.message
    error = stack.infer_error("m", label="gone")  # a label on a version not served
    assert error.kind is ErrorKind.NOT_FOUND
    assert error.message == "Servable not found for request: Label(m, gone)"


def test_latest_is_the_newest_available_version(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(errors={10: RuntimeError("bad weights")}))
    stack.add("m", [2, 9, 10], version_policy="all")
    assert states(stack, "m") == [(10, "END"), (9, "AVAILABLE"), (2, "AVAILABLE")]
    result = stack.infer("m")
    assert result.version == 9  # numeric order, and 10 failed to load
    np.testing.assert_array_equal(result.outputs["y"], X * 9)


def test_specific_version_request_serves_that_version(stack: Stack) -> None:
    stack.add("m", [1, 2], version_policy="all")
    result = stack.infer("m", version=1)
    assert result.version == 1
    np.testing.assert_array_equal(result.outputs["y"], X * 1)


# -- version policies against the disk ---------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        (None, [10]),
        ({"latest": 2}, [10, 5]),
        ({"latest": 9}, [10, 5, 2, 1]),
        ("all", [10, 5, 2, 1]),
        ({"specific": [2, 5]}, [5, 2]),
        ({"specific": [1, 7]}, [1]),  # 7 is not on disk
    ],
)
def test_version_policy_selects_versions_on_disk(
    stack: Stack, policy: object, served: list[int]
) -> None:
    fields = {} if policy is None else {"version_policy": policy}
    stack.add("m", [1, 2, 5, 10], **fields)
    assert [s.version for s in stack.service.status("m")] == served
    assert sorted(p.name for p in stack.loader.loads) == sorted(str(v) for v in served)


def test_non_version_folders_are_ignored(stack: Stack) -> None:
    make_repository(stack.root, {"m": [3]})
    (stack.root / "m" / "tmp").mkdir()
    (stack.root / "m" / "4.bak").mkdir()
    (stack.root / "m" / "\u00b2").mkdir()  # "²" is a digit to str.isdigit, not to int()
    (stack.root / "m" / "5").touch()  # a file, not a folder
    stack.add("m", [3], version_policy="all")
    assert states(stack, "m") == [(3, "AVAILABLE")]


def test_specific_policy_with_only_missing_versions_serves_nothing(stack: Stack) -> None:
    stack.add("m", [1, 2], version_policy={"specific": [7, 8]})
    with pytest.raises(ServingError) as info:
        stack.service.status("m")
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert info.value.message == "none of the versions [7, 8] of model m exist on disk"
    error = stack.infer_error("m")
    assert error.kind is ErrorKind.NOT_FOUND
    assert stack.loader.total_loads == 0


def test_missing_or_empty_base_path_is_reported(stack: Stack) -> None:
    stack.manager.add_model(model_config("ghost", stack.root / "ghost"))
    with pytest.raises(ServingError, match=r"base path .*ghost of model ghost does not exist"):
        stack.service.status("ghost")
    (stack.root / "empty").mkdir()
    stack.manager.add_model(model_config("empty", stack.root / "empty"))
    with pytest.raises(ServingError, match=r"no versions of model empty found under"):
        stack.service.status("empty")


def test_adding_a_model_twice_is_refused(stack: Stack) -> None:
    config = stack.add("m", [1])
    with pytest.raises(ValueError, match="already served"):
        stack.manager.add_model(config)


# -- statuses ----------------------------------------------------------------------------


def test_statuses_are_newest_first(stack: Stack) -> None:
    stack.add("m", [3, 1, 20, 2], version_policy="all")
    assert [s.version for s in stack.service.status("m")] == [20, 3, 2, 1]
    (status,) = stack.service.status("m", 3)
    assert (status.version, status.state, status.error_code) == (3, "AVAILABLE", "OK")


def test_status_of_unknown_model_or_version(stack: Stack) -> None:
    with pytest.raises(ServingError) as info:
        stack.service.status("nope")
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert info.value.message == "Could not find any versions of model nope"
    stack.add("m", [1])
    with pytest.raises(ServingError) as info:
        stack.service.status("m", 2)
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert info.value.message == "Could not find version 2 of model m"


# -- running -----------------------------------------------------------------------------


def test_model_failure_is_internal_and_the_next_request_works(
    make_stack: Callable[..., Stack],
) -> None:
    def fails_on_negative(inputs: Mapping[str, np.ndarray]) -> bool:
        return bool((inputs["x"] < 0).any())

    stack = make_stack(FakeLoader(lambda c, p: FakeModel(factor=2, fail_when=fails_on_negative)))
    stack.add("m")
    error = stack.infer_error("m", {"x": -X})
    assert error.kind is ErrorKind.INTERNAL
    assert error.message == "RuntimeError: fake model failure"
    np.testing.assert_array_equal(stack.infer("m").outputs["y"], X * 2)


def test_decoder_receives_the_signature_spec(stack: Stack) -> None:
    stack.add("m")
    seen: list[SignatureSpec] = []

    def decode(spec: SignatureSpec) -> Inputs:
        seen.append(spec)
        return {"x": X}

    result = stack.infer("m", decode)
    model = stack.loader.model(stack.path("m", 1))
    assert seen == [model.signatures[DEFAULT_SIGNATURE]]
    assert result.signature is seen[0]


def two_output_model(config: ModelConfig, path: Path) -> FakeModel:
    spec = ("float32", (None, 3))
    return FakeModel([signature(outputs={"y": spec, "y2": spec})])


def test_output_names_select_outputs(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(two_output_model))
    stack.add("m")
    assert set(stack.infer("m").outputs) == {"y", "y2"}
    assert set(stack.infer("m", output_names=["y2"]).outputs) == {"y2"}
    model = stack.loader.model(stack.path("m", 1))
    assert model.calls[-1][2] == ["y2"]


def test_unknown_output_name_is_invalid_argument(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(two_output_model))
    stack.add("m")
    error = stack.infer_error("m", output_names=["y", "z"])
    assert error.kind is ErrorKind.INVALID_ARGUMENT
    assert "'z'" in error.message and "y, y2" in error.message


def classify_model(config: ModelConfig, path: Path) -> FakeModel:
    return FakeModel(
        [
            signature(),
            signature("classify_x", method_name=CLASSIFY_METHOD),
        ]
    )


def test_method_name_must_match_the_signature(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(classify_model))
    stack.add("m")
    error = stack.infer_error("m", method_name=CLASSIFY_METHOD)
    assert error.kind is ErrorKind.INVALID_ARGUMENT
    assert "tensorflow/serving/predict" in error.message and CLASSIFY_METHOD in error.message
    ok = stack.infer("m", signature_name="classify_x", method_name=CLASSIFY_METHOD)
    assert ok.signature.name == "classify_x"


def test_unknown_signature_names_the_available_ones(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(classify_model))
    stack.add("m")
    error = stack.infer_error("m", signature_name="nope")
    assert error.kind is ErrorKind.INVALID_ARGUMENT
    assert '"nope" not found' in error.message
    assert "classify_x, serving_default" in error.message


# -- validation --------------------------------------------------------------------------


def typed_model(config: ModelConfig, path: Path) -> FakeModel:
    """Inputs of several dtypes and fixed dimensions; output ``y = a``."""
    sig = signature(
        inputs={
            "a": ("int32", (None, 2)),
            "b": ("int64", (None,)),
            "c": ("uint32", (None,)),
            "d": ("float64", (None,)),
        },
        outputs={"y": ("int32", (None, 2))},
    )
    return FakeModel([sig])


def good_inputs(**changes: np.ndarray) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {
        "a": np.array([[1, 2]], dtype=np.int32),
        "b": np.array([1], dtype=np.int64),
        "c": np.array([1], dtype=np.uint32),
        "d": np.array([0.5], dtype=np.float64),
    }
    return inputs | changes


@pytest.fixture
def typed(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(FakeLoader(typed_model))
    stack.add("m")
    return stack


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (good_inputs(e=np.array([1])), "input 'e' is not an input of signature"),
        (
            {k: v for k, v in good_inputs().items() if k != "b"},
            "missing input(s) 'b' for signature 'serving_default' (expected inputs: a, b, c, d)",
        ),
        (good_inputs(a=np.array([[0.1, 2.0]])), "input 'a' has dtype float64"),
        (good_inputs(a=np.array([[1, 2]], dtype=np.int64) << 40), "input 'a' has dtype int64"),
        (good_inputs(c=np.array([-1], dtype=np.int32)), "input 'c' has dtype int32"),
        (good_inputs(b=np.array([b"1"], dtype=object)), "input 'b' has dtype string"),
        (good_inputs(d=np.array([2**53 + 1])), "input 'd' has dtype int64"),
    ],
    ids=[
        "unknown-input",
        "missing-input",
        "lossy-float-to-int",
        "int-overflow",
        "negative-to-unsigned",
        "string-to-int",
        "int64-beyond-float64-precision",
    ],
)
def test_invalid_inputs_are_invalid_argument(
    typed: Stack, inputs: dict[str, np.ndarray], message: str
) -> None:
    error = typed.infer_error("m", inputs)
    assert error.kind is ErrorKind.INVALID_ARGUMENT
    assert message in error.message
    assert typed.loader.model(typed.path("m", 1)).calls == []  # never reached the model


@pytest.mark.parametrize(
    "changes",
    [
        {"b": np.array([7], dtype=np.int32)},  # int32 -> int64
        {"a": np.array([[1.0, -2.0]])},  # float64 holding integers -> int32
        {"a": np.array([[1, 2]], dtype=np.uint8)},  # uint8 -> int32
        {"c": np.array([4294967295], dtype=np.int64)},  # fits uint32
        {"d": np.array([3], dtype=np.int64)},  # small int64 -> float64
        {"d": np.array([np.nan, np.inf], dtype=np.float32)},  # float32 -> float64
    ],
    ids=["int32-int64", "whole-floats-int32", "uint8-int32", "int64-uint32", "int-float", "nan"],
)
def test_lossless_conversions_are_accepted(typed: Stack, changes: dict[str, np.ndarray]) -> None:
    result = typed.infer("m", good_inputs(**changes))
    signature_, inputs, _ = typed.loader.model(typed.path("m", 1)).calls[-1]
    assert signature_ == DEFAULT_SIGNATURE
    for name, spec in result.signature.inputs.items():
        assert inputs[name].dtype == np.dtype(spec.dtype)
    for name, value in changes.items():
        np.testing.assert_array_equal(inputs[name], value)
    np.testing.assert_array_equal(result.outputs["y"], inputs["a"])


@pytest.mark.parametrize(
    "a", [np.array([1, 2], np.int32), np.array([[1, 2, 3]], np.int32)], ids=["rank", "fixed-dim"]
)
def test_shapes_are_left_to_the_graph(typed: Stack, a: np.ndarray) -> None:
    """As TF Serving: a signature's shape ([-1, 2] here) is not checked; the model decides."""
    typed.infer("m", good_inputs(a=a))
    _, inputs, _ = typed.loader.model(typed.path("m", 1)).calls[-1]
    np.testing.assert_array_equal(inputs["a"], a)


# -- observer ----------------------------------------------------------------------------


def test_observer_hears_loads_and_requests(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(FakeLoader(errors={2: RuntimeError("bad")}))
    stack.add("good", [1])
    stack.add("bad", [2], load="lazy")
    stack.infer("good", method="classify")
    stack.infer_error("good", {"z": X})  # not an input of the signature
    stack.infer_error("bad")
    stack.infer_error("nope")
    assert stack.observer.loads == [
        LoadEvent("good", 1, None),
        LoadEvent("bad", 2, "UNKNOWN"),
    ]
    assert stack.observer.requests == [
        RequestEvent("good", "1", "classify", None),
        RequestEvent("good", "1", "predict", "INVALID_ARGUMENT"),
        RequestEvent("bad", "", "predict", "UNAVAILABLE"),
        RequestEvent("nope", "", "predict", "NOT_FOUND"),
    ]


# -- removing models and closing ---------------------------------------------------------


def test_remove_model_waits_for_in_flight_requests(make_stack: Callable[..., Stack]) -> None:
    run_gate = threading.Event()
    stack = make_stack(FakeLoader(lambda c, p: FakeModel(factor=5, run_gate=run_gate)))
    stack.add("m")
    model = stack.loader.model(stack.path("m", 1))
    version = stack.manager.resolve(ModelRef("m"))

    async def main() -> InferenceResult:
        request = asyncio.ensure_future(stack.infer_async("m"))
        assert await asyncio.to_thread(model.run_started.wait, GATE_TIMEOUT)
        remover = threading.Thread(target=stack.manager.remove_model, args=("m",), daemon=True)
        remover.start()
        await asyncio.to_thread(wait_until, lambda: version.state is State.UNLOADING, "unload")

        # The request still holds its lease: the model is neither closed nor served anew.
        assert remover.is_alive()
        assert not model.closed
        with pytest.raises(ServingError) as info:
            await stack.infer_async("m")
        assert info.value.kind is ErrorKind.NOT_FOUND

        run_gate.set()
        result = await request
        await asyncio.to_thread(remover.join, GATE_TIMEOUT)
        assert not remover.is_alive()
        return result

    result = asyncio.run(main())
    np.testing.assert_array_equal(result.outputs["y"], X * 5)
    assert model.close_count == 1
    assert version.state is State.END
    with pytest.raises(ServingError, match="Could not find any versions of model m"):
        stack.manager.remove_model("m")


def test_close_unloads_every_model(stack: Stack) -> None:
    stack.add("a", [1, 2], version_policy="all")
    stack.add("b", [1])
    stack.add("lazy", [1], load="lazy")
    versions = [mv for served in stack.manager.models() for mv in served.versions.values()]
    stack.service.close()
    assert stack.manager.models() == []
    assert {mv.state for mv in versions} == {State.END}
    models = stack.loader.all_models()
    assert len(models) == 3
    assert all(model.close_count == 1 for model in models)
    assert stack.loader.total_loads == 3  # closing does not load the lazy model
