"""Pure policies over snapshots: which versions to serve, which version ``latest`` means."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tfmux.config import VersionPolicy


def versions_to_serve(on_disk: Iterable[int], policy: VersionPolicy) -> list[int]:
    """The versions a policy selects from those on disk, ascending.

    ``specific`` selects only versions that exist; asking for a missing one is reported by the
    caller, which knows the model's name.
    """
    available = sorted(set(on_disk))
    if policy.kind == "all":
        return available
    if policy.kind == "specific":
        return [v for v in available if v in policy.versions]
    return available[-policy.num_versions :] if available else []


def latest_version(states: Mapping[int, str]) -> int | None:
    """The version a request without a version goes to.

    The newest AVAILABLE version; if none is available, the newest that can still become
    available (START or LOADING); otherwise the newest of all, whose error the caller reports.
    """
    if not states:
        return None
    for wanted in ({"AVAILABLE"}, {"START", "LOADING"}):
        candidates = [v for v, s in states.items() if s in wanted]
        if candidates:
            return max(candidates)
    return max(states)


@dataclass(frozen=True)
class Resident:
    """A loaded version as the eviction policy sees it."""

    key: tuple[str, int]
    size: int
    last_used: float
    evictable: bool  # idle (no request in flight or queued) and not pinned


def eviction_victims(
    residents: Iterable[Resident], needed: int, budget: int
) -> list[tuple[str, int]] | None:
    """Least-recently-used evictable versions to unload so ``needed`` more bytes fit.

    ``[]`` when it already fits; None when even evicting every evictable version is not enough.
    """
    residents = list(residents)
    excess = sum(r.size for r in residents) + needed - budget
    if excess <= 0:
        return []
    victims: list[tuple[str, int]] = []
    for resident in sorted((r for r in residents if r.evictable), key=lambda r: r.last_used):
        victims.append(resident.key)
        excess -= resident.size
        if excess <= 0:
            return victims
    return None
