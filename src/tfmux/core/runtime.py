"""The protocol every runtime (TF2 signatures, TF1 graph + session, fakes) implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tfmux.types import SignatureSpec


class LoadedModel(Protocol):
    """One loaded model version.

    ``run`` is called from executor threads, possibly concurrently: implementations must be
    thread-safe. ``close`` is called once, after the last ``run`` has returned.
    """

    @property
    def signatures(self) -> Mapping[str, SignatureSpec]: ...

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one signature; inputs are already validated against its spec.

        Returns the requested outputs (all when ``output_names`` is None), keyed by alias.
        Raises any exception on model failure; the core reports it as INTERNAL.
        """
        ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """Loads SavedModel directories into LoadedModels."""

    name: str

    def load(self, path: Path) -> LoadedModel:
        """Load one version directory; expensive, called in a load thread."""
        ...
