"""TensorFlow runtimes: load SavedModel version directories into LoadedModels.

Two runtimes: ``tf1``, the session runtime (a graph and ``Session`` per version, the default
for every SavedModel), and ``tf2`` (``tf.saved_model.load``, the fallback for TF2 SavedModels
the session runtime cannot serve). Importing this package does not import TensorFlow; the
runtime modules (``tf1``, ``tf2``, ``savedmodel``) import it and are imported only when a model
is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tfmux.core.runtime import LoadedModel
from tfmux.errors import invalid_argument

KINDS = ("auto", "tf1", "tf2")
log = logging.getLogger(__name__)


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

    ``kind`` is ``tf1`` (the session runtime: own graph + session), ``tf2``
    (``tf.saved_model.load``) or ``auto``: the session runtime for every SavedModel, as TF
    Serving does, except a TF2 SavedModel the session runtime cannot serve (its v1 load fails,
    or leaves variables the signatures read without a value), which falls back to ``tf2``
    with the reason logged at INFO. ``session_options`` (``intra_op_threads``,
    ``inter_op_threads``) configure sessions and are ignored by TF2 loads. Raises
    ServingError for a missing or unreadable SavedModel.
    """
    if kind not in KINDS:
        raise invalid_argument(f"Unknown runtime kind {kind!r}; expected one of {KINDS}")
    if kind == "tf2":
        from tfmux.runtimes.tf2 import TF2Runtime

        return TF2Runtime().load(path)
    from tfmux.runtimes.tf1 import TF1Runtime

    runtime = TF1Runtime(**session_options)
    if kind == "tf1":
        return runtime.load(path)
    known = runtime.load_known(path)  # a graph already shared: the session runtime serves it
    if known is not None:
        return known
    from tfmux.runtimes.savedmodel import meta_graph_kind, serve_meta_graph, signature_specs

    meta_graph = serve_meta_graph(path)
    signature_specs(meta_graph)  # what both runtimes would refuse (dtypes) fails here, once
    if meta_graph_kind(meta_graph) == "tf1":  # graph-only: the session runtime is the only one
        return runtime.load(path)
    try:
        model = runtime.load(path)
    except Exception as exc:
        reason = str(exc)
    else:
        try:
            missing = model.uninitialized_variables()
        except BaseException:
            model.close()
            raise
        if not missing:
            return model
        model.close()
        reason = f"variables the signatures read were not restored: {', '.join(missing)}"
    log.info(
        "The session runtime cannot serve the TF2 SavedModel at %s (%s); "
        "loading it with tf.saved_model.load",
        path,
        reason,
    )
    from tfmux.runtimes.tf2 import TF2Runtime

    return TF2Runtime().load(path)


class AutoRuntime:
    """A Runtime that picks the session or the TF2 runtime per SavedModel (see
    ``load_model``). Stateless."""

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
