"""Labels, weighted splits, shadows and aliases: the live routing state, replaced atomically.

Every change builds a new immutable entry and swaps it in under one lock, so a request sees
either the whole old routing or the whole new one, never half an update.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from tfmux.config import LABEL_RE, AliasConfig, ModelConfig, ShadowConfig, TrafficConfig
from tfmux.core.observer import Observer
from tfmux.core.routing import Shadow, Split, choose_arm, mirrored
from tfmux.errors import failed_precondition, invalid_argument, not_found
from tfmux.types import InferenceResult, ModelRef, VersionStatus


@dataclass(frozen=True)
class Routing:
    """One model's labels and split."""

    labels: Mapping[str, int] = field(default_factory=dict)
    split: Split = field(default_factory=Split)


@dataclass(frozen=True)
class Route:
    """Where a request goes: the concrete target, the shadow (if mirrored), and the arm."""

    ref: ModelRef
    shadow: ModelRef | None = None
    arm: str = ""

    def settle(self, requested: str, result: InferenceResult, observer: Observer) -> None:
        """The request ran: its result names the arm it took, counted for the model the
        client ``requested`` (every service that routes does this the same way)."""
        result.arm = self.arm
        if self.arm:
            observer.routed(requested, self.arm, str(result.version))


def available(statuses: Iterable[VersionStatus]) -> dict[int, bool]:
    """Served version -> AVAILABLE: what ``TrafficTable.update`` checks labels against."""
    return {s.version: s.state == "AVAILABLE" for s in statuses}


def _split(weights: Mapping[str, float], shadow: ShadowConfig | None) -> Split:
    mirror = Shadow(shadow.target, shadow.percent) if shadow is not None else None
    return Split(dict(weights), mirror)


class TrafficTable:
    """Thread-safe. ``draw`` supplies random numbers in [0, 1) (tests pass their own)."""

    def __init__(self, draw: Callable[[], float] = random.random) -> None:
        self._draw = draw
        self._lock = threading.Lock()
        self._models: dict[str, Routing] = {}
        self._aliases: dict[str, Split] = {}

    # -- configuration ---------------------------------------------------------------------

    def configure_model(self, config: ModelConfig) -> None:
        routing = Routing(dict(config.labels), _split(config.traffic.split, config.traffic.shadow))
        known = set(routing.labels) | {str(v) for v in routing.labels.values()}
        if routing.split.weights or routing.split.shadow:
            _validate_arms(routing.split, config.name, known, allow_versions=True)
        with self._lock:
            self._models[config.name] = routing

    def drop_model(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    def set_aliases(self, aliases: list[AliasConfig]) -> None:
        table = {}
        with self._lock:
            models = set(self._models)
        for alias in aliases:
            if alias.name in models:
                raise invalid_argument(f"alias '{alias.name}' is also the name of a model")
            if not alias.split:
                raise invalid_argument(f"alias '{alias.name}' needs at least one model to go to")
            split = _split(alias.split, alias.shadow)
            split.validate(models, "configured model")
            table[alias.name] = split
        with self._lock:
            self._aliases = table

    def update(
        self,
        name: str,
        labels: Mapping[str, int] | None,
        traffic: TrafficConfig | None,
        versions: Mapping[int, bool],
        allow_unavailable: bool = False,
    ) -> Routing:
        """Replace a model's labels and/or split at once. ``versions``: served version ->
        AVAILABLE. A label may point at a version that is not available only when allowed.
        Read, check and swap happen under one lock, so concurrent updates never lose one
        another's changes (nor bring back a model dropped meanwhile)."""
        with self._lock:
            current = self._models.get(name)
            if current is None:
                raise not_found(f"Could not find any versions of model {name}")
            routing = _updated(current, name, labels, traffic, versions, allow_unavailable)
            self._models[name] = routing
        return routing

    # -- lookups ---------------------------------------------------------------------------

    def routing(self, name: str) -> Routing | None:
        with self._lock:
            return self._models.get(name)

    def alias(self, name: str) -> Split | None:
        """The split of alias ``name`` (None: no such alias)."""
        with self._lock:
            return self._aliases.get(name)

    def label_version(self, name: str, label: str) -> int | None:
        with self._lock:
            routing = self._models.get(name)
        return None if routing is None else routing.labels.get(label)

    def labelled(self, name: str, label: str) -> int:
        """The version ``label`` names (NOT_FOUND when it names none), for every service."""
        version = self.label_version(name, label)
        if version is None:
            raise not_found(f"Unknown label '{label}' of model {name}")
        return version

    def route(self, ref: ModelRef) -> Route:
        """Apply the alias and the model's split to a request that names only the model."""
        if ref.version is not None or ref.label is not None:
            return Route(ref)
        with self._lock:
            alias = self._aliases.get(ref.name)
            routing = self._models.get(ref.name)
        if alias is not None:
            target = choose_arm(alias.weights, ref.routing_key, self._draw())
            inner = self.route(ModelRef(target, routing_key=ref.routing_key))
            shadow = (
                ModelRef(alias.shadow.target)
                if alias.shadow and mirrored(alias.shadow, self._draw())
                else inner.shadow
            )
            return Route(inner.ref, shadow, target)
        if routing is None:
            return Route(ref)
        split, arm = routing.split, ""
        if split.weights:
            arm = choose_arm(split.weights, ref.routing_key, self._draw())
            ref = _arm_ref(ref.name, arm, routing.labels, ref.routing_key)
        shadow = None
        if split.shadow is not None and mirrored(split.shadow, self._draw()):
            shadow = _arm_ref(ref.name, split.shadow.target, routing.labels, None)
        return Route(ref, shadow, arm)


def _updated(
    current: Routing,
    name: str,
    labels: Mapping[str, int] | None,
    traffic: TrafficConfig | None,
    versions: Mapping[int, bool],
    allow_unavailable: bool,
) -> Routing:
    """``current`` with the new labels and/or split, validated (pure). Only labels that move
    are checked for availability, and a new split's version arms must be served versions."""
    new_labels = dict(current.labels if labels is None else labels)
    for label, version in new_labels.items():
        if not LABEL_RE.match(label):
            raise invalid_argument(f"label '{label}' must match {LABEL_RE.pattern}")
        if version not in versions:
            raise failed_precondition(f"label '{label}': model {name} has no version {version}")
        moved = current.labels.get(label) != version
        if moved and not versions[version] and not allow_unavailable:
            raise failed_precondition(
                f"label '{label}': version {version} of model {name} is not AVAILABLE "
                "(set allow_unavailable to point it there anyway)"
            )
    split = current.split if traffic is None else _split(traffic.split, traffic.shadow)
    known = set(new_labels) | {str(v) for v in versions}
    _validate_arms(split, name, known, allow_versions=traffic is None)
    return replace(current, labels=new_labels, split=split)


def _arm_ref(name: str, arm: str, labels: Mapping[str, int], key: str | None) -> ModelRef:
    """The arm's version, a label read from the same snapshot as the split: resolving the
    label later could pair the old split with labels moved in between."""
    version = labels.get(arm)
    return ModelRef(name, version=int(arm) if version is None else version, routing_key=key)


def _validate_arms(split: Split, name: str, known: set[str], allow_versions: bool) -> None:
    """Arms are labels, or version numbers written as text."""
    arms = set(split.weights) | ({split.shadow.target} if split.shadow else set())
    extra = {a for a in arms if allow_versions and a.isdigit()}
    split.validate(known | extra, f"label or version of model {name}")
