"""Owns every served model version: creates them from config, loads them (eagerly or on first
use, single-flight), resolves what a request names, and unloads them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tfmux.config import ModelConfig
from tfmux.core.lifecycle import Lease, ModelVersion, State
from tfmux.core.observer import NullObserver, Observer
from tfmux.core.policy import latest_version, versions_to_serve
from tfmux.core.repository import list_versions
from tfmux.core.runtime import LoadedModel
from tfmux.errors import ServingError, not_found
from tfmux.types import ModelRef, VersionStatus

ModelLoader = Callable[[ModelConfig, Path], LoadedModel]


@dataclass
class ServedModel:
    """A configured model and the versions its policy selected (fixed until reconfigured)."""

    config: ModelConfig
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    problem: ServingError | None = None  # why no version could be served, if so


class ModelManager:
    """Thread-safe registry of served models. ``close`` unloads everything and stops loads."""

    def __init__(
        self,
        loader: ModelLoader,
        max_concurrent_loads: int = 2,
        observer: Observer | None = None,
    ) -> None:
        self._loader = loader
        self._observer = observer or NullObserver()
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._load_pool = ThreadPoolExecutor(max_concurrent_loads, thread_name_prefix="tfmux-load")

    # -- configuration -------------------------------------------------------------------

    def add_model(self, config: ModelConfig) -> ServedModel:
        """Serve a model: pick its versions on disk; start eager loads (does not wait)."""
        served = ServedModel(config)
        on_disk = list_versions(config.base_path)
        chosen = versions_to_serve(on_disk, config.version_policy)
        for version in chosen:
            served.versions[version] = ModelVersion(
                config.name, version, on_disk[version], self._load_one(config), self._loaded
            )
        if not chosen:
            served.problem = not_found(self._why_no_versions(config, on_disk))
        with self._lock:
            if config.name in self._models:
                raise ValueError(f"model {config.name!r} is already served")
            self._models[config.name] = served
        if config.load == "eager":
            for mv in served.versions.values():
                mv.start_load(self._load_pool)
        return served

    @staticmethod
    def _why_no_versions(config: ModelConfig, on_disk: dict[int, Path]) -> str:
        if not config.base_path.is_dir():
            return f"base path {config.base_path} of model {config.name} does not exist"
        if not on_disk:
            return (
                f"no versions of model {config.name} found under {config.base_path} "
                "(expected integer-named version directories)"
            )
        wanted = ", ".join(str(v) for v in config.version_policy.versions)
        return f"none of the versions [{wanted}] of model {config.name} exist on disk"

    def _load_one(self, config: ModelConfig) -> Callable[[Path], LoadedModel]:
        return lambda path: self._loader(config, path)

    def _loaded(self, mv: ModelVersion, seconds: float, error: ServingError | None) -> None:
        self._observer.model_loaded(
            mv.name, mv.version, seconds, None if error is None else error.kind.value
        )

    def remove_model(self, name: str) -> None:
        """Stop serving a model: unload all its versions (blocks until leases are released)."""
        with self._lock:
            served = self._models.pop(name, None)
        if served is None:
            raise not_found(f"Could not find any versions of model {name}")
        for mv in served.versions.values():
            mv.unload()

    def wait_for_loads(self, timeout: float | None = None) -> None:
        """Block until every load already started has ended (used at startup)."""
        futures: list[Future[None]] = []
        for served in self.models():
            for mv in served.versions.values():
                if mv.state is State.LOADING:
                    futures.append(mv.start_load(self._load_pool))
        wait(futures, timeout)

    def close(self) -> None:
        """Unload every model and stop the load threads. Blocks until done."""
        with self._lock:
            names = list(self._models)
        for name in names:
            self.remove_model(name)
        self._load_pool.shutdown(wait=True, cancel_futures=True)

    # -- lookups ---------------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def get(self, name: str) -> ServedModel:
        with self._lock:
            served = self._models.get(name)
        if served is None:
            raise not_found(f"Could not find any versions of model {name}")
        return served

    def statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Status of every served version (or one), newest first."""
        served = self.get(name)
        if version is not None:
            mv = served.versions.get(version)
            if mv is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [mv.status()]
        if not served.versions and served.problem is not None:
            raise served.problem
        return [served.versions[v].status() for v in sorted(served.versions, reverse=True)]

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version a request names; NOT_FOUND in TF Serving's wording when there is none."""
        with self._lock:
            served = self._models.get(ref.name)
        missing = not_found(f"Servable not found for request: {ref.describe()}")
        if served is None:
            raise missing
        if ref.label is not None:
            version = served.config.labels.get(ref.label)
            if version is None:
                raise not_found(f"Unknown label '{ref.label}' of model {ref.name}")
        elif ref.version is not None:
            version = ref.version
        else:
            version = latest_version({v: mv.state.value for v, mv in served.versions.items()})
        mv = served.versions.get(version) if version is not None else None
        if mv is None:
            raise missing
        return mv

    async def lease(self, ref: ModelRef) -> Lease:
        """A lease on the version a request names, loading it first if it is lazy."""
        mv = self.resolve(ref)
        if mv.state in (State.START, State.LOADING):
            await asyncio.wrap_future(mv.start_load(self._load_pool))
        return mv.acquire()
