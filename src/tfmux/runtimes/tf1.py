"""The TF1 runtime: each model version in its own ``tf.Graph`` and ``tf.compat.v1.Session``.

Graph isolation means two models with identical tensor or variable names never interfere. Runs
go through ``Session.make_callable`` (one callable per signature, fed inputs and requested
outputs), the cheapest way to call a graph from Python.
"""

from __future__ import annotations

import threading
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

_CallableKey = tuple[str, tuple[str, ...], tuple[str, ...]]


class TF1Model:
    """A SavedModel loaded into a private graph and session.

    ``run`` is thread-safe: TensorFlow sessions and their callables may be called concurrently,
    and the callable cache is guarded by a lock. The model owns its session; ``close`` releases
    it, after which ``run`` raises FAILED_PRECONDITION.
    """

    def __init__(self, path: Path, config: tf.compat.v1.ConfigProto | None = None) -> None:
        serve_meta_graph(path)  # clear ServingErrors for a missing or corrupt saved_model.pb
        self._path = path
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, [SERVE_TAG], str(path)
                )
        except BaseException as exc:
            self._session.close()
            if isinstance(exc, tf.errors.OpError):
                raise from_op_error(exc, f"Failed to load SavedModel at {path}: ") from exc
            raise
        self._signatures = signature_specs(meta_graph)
        self._callables: dict[_CallableKey, Callable[..., list[np.ndarray]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def signatures(self) -> Mapping[str, SignatureSpec]:
        return self._signatures

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``signature``, feeding ``inputs`` by alias; returns the requested outputs.

        String outputs come back as numpy object arrays of bytes. A model failure raises an
        INTERNAL ServingError with TensorFlow's message.
        """
        spec = find_signature(self._signatures, signature)
        outputs = select_outputs(spec, output_names)
        key = (signature, tuple(inputs), outputs)
        run = self._callables.get(key)
        if run is None:
            run = self._make_callable(spec, key)
        try:
            values = run(*inputs.values())
        except tf.errors.OpError as exc:
            raise model_failure(exc) from exc
        return dict(zip(outputs, values, strict=True))

    def _make_callable(
        self, spec: SignatureSpec, key: _CallableKey
    ) -> Callable[..., list[np.ndarray]]:
        _, input_aliases, outputs = key
        with self._lock:
            if self._closed:
                raise failed_precondition(f"The model at {self._path} is closed")
            run = self._callables.get(key)
            if run is None:
                unknown = [alias for alias in input_aliases if alias not in spec.inputs]
                if unknown:
                    raise invalid_argument(
                        f"Signature {spec.name!r} has no inputs named {unknown}; "
                        f"expected {sorted(spec.inputs)}"
                    )
                feeds = [spec.inputs[alias].tensor_name for alias in input_aliases]
                fetches = [spec.outputs[alias].tensor_name for alias in outputs]
                run = self._session.make_callable(fetches, feed_list=feeds)
                self._callables[key] = run
            return run

    def close(self) -> None:
        """Close the session and drop the graph; later runs raise FAILED_PRECONDITION."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._callables.clear()
        self._session.close()
        del self._graph
        collect_garbage()


class TF1Runtime:
    """Loads SavedModels the TF1 way (``tf.compat.v1.saved_model.loader.load``).

    ``intra_op_threads`` / ``inter_op_threads`` go into each session's ConfigProto; None keeps
    TensorFlow's default. Sessions share TensorFlow's process-wide thread pools unless
    configured otherwise, so these counts take effect when the first session creates them.
    """

    name = "tf1"

    def __init__(
        self, intra_op_threads: int | None = None, inter_op_threads: int | None = None
    ) -> None:
        options: dict[str, Any] = {}
        if intra_op_threads is not None:
            options["intra_op_parallelism_threads"] = intra_op_threads
        if inter_op_threads is not None:
            options["inter_op_parallelism_threads"] = inter_op_threads
        self._config = tf.compat.v1.ConfigProto(**options) if options else None

    def load(self, path: Path) -> TF1Model:
        return TF1Model(path, self._config)
