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
        with self._lock:
            if config.name in self._models:
                raise ValueError(f"model {config.name!r} is already served")
            self._models[config.name] = served
        self._select_versions(served)
        if config.load == "eager":
            self._start_loads(served)
        return served

    def load_model(self, name: str, config: ModelConfig | None = None) -> None:
        """Load a served model now, rescanning its versions on disk (and taking ``config``, if
        given). Versions its policy no longer selects are unloaded after the new ones have
        loaded, so requests never find nothing to serve. Blocks until done."""
        served = self.get(name)
        if config is not None:
            with self._lock:
                served.config = config
        retired = self._select_versions(served)
        wait(self._start_loads(served, skip=retired))
        self._retire(served, retired)

    def unload_model(self, name: str) -> None:
        """Unload every version of a model but keep it configured (its versions show END).
        Blocks until in-flight requests have finished."""
        for mv in list(self.get(name).versions.values()):
            mv.unload()

    def reconfigure(self, configs: list[ModelConfig]) -> None:
        """Serve exactly ``configs``: add new models, reload changed ones, remove the rest.
        Blocks until loads and unloads have ended."""
        wanted = {config.name: config for config in configs}
        with self._lock:
            current = {name: served.config for name, served in self._models.items()}
        for name in current.keys() - wanted.keys():
            self.remove_model(name)
        for name, config in wanted.items():
            if name not in current:
                self.add_model(config)
            elif config != current[name]:
                self.load_model(name, config)
        self.wait_for_loads()

    def _select_versions(self, served: ServedModel) -> list[ModelVersion]:
        """Add a START version for each version the policy selects that is not already served
        from the same path; return the versions no longer selected (still listed)."""
        config = served.config
        on_disk = list_versions(config.base_path)
        chosen = versions_to_serve(on_disk, config.version_policy)
        with self._lock:
            served.problem = None if chosen else not_found(self._why_no_versions(config, on_disk))
            retired = [mv for v, mv in served.versions.items() if v not in chosen]
            for version in chosen:
                current = served.versions.get(version)
                if (
                    current is None
                    or current.state is State.END
                    or current.path != on_disk[version]
                ):
                    if current is not None and current.state is not State.END:
                        retired.append(current)
                    served.versions[version] = ModelVersion(
                        config.name, version, on_disk[version], self._load_one(config), self._loaded
                    )
        return retired

    def _start_loads(
        self, served: ServedModel, skip: list[ModelVersion] | None = None
    ) -> list[Future[None]]:
        with self._lock:
            versions = [mv for mv in served.versions.values() if mv not in (skip or [])]
        return [mv.start_load(self._load_pool) for mv in versions]

    def _retire(self, served: ServedModel, retired: list[ModelVersion]) -> None:
        with self._lock:
            for mv in retired:
                if served.versions.get(mv.version) is mv:
                    del served.versions[mv.version]
        for mv in retired:
            mv.unload()

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
