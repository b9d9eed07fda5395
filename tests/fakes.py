"""A fake runtime for fast core tests: no TensorFlow, deterministic, observable.

``FakeModel`` implements the LoadedModel protocol; ``FakeLoader`` is a ``loader(config, path)``
for ModelManager; ``RecordingObserver`` keeps the core's events; ``FakeMemory`` is a MemoryProbe
whose resident memory is what the fake models currently loaded declare (their size on disk, as
``make_repository(..., size=N)`` writes it). Gates (``threading.Event``) let a test hold a load
or a request in flight; every gate wait has a timeout so a broken test fails instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfmux.config import ModelConfig
from tfmux.core.memory import size_on_disk
from tfmux.types import DEFAULT_SIGNATURE, PREDICT_METHOD, Shape, SignatureSpec, TensorSpec

GATE_TIMEOUT = 10.0  # seconds a gate is waited for before the fake gives up
MARKER_FILE = "saved_model.pb"
WEIGHTS_FILE = "variables/variables.data-00000-of-00001"  # holds a version's declared size

TensorDecl = tuple[str, Shape | None]  # (dtype, shape)


def wait_gate(gate: threading.Event | None, what: str) -> None:
    """Block until ``gate`` is set; raise TimeoutError if a test forgot to open it."""
    if gate is not None and not gate.wait(GATE_TIMEOUT):
        raise TimeoutError(f"{what}: gate not opened within {GATE_TIMEOUT}s")


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = GATE_TIMEOUT) -> None:
    """Poll ``predicate`` until it holds (for state another thread changes without a hook)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def signature(
    name: str = DEFAULT_SIGNATURE,
    inputs: Mapping[str, TensorDecl] | None = None,
    outputs: Mapping[str, TensorDecl] | None = None,
    method_name: str = PREDICT_METHOD,
) -> SignatureSpec:
    """A SignatureSpec from ``{alias: (dtype, shape)}`` maps.

    Defaults: input ``x`` float32 ``[-1, 3]`` and output ``y`` of the same spec.
    """
    if inputs is None:
        inputs = {"x": ("float32", (None, 3))}
    if outputs is None:
        outputs = {"y": ("float32", (None, 3))}
    return SignatureSpec(
        name=name,
        inputs={k: TensorSpec(k, dt, shape, f"{k}:0") for k, (dt, shape) in inputs.items()},
        outputs={k: TensorSpec(k, dt, shape, f"{k}:0") for k, (dt, shape) in outputs.items()},
        method_name=method_name,
    )


class FakeModel:
    """A LoadedModel whose every output is ``first input * factor`` (cast to the output dtype).

    ``fail_when(inputs)`` returning True makes ``run`` raise RuntimeError. A ``run_gate`` holds
    every ``run`` until it is set; ``run_started`` is set as soon as a run has begun. A
    ``close_gate`` holds ``close`` likewise. Thread-safe.
    """

    def __init__(
        self,
        signatures: Iterable[SignatureSpec] | None = None,
        *,
        factor: float = 1.0,
        fail_when: Callable[[Mapping[str, np.ndarray]], bool] | None = None,
        run_gate: threading.Event | None = None,
        close_gate: threading.Event | None = None,
    ) -> None:
        specs = list(signatures) if signatures is not None else [signature()]
        self._signatures = {spec.name: spec for spec in specs}
        self.factor = factor
        self.fail_when = fail_when
        self.run_gate = run_gate
        self.close_gate = close_gate
        self.run_started = threading.Event()
        self.close_started = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, np.ndarray], list[str] | None]] = []
        self.close_count = 0
        self.close_returned = False

    @property
    def signatures(self) -> Mapping[str, SignatureSpec]:
        return self._signatures

    @property
    def closed(self) -> bool:
        return self.close_count > 0

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        with self._lock:
            if self.close_count:
                raise RuntimeError("run after close")
            names = None if output_names is None else list(output_names)
            self.calls.append((signature, dict(inputs), names))
        self.run_started.set()
        wait_gate(self.run_gate, "FakeModel.run")
        if self.fail_when is not None and self.fail_when(inputs):
            raise RuntimeError("fake model failure")
        spec = self._signatures[signature]
        first = inputs[next(iter(spec.inputs))]
        wanted = names if names is not None else list(spec.outputs)
        return {
            name: (first * self.factor).astype(spec.outputs[name].dtype, copy=False)
            for name in wanted
        }

    def close(self) -> None:
        with self._lock:
            self.close_count += 1
        self.close_started.set()
        wait_gate(self.close_gate, "FakeModel.close")
        self.close_returned = True


ModelFactory = Callable[[ModelConfig, Path], FakeModel]


def version_factor_model(config: ModelConfig, path: Path) -> FakeModel:
    """The default model: ``factor`` is the version number, so results show who served them."""
    return FakeModel(factor=float(path.name) if path.name.isdigit() else 1.0)


class FakeLoader:
    """A ``loader(config, path)`` for ModelManager that builds FakeModels. Thread-safe.

    ``error`` fails every load; ``errors`` fails the loads of given version numbers. A ``gate``
    holds every load until set; ``delay`` sleeps before building the model. ``loads`` counts
    loads per path and ``models`` keeps every model built.
    """

    def __init__(
        self,
        factory: ModelFactory = version_factor_model,
        *,
        error: Exception | None = None,
        errors: Mapping[int, Exception] | None = None,
        gate: threading.Event | None = None,
        delay: float = 0.0,
    ) -> None:
        self.factory = factory
        self.error = error
        self.errors = dict(errors or {})
        self.gate = gate
        self.delay = delay
        self.started = threading.Event()
        self._lock = threading.Lock()
        self.loads: Counter[Path] = Counter()
        self.models: dict[Path, list[FakeModel]] = {}

    def __call__(self, config: ModelConfig, path: Path) -> FakeModel:
        with self._lock:
            self.loads[path] += 1
        self.started.set()
        wait_gate(self.gate, f"FakeLoader({path})")
        if self.delay:
            time.sleep(self.delay)
        error = self.errors.get(int(path.name)) if path.name.isdigit() else None
        if error is None:
            error = self.error
        if error is not None:
            raise error
        model = self.factory(config, path)
        with self._lock:
            self.models.setdefault(path, []).append(model)
        return model

    @property
    def total_loads(self) -> int:
        with self._lock:
            return sum(self.loads.values())

    def model(self, path: Path) -> FakeModel:
        """The one model built for ``path`` (fails if there was not exactly one)."""
        with self._lock:
            built = self.models.get(path, [])
            assert len(built) == 1, f"{len(built)} models built for {path}"
            return built[0]

    def all_models(self) -> list[FakeModel]:
        with self._lock:
            return [m for models in self.models.values() for m in models]

    def live(self) -> list[tuple[Path, FakeModel]]:
        """(path, model) for every model built and not yet closed."""
        with self._lock:
            return [(p, m) for p, models in self.models.items() for m in models if not m.closed]


class FakeMemory:
    """A MemoryProbe over a FakeLoader: resident memory is ``base`` plus the cost of every model
    the loader built and has not closed. A model costs ``scale`` times its version's size on
    disk, fixed when the probe first sees it (change ``scale`` to make later loads cost more or
    less than their size). ``releases`` counts ``release`` calls. Thread-safe.
    """

    def __init__(self, loader: FakeLoader, *, base: int = 0, scale: float = 1.0) -> None:
        self.loader = loader
        self.base = base
        self.scale = scale
        self.releases = 0
        self._lock = threading.Lock()
        self._costs: dict[FakeModel, int] = {}

    def rss(self) -> int:
        total = self.base
        for path, model in self.loader.live():
            with self._lock:
                if model not in self._costs:
                    self._costs[model] = int(self.scale * size_on_disk(path))
                total += self._costs[model]
        return total

    def release(self) -> None:
        with self._lock:
            self.releases += 1


@dataclass(frozen=True)
class LoadEvent:
    name: str
    version: int
    error: str | None


@dataclass(frozen=True)
class RequestEvent:
    name: str
    version: str
    method: str
    error: str | None


class RecordingObserver:
    """An Observer that keeps every event (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loads: list[LoadEvent] = []
        self.requests: list[RequestEvent] = []
        self.batches: list[tuple[str, str, int, int]] = []  # (name, version, rows, requests)
        self.dropped: list[tuple[str, str, str]] = []  # (name, version, reason)
        self.routes: list[tuple[str, str, str]] = []  # (name, arm, version)
        # (name, version, shadow version, outcome, mean abs diff per output)
        self.shadows: list[tuple[str, str, str, str, dict[str, float]]] = []

    def model_loaded(self, name: str, version: int, seconds: float, error: str | None) -> None:
        assert seconds >= 0
        with self._lock:
            self.loads.append(LoadEvent(name, version, error))

    def request_done(
        self, name: str, version: str, method: str, seconds: float, error: str | None
    ) -> None:
        assert seconds >= 0
        with self._lock:
            self.requests.append(RequestEvent(name, version, method, error))

    def batch_ran(
        self, name: str, version: str, rows: int, requests: int, queue_seconds: list[float]
    ) -> None:
        assert len(queue_seconds) == requests and all(s >= 0 for s in queue_seconds)
        with self._lock:
            self.batches.append((name, version, rows, requests))

    def request_dropped(self, name: str, version: str, reason: str) -> None:
        with self._lock:
            self.dropped.append((name, version, reason))

    def routed(self, name: str, arm: str, version: str) -> None:
        with self._lock:
            self.routes.append((name, arm, version))

    def shadow_done(
        self, name: str, version: str, shadow_version: str, outcome: str, diffs: dict[str, float]
    ) -> None:
        with self._lock:
            self.shadows.append((name, version, shadow_version, outcome, dict(diffs)))


def make_repository(root: Path, models: Mapping[str, Iterable[int]], size: int = 0) -> Path:
    """``<root>/<name>/<version>/`` with an empty marker file for every model and version.

    With ``size`` > 0 every version also gets a (sparse) weights file of ``size`` bytes: its
    size on disk, from which the memory budget estimates it.
    """
    for name, versions in models.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for version in versions:
            folder = root / name / str(version)
            folder.mkdir(exist_ok=True)
            (folder / MARKER_FILE).touch()
            if size > 0:
                weights = folder / WEIGHTS_FILE
                weights.parent.mkdir(exist_ok=True)
                with open(weights, "wb") as file:
                    file.truncate(size)
    return root


def model_config(name: str, base_path: Path, **fields: Any) -> ModelConfig:
    """A ModelConfig; ``fields`` are any other ModelConfig fields (load, version_policy, ...)."""
    return ModelConfig(name=name, base_path=base_path, **fields)
