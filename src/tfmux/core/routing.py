"""Pure traffic policy: which arm of a weighted split a request goes to, and whether it is
mirrored to a shadow. No I/O, no clocks: randomness comes in as a number.

Sticky assignment uses weighted rendezvous hashing: every (key, arm) pair gets a hash
``u`` in (0, 1) and the arm with the smallest ``-ln(u) / weight`` wins. Each arm wins with
probability weight / total, the same key always lands on the same arm while the weights are
unchanged, and changing one arm's weight moves only keys to or from that arm (the fewest
possible).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from tfmux.errors import invalid_argument


@dataclass(frozen=True)
class Shadow:
    """Mirror ``percent`` of requests to ``target``; callers only ever see the primary."""

    target: str
    percent: float


@dataclass(frozen=True)
class Split:
    """Arms by weight. Arms are labels or version numbers (as text) of one model, or, for an
    alias, names of other models."""

    weights: Mapping[str, float] = field(default_factory=dict)
    shadow: Shadow | None = None

    def validate(self, known: set[str], what: str) -> None:
        """INVALID_ARGUMENT unless weights are non-negative, sum > 0, and targets known."""
        if self.weights:
            for arm, weight in self.weights.items():
                if not math.isfinite(weight) or weight < 0:
                    raise invalid_argument(f"weight of '{arm}' must be >= 0, not {weight}")
                if arm not in known:
                    raise invalid_argument(f"split arm '{arm}' is not a {what}")
            if sum(self.weights.values()) <= 0:
                raise invalid_argument("split weights must sum to more than 0")
        if self.shadow is not None:
            if self.shadow.target not in known:
                raise invalid_argument(f"shadow target '{self.shadow.target}' is not a {what}")
            if not 0 <= self.shadow.percent <= 100:
                raise invalid_argument("shadow percent must be between 0 and 100")


def unit_hash(*parts: str) -> float:
    """A stable number in (0, 1) for the given parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def choose_arm(weights: Mapping[str, float], key: str | None, draw: float) -> str:
    """The arm a request goes to: by ``key`` when given (sticky), else by ``draw`` in [0, 1)."""
    arms = [(arm, w) for arm, w in weights.items() if w > 0]
    if not arms:
        raise invalid_argument("no arm of the split has a positive weight")
    if key is not None:
        return min(arms, key=lambda a: -math.log(unit_hash(key, a[0])) / a[1])[0]
    total = sum(w for _, w in arms)
    point = draw * total
    for arm, weight in arms:
        point -= weight
        if point < 0:
            return arm
    return arms[-1][0]


def mirrored(shadow: Shadow | None, draw: float) -> bool:
    """Whether this request is also sent to the shadow (``draw`` in [0, 1))."""
    return shadow is not None and draw * 100 < shadow.percent
