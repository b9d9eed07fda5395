"""A configured model: its versions, and when a failed version may be tried again."""

from __future__ import annotations

from dataclasses import dataclass, field

from tfmux.config import ModelConfig
from tfmux.core.lifecycle import ModelVersion, State
from tfmux.errors import ErrorKind, ServingError

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0


@dataclass
class ServedModel:
    """A configured model and the versions its policy selected. Guarded by the manager's lock.

    ``unloaded``: unloaded on request (management API); nothing reloads it but a load request.
    ``failures``: version -> (failed loads in a row, monotonic time a retry is allowed).
    """

    config: ModelConfig
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    problem: ServingError | None = None  # why no version could be served, if so
    unloaded: bool = False
    failures: dict[int, tuple[int, float]] = field(default_factory=dict)

    def record_load(self, version: int, error: ServingError | None, now: float) -> None:
        """Back off exponentially after failed loads (1 s, 2 s, 4 s, ... up to 5 minutes)."""
        if error is None:
            self.failures.pop(version, None)
            return
        count = self.failures.get(version, (0, 0.0))[0] + 1
        delay = min(FIRST_RETRY_SECONDS * 2 ** (count - 1), MAX_RETRY_SECONDS)
        if error.kind is ErrorKind.RESOURCE_EXHAUSTED:
            delay = 0.0  # did not fit: try again whenever asked, memory may have come free
        self.failures[version] = (count, now + delay)

    def revivable(self, mv: ModelVersion, now: float) -> bool:
        """An ENDed version a request may load again: evicted, or failed and past its backoff."""
        if mv.state is not State.END or self.unloaded:
            return False
        if mv.evicted:
            return True
        if mv.error is None:
            return False
        return now >= self.failures.get(mv.version, (0, 0.0))[1]

    def routing_states(self, now: float) -> dict[int, str]:
        """Version -> state as ``latest`` should see it: an evicted version still counts as
        AVAILABLE (it was serving and loads again on demand), a retryable one as START."""
        states = {}
        for version, mv in self.versions.items():
            state = mv.state.value
            if self.revivable(mv, now):
                state = "AVAILABLE" if mv.evicted else "START"
            states[version] = state
        return states
