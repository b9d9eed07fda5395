"""Owns every served model version: creates them from config, loads them (eagerly or on first
use, single-flight, under the memory budget), resolves what a request names, reloads evicted
or failed versions on demand, and unloads them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from tfmux.config import ModelConfig
from tfmux.core.budget import CHARGED, Held, MemoryBudget
from tfmux.core.eviction import EvictionPolicy
from tfmux.core.lifecycle import Lease, ModelVersion, State
from tfmux.core.memory import MemoryProbe, ProcessMemory
from tfmux.core.observer import NullObserver, Observer
from tfmux.core.policy import latest_version, versions_to_serve
from tfmux.core.repository import list_versions
from tfmux.core.runtime import LoadedModel
from tfmux.core.served import ServedModel
from tfmux.core.traffic import TrafficTable
from tfmux.errors import ServingError, not_found, unavailable
from tfmux.types import ModelRef, VersionStatus

ModelLoader = Callable[[ModelConfig, Path], LoadedModel]

__all__ = ["ModelLoader", "ModelManager", "ServedModel"]


class ModelManager:
    """Thread-safe registry of served models. ``close`` unloads everything and stops loads.

    Loads belong to the manager, not to the request that started them: a waiter that gives up
    (deadline, cancellation) leaves the load and the other waiters alone.
    """

    def __init__(
        self,
        loader: ModelLoader,
        max_concurrent_loads: int = 2,
        observer: Observer | None = None,
        memory_budget: int | None = None,
        probe: MemoryProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        eviction_policy: EvictionPolicy = "lru",
    ) -> None:
        self._loader = loader
        self._observer = observer or NullObserver()
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._closing = False
        self._load_pool = ThreadPoolExecutor(max_concurrent_loads, thread_name_prefix="tfmux-load")
        self.budget = MemoryBudget(
            memory_budget, probe or ProcessMemory(), self._held, policy=eviction_policy
        )
        self.traffic = TrafficTable()

    # -- configuration -------------------------------------------------------------------

    def add_model(self, config: ModelConfig) -> ServedModel:
        """Serve a model: pick its versions on disk; start eager loads (does not wait)."""
        served = ServedModel(config)
        with self._lock:
            self._check_open()
            if config.name in self._models:
                raise ValueError(f"model {config.name!r} is already served")
            self._models[config.name] = served
        self.traffic.configure_model(config)
        self._select_versions(served, retry_all=True)
        if config.load == "eager":
            self._start_loads(served)
        return served

    def load_model(self, name: str, config: ModelConfig | None = None) -> None:
        """Load a served model now, rescanning its versions on disk (and taking ``config``, if
        given); failed versions are retried at once. Versions its policy no longer selects
        are unloaded once a new one is AVAILABLE, so requests never find nothing to serve.
        Blocks until done."""
        self._check_open()
        served = self.get(name)
        with self._lock:
            served.unloaded = False
            if config is not None:
                served.config = config
        if config is not None:
            self.traffic.configure_model(config)
        retired = self._select_versions(served, retry_all=True)
        wait(self._start_loads(served, skip=retired))
        self._retire_if_replaced(served, retired)

    def refresh(self, name: str) -> None:
        """Pick up version changes on disk (the repository poller): new versions are loaded
        (eagerly, or when the model is in use), then the ones they replace are drained and
        unloaded; failed versions are retried after their backoff. Blocks until done."""
        served = self.get(name)
        if served.unloaded or self._closing:
            return
        retired = self._select_versions(served, retry_all=False)
        in_use = any(mv.state is State.AVAILABLE or mv.evicted for mv in served.versions.values())
        if served.config.load == "eager" or in_use:
            wait(self._start_loads(served, skip=retired))
        self._retire_if_replaced(served, retired)

    def unload_model(self, name: str) -> None:
        """Unload every version of a model but keep it configured (its versions show END);
        it stays unloaded until a load request. Blocks until in-flight requests finish."""
        served = self.get(name)
        with self._lock:
            served.unloaded = True
        self._unload(list(served.versions.values()))

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

    def remove_model(self, name: str) -> None:
        """Stop serving a model: unload all its versions (blocks until leases are released)."""
        with self._lock:
            served = self._models.pop(name, None)
        self.traffic.drop_model(name)
        if served is None:
            raise not_found(f"Could not find any versions of model {name}")
        self._unload(list(served.versions.values()))

    def wait_for_loads(self, timeout: float | None = None) -> None:
        """Block until every load already started has ended (used at startup)."""
        wait(self.loads_running(), timeout)

    def loads_running(self) -> list[Future[None]]:
        """Futures of the loads running now (each completes, never raises, when it ends)."""
        return [
            mv.start_load(self._load_pool)
            for served in self.models()
            for mv in list(served.versions.values())
            if mv.state is State.LOADING
        ]

    def close(self, timeout: float | None = None) -> bool:
        """Unload every model and stop the load threads. Loads not begun yet end at once
        (UNAVAILABLE); later management calls and requests that need a load are refused.
        Blocks until done, or with ``timeout`` at most about that long: calls still running
        then are abandoned (their models closed under them) and loads still running are left
        to end on their own. Returns whether everything ended cleanly."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closing = True
            names = list(self._models)
        self._load_pool.shutdown(wait=False, cancel_futures=False)
        clean = True
        for name in names:
            with self._lock:
                served = self._models.pop(name, None)
            self.traffic.drop_model(name)
            for mv in list(served.versions.values()) if served else []:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                clean = mv.unload(left) and clean
        self.budget.released()
        if clean:
            self._load_pool.shutdown(wait=True)
        return clean

    def _check_open(self) -> None:
        if self._closing:
            raise unavailable("the server is shutting down")

    def _admit(self, mv: ModelVersion) -> None:
        """Before each load (in its thread): refused once closing, else the memory budget."""
        self._check_open()
        self.budget.admit(mv)

    # -- versions --------------------------------------------------------------------------

    def _select_versions(self, served: ServedModel, retry_all: bool) -> list[ModelVersion]:
        """Add a START version for each version the policy selects that is not served from
        the same path (or ENDed: after a failure only once its backoff has passed, unless
        ``retry_all``; evicted ones reload on demand instead). Returns the versions no longer
        selected, still listed."""
        config = served.config
        on_disk = list_versions(config.base_path)
        chosen = versions_to_serve(on_disk, config.version_policy)
        now = self._clock()
        with self._lock:
            served.problem = None if chosen else not_found(self._why_no_versions(config, on_disk))
            retired = [mv for v, mv in served.versions.items() if v not in chosen]
            for version in chosen:
                current = served.versions.get(version)
                if current is not None and current.path == on_disk[version]:
                    ended = current.state is State.END
                    if not ended or not (retry_all or served.revivable(current, now)):
                        continue
                    if current.evicted and not retry_all:
                        continue
                if current is not None and current.state is not State.END:
                    retired.append(current)
                served.versions[version] = self._new_version(config, version, on_disk[version])
        return retired

    def _new_version(self, config: ModelConfig, version: int, path: Path) -> ModelVersion:
        return ModelVersion(
            config.name,
            version,
            path,
            lambda p: self._loader(config, p),
            self._loaded,
            self._admit,
        )

    def _start_loads(
        self, served: ServedModel, skip: list[ModelVersion] | None = None
    ) -> list[Future[None]]:
        with self._lock:
            versions = [mv for mv in served.versions.values() if mv not in (skip or [])]
        return [mv.start_load(self._load_pool) for mv in versions]

    def _retire_if_replaced(self, served: ServedModel, retired: list[ModelVersion]) -> None:
        """Unload ``retired`` once another version is AVAILABLE (else they keep serving)."""
        with self._lock:
            kept = [mv for mv in served.versions.values() if mv not in retired]
            if retired and not any(mv.state is State.AVAILABLE for mv in kept):
                return
            for mv in retired:
                if served.versions.get(mv.version) is mv:
                    del served.versions[mv.version]
        self._unload(retired)

    def _unload(self, versions: list[ModelVersion]) -> None:
        for mv in versions:
            mv.unload()
        if versions:
            self.budget.released()

    def _loaded(self, mv: ModelVersion, seconds: float, error: ServingError | None) -> None:
        self.budget.loaded(mv, error is None)
        with self._lock:
            served = self._models.get(mv.name)
            if served is not None:
                served.record_load(mv.version, error, self._clock())
        self._observer.model_loaded(
            mv.name, mv.version, seconds, None if error is None else error.kind.value
        )

    def _held(self) -> list[Held]:
        """Versions that hold memory (a thousand idle models add no objects here: the budget
        asks for these on every load)."""
        with self._lock:
            return [
                Held(mv, served.config.pinned)
                for served in self._models.values()
                for mv in served.versions.values()
                if mv.state in CHARGED
            ]

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

    # -- lookups ---------------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a served model (metrics label only these)."""
        with self._lock:
            return name in self._models

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
            if served is None:
                raise self._missing(ref)
            if ref.label is None and ref.version is None and served.versions:
                # The common case: the newest version is AVAILABLE, so it is the latest.
                newest = served.versions[max(served.versions)]
                if newest.state is State.AVAILABLE:
                    return newest
            version: int | None
            if ref.label is not None:
                version = self.traffic.labelled(ref.name, ref.label)
            elif ref.version is not None:
                version = ref.version
            else:
                version = latest_version(served.routing_states(self._clock()))
            mv = served.versions.get(version) if version is not None else None
        if mv is None:
            raise self._missing(ref)
        return mv

    @staticmethod
    def _missing(ref: ModelRef) -> ServingError:
        return not_found(f"Servable not found for request: {ref.describe()}")

    def _revive(self, mv: ModelVersion) -> ModelVersion:
        """A fresh version in place of an evicted or failed one, when allowed now."""
        with self._lock:
            served = self._models.get(mv.name)
            if served is None or served.versions.get(mv.version) is not mv:
                current = served.versions.get(mv.version) if served else None
                return current or mv
            if not served.revivable(mv, self._clock()):
                return mv
            fresh = self._new_version(served.config, mv.version, mv.path)
            served.versions[mv.version] = fresh
            return fresh

    def try_lease(self, ref: ModelRef) -> Lease | None:
        """A lease on the version a request names when it is AVAILABLE now (the common case,
        without a wait); None when ``lease`` has work to do first (a load, a revival)."""
        mv = self.resolve(ref)
        if mv.state is not State.AVAILABLE:
            return None
        try:
            lease = mv.acquire()
        except ServingError:  # it stopped being available since resolve: let lease() decide
            return None
        self.budget.accessed(mv)
        return lease

    async def lease(self, ref: ModelRef) -> Lease:
        """A lease on the version a request names, loading it first if it is lazy, evicted,
        or failed and past its backoff; loading it again if another load evicted it before
        the lease was taken, and taking its successor if a version swap retired it."""
        while True:
            mv = self.resolve(ref)
            if mv.state is State.END:
                mv = self._revive(mv)
            ended = mv.state is State.END
            if mv.state in (State.START, State.LOADING):
                self._check_open()
                # Shielded: a waiter that gives up stops waiting; the load goes on for the
                # others (the load future itself cannot be cancelled either).
                await asyncio.shield(asyncio.wrap_future(mv.start_load(self._load_pool)))
            try:
                lease = mv.acquire()
            except ServingError:
                # Retry an eviction, or a swap that retired the version since it was resolved.
                if (ended or not mv.evicted) and self.resolve(ref) is mv:
                    raise
            else:
                self.budget.accessed(mv)
                return lease
