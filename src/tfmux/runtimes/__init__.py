"""TensorFlow runtimes: load SavedModel version directories into LoadedModels.

Importing this package does not import TensorFlow; the runtime modules (``tf1``, ``tf2``,
``savedmodel``) import it and are imported only when a model is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tfmux.core.runtime import LoadedModel
from tfmux.errors import invalid_argument

KINDS = ("auto", "tf1", "tf2")


def quiet_tensorflow() -> None:
    """Hide TensorFlow's INFO and WARNING logs unless the user chose otherwise.

    Effective only before TensorFlow is first imported. Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (C++
    logs) and the ``tensorflow`` Python logger to ERROR (v1 API deprecation notices), each only
    when not already set. A few C++ lines logged while TensorFlow's shared libraries load
    (oneDNN, CUDA stubs) bypass this setting.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logger = logging.getLogger("tensorflow")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


quiet_tensorflow()


def load_model(path: Path, kind: str = "auto", **session_options: Any) -> LoadedModel:
    """Load the SavedModel version directory ``path``.

    ``kind`` is ``tf1`` (own graph + session), ``tf2`` (``tf.saved_model.load``) or ``auto``
    (``tf2`` for object-based SavedModels, ``tf1`` for graph-only ones). ``session_options``
    (``intra_op_threads``, ``inter_op_threads``) configure TF1 sessions and are ignored by TF2
    loads. Raises ServingError for a missing or unreadable SavedModel.
    """
    if kind not in KINDS:
        raise invalid_argument(f"Unknown runtime kind {kind!r}; expected one of {KINDS}")
    if kind == "auto":
        from tfmux.runtimes.savedmodel import detect_kind

        kind = detect_kind(path)
    if kind == "tf1":
        from tfmux.runtimes.tf1 import TF1Runtime

        return TF1Runtime(**session_options).load(path)
    from tfmux.runtimes.tf2 import TF2Runtime

    return TF2Runtime().load(path)


class AutoRuntime:
    """A Runtime that picks TF1 or TF2 per SavedModel (see ``load_model``). Stateless."""

    name = "auto"

    def __init__(self, **session_options: Any) -> None:
        self._session_options = session_options

    def load(self, path: Path) -> LoadedModel:
        return load_model(path, "auto", **self._session_options)


def collect_garbage() -> None:
    """A full collection, so an unloaded model's reference cycles are freed (TensorFlow's own
    objects were frozen out of it at startup, which keeps it short)."""
    import gc

    gc.collect()
