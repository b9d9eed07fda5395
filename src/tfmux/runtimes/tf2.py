"""The TF2 runtime (``runtime: tf2``): ``tf.saved_model.load`` and the SavedModel's signature
functions.

``runtime: auto`` uses it only for TF2 SavedModels the session runtime (``tf1``) cannot serve:
it restores variables by object rather than by graph node, and its signature functions run
in TensorFlow's eager context, at a higher Python cost per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfmux.errors import failed_precondition, invalid_argument
from tfmux.runtimes import collect_garbage
from tfmux.runtimes.savedmodel import (
    SERVE_TAG,
    find_signature,
    from_op_error,
    model_failure,
    select_outputs,
    serve_meta_graph,
    signature_specs,
)
from tfmux.types import SignatureSpec


class TF2Model:
    """A SavedModel loaded with ``tf.saved_model.load``; runs call its signature functions.

    Signature metadata is read from ``saved_model.pb`` (as for TF1 models), so it matches what
    TF Serving reports. ``run`` is thread-safe: signature functions may be called
    concurrently and the model holds no mutable per-call state. The model owns the loaded
    object; ``close`` drops it (TensorFlow frees it on garbage collection), after which ``run``
    raises FAILED_PRECONDITION.
    """

    runtime = "tf2"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._signatures = signature_specs(serve_meta_graph(path))
        try:
            self._loaded: Any = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        except tf.errors.OpError as exc:
            raise from_op_error(exc, f"Failed to load SavedModel at {path}: ") from exc
        self._functions: dict[str, Callable[..., Mapping[str, tf.Tensor]]] = {
            name: self._loaded.signatures[name] for name in self._signatures
        }

    @property
    def signatures(self) -> Mapping[str, SignatureSpec]:
        return self._signatures

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``signature`` with ``inputs`` keyed by alias; returns the requested outputs.

        String outputs come back as numpy object arrays of bytes. A model failure raises
        INTERNAL ServingError with TensorFlow's message.
        """
        spec = find_signature(self._signatures, signature)
        outputs = select_outputs(spec, output_names)
        function = self._functions.get(signature)
        if function is None:
            raise failed_precondition(f"The model at {self._path} is closed")
        try:
            result = function(**{alias: tf.constant(array) for alias, array in inputs.items()})
        except tf.errors.OpError as exc:
            raise model_failure(exc) from exc
        except (TypeError, ValueError) as exc:  # the function's input signature refused them
            raise invalid_argument(f"signature '{signature}': {_first_line(exc)}") from exc
        return {alias: result[alias].numpy() for alias in outputs}

    def close(self) -> None:
        """Drop the loaded SavedModel and its functions, then collect garbage."""
        self._functions = {}
        self._loaded = None
        collect_garbage()


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), repr(exc))


class TF2Runtime:
    """Loads SavedModels with ``tf.saved_model.load`` (TF2 and Keras ``export`` models)."""

    name = "tf2"

    def load(self, path: Path) -> TF2Model:
        return TF2Model(path)
