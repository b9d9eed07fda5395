"""The session runtime (``runtime: tf1``): each model version in its own ``tf.Graph`` and
``tf.compat.v1.Session``, loaded by the v1 SavedModel loader, as TF Serving runs every
SavedModel (TF1 and TF2 alike) through a C++ Session.

It is the default for TF2 SavedModels too because a call costs less Python than a TF2
signature function (measured in docs/architecture.md). Graph isolation means two models with
identical tensor or variable names never interfere: each session has its own graph and its own
resource containers.

Runs go through the C++ ``Session::MakeCallable`` API (``Session._make_callable_from_options``:
one compiled callable per signature, input names and output selection). It is private Python
API, but the public ``Session.make_callable`` with a feed list falls back to the generic
``Session.run`` path, which costs ~60 µs more per call.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.client import pywrap_tf_session

from tfmux.core.runtime import LoadedModel
from tfmux.errors import ErrorKind, ServingError, failed_precondition, invalid_argument
from tfmux.runtimes import collect_garbage
from tfmux.runtimes.graph_cache import GRAPHS, SharedGraph
from tfmux.runtimes.savedmodel import (
    SERVE_TAG,
    find_signature,
    from_op_error,
    model_failure,
    select_outputs,
    serve_meta_graph,
    signature_specs,
)
from tfmux.types import SignatureSpec, numpy_dtype

_PlanKey = tuple[str, tuple[str, ...], tuple[str, ...]]


class _Plan:
    """One signature called with one set of input aliases and one output selection: a session
    callable plus what the Session.run path did in Python for it (dtype conversion, duplicate
    feeds, outputs that are fed inputs)."""

    __slots__ = ("_callable", "_casts", "_feed_picks", "_outputs", "_run", "_sources")

    def __init__(
        self,
        session: Any,
        spec: SignatureSpec,
        aliases: tuple[str, ...],
        outputs: tuple[str, ...],
        timeout_ms: int = 0,
        weight_feeds: Sequence[str] = (),
    ) -> None:
        unknown = [alias for alias in aliases if alias not in spec.inputs]
        if unknown:
            raise invalid_argument(
                f"Signature {spec.name!r} has no inputs named {unknown}; "
                f"expected {sorted(spec.inputs)}"
            )
        feeds: dict[str, int] = {}  # tensor name -> position of its first alias
        for position, alias in enumerate(aliases):
            feeds.setdefault(spec.inputs[alias].tensor_name, position)
        self._feed_picks = None if len(feeds) == len(aliases) else list(feeds.values())
        # Numeric inputs of another dtype are converted (Session.run did); strings of any
        # numpy kind (object, bytes, unicode) are accepted by TensorFlow as they are.
        self._casts = [
            (position, numpy_dtype(spec.inputs[alias].dtype))
            for position, alias in enumerate(aliases)
            if spec.inputs[alias].dtype != "string"
        ]
        # A tensor can be both fed and fetched in Session.run (the fed value comes back), but
        # not in a callable: such outputs are taken from the inputs.
        fetches: list[str] = []
        self._sources: list[tuple[bool, int]] | None = []
        for alias in outputs:
            name = spec.outputs[alias].tensor_name
            if name in feeds:
                self._sources.append((True, feeds[name]))
            else:
                self._sources.append((False, len(fetches)))
                fetches.append(name)
        if len(fetches) == len(outputs):
            self._sources = None
        self._outputs = outputs
        # A callable takes no per-call options: its run timeout is fixed when it is made.
        run_options = config_pb2.RunOptions(timeout_in_ms=timeout_ms)
        # A fed graph (runtimes/fed.py) also takes the version's weights, after the inputs.
        options = config_pb2.CallableOptions(
            feed=[*feeds, *weight_feeds], fetch=fetches, run_options=run_options
        )
        self._callable = self._run = None
        if fetches:  # a callable must fetch something
            # The callable object releases its C++ handle when dropped; calls skip its Python
            # wrapper (keyword and run-metadata handling, ~1 µs) for TensorFlow's binding.
            self._callable = session._make_callable_from_options(options)
            self._run = functools.partial(
                pywrap_tf_session.TF_SessionRunCallable, session._session, self._callable._handle
            )

    def __call__(
        self, inputs: Mapping[str, Any], weights: Sequence[Any] = ()
    ) -> dict[str, np.ndarray]:
        values = list(inputs.values())
        for position, dtype in self._casts:
            if getattr(values[position], "dtype", None) != dtype:
                values[position] = np.asarray(values[position], dtype)
        if self._feed_picks is not None:
            values = [values[position] for position in self._feed_picks]
        if self._run is None:
            results = []
        else:
            results = self._run([*values, *weights] if weights else values, None)
        if self._sources is None:
            return dict(zip(self._outputs, results, strict=True))
        return {
            alias: values[index] if fed else results[index]
            for alias, (fed, index) in zip(self._outputs, self._sources, strict=True)
        }


def run_failure(exc: tf.errors.OpError, run_timeout_ms: int) -> ServingError:
    """The ServingError for a failed call: DEADLINE_EXCEEDED past the maximum run time,
    else the model's failure."""
    if isinstance(exc, tf.errors.DeadlineExceededError) and run_timeout_ms:
        seconds = run_timeout_ms / 1000
        return ServingError(
            ErrorKind.DEADLINE_EXCEEDED,
            f"the model did not answer within the maximum run time ({seconds:g} s)",
        )
    return model_failure(exc)


class TF1Model:
    """A SavedModel loaded into a private graph and session.

    ``run`` is thread-safe: a session's callables may be called concurrently, and the plan
    cache is guarded by a lock. The model owns its session; ``close`` releases it, after which
    ``run`` raises FAILED_PRECONDITION.
    """

    runtime = "tf1"

    def __init__(
        self,
        path: Path,
        config: tf.compat.v1.ConfigProto | None = None,
        shared: SharedGraph | None = None,
        run_timeout_ms: int = 0,
    ) -> None:
        self._path = path
        self._shared = shared
        self._run_timeout_ms = run_timeout_ms  # 0: none
        if shared is not None:  # a graph imported once for every version that has it
            self._graph = shared.graph
            self._session = shared.open_session(path, config)
            self._signatures = shared.signatures
            self._plans = {}
            self._lock = threading.Lock()
            self._closed = False
            return
        serve_meta_graph(path)  # clear ServingErrors for a missing or corrupt saved_model.pb
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
        self._signatures: Mapping[str, SignatureSpec] = signature_specs(meta_graph)
        self._plans: dict[_PlanKey, _Plan] = {}
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

        String outputs come back as numpy object arrays of bytes, scalars as numpy scalars
        (as TF2's ``Tensor.numpy()`` gives them). A model failure raises an INTERNAL
        ServingError with TensorFlow's message.
        """
        key = (signature, tuple(inputs), tuple(output_names) if output_names else ())
        plan = self._plans.get(key)
        try:
            if plan is None:
                plan = self._make_plan(key)
            return plan(inputs)
        except tf.errors.OpError as exc:
            raise run_failure(exc, self._run_timeout_ms) from exc

    def _make_plan(self, key: _PlanKey) -> _Plan:
        signature, aliases, output_names = key
        spec = find_signature(self._signatures, signature)
        outputs = select_outputs(spec, output_names)
        with self._lock:
            if self._closed:
                raise failed_precondition(f"The model at {self._path} is closed")
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plans[key] = _Plan(
                    self._session, spec, aliases, outputs, self._run_timeout_ms
                )
            return plan

    def uninitialized_variables(self) -> list[str]:
        """Variables the signatures read that the load left without a value.

        The v1 loader restores variables through the SavedModel's saver, by graph node; a TF2
        SavedModel whose functions capture variables its checkpoint does not cover (e.g. a
        Keras 3 model written by ``tf.saved_model.save`` rather than ``export``) loads without
        error and fails on every call. ``tf.saved_model.load`` restores by object instead.
        A shared graph was checked statically when it was imported (graph_cache).
        """
        if self._shared is not None:
            return []
        ops = [
            self._graph.get_tensor_by_name(tensor.tensor_name).op
            for spec in self._signatures.values()
            for tensor in spec.outputs.values()
        ]
        seen: set[str] = set()
        handles = []
        while ops:
            op = ops.pop()
            if op.name in seen:
                continue
            seen.add(op.name)
            if op.type == "VarHandleOp":
                handles.append(op)
            ops.extend(tensor.op for tensor in op.inputs)
            ops.extend(op.control_inputs)
        if not handles:
            return []
        with self._graph.as_default(), tf.name_scope("tfmux_initialized"):
            checks = [tf.raw_ops.VarIsInitializedOp(resource=op.outputs[0]) for op in handles]
        flags = self._session.run(checks)
        return sorted(
            op.name for op, initialized in zip(handles, flags, strict=True) if not initialized
        )

    def close(self) -> None:
        """Close the session and drop the graph; later runs raise FAILED_PRECONDITION."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._plans.clear()  # releases the callables while the session is open
        self._session.close()
        del self._graph
        if self._shared is not None:
            GRAPHS.release(self._shared)
        collect_garbage()


class TF1Runtime:
    """Loads SavedModels the TF1 way (``tf.compat.v1.saved_model.loader.load``).

    ``share_graphs``: see ``load``. Sessions get the ConfigProto TensorFlow gives any v1
    Session in a TF2 process (the process-wide thread and GPU settings, soft device
    placement, so a model saved with
    variables pinned to a GPU still loads on a CPU-only host), with ``intra_op_threads`` /
    ``inter_op_threads`` put in when given. Sessions share TensorFlow's process-wide thread
    pools, so these counts take effect when the first session creates them.
    """

    name = "tf1"

    def __init__(
        self,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        share_graphs: bool = True,
        run_timeout_ms: int | None = None,
    ) -> None:
        self._share_graphs = share_graphs
        # Each call's RunOptions.timeout_in_ms: TensorFlow cancels a call running longer (a
        # blocked queue op, say) and frees its thread; None or 0: no limit.
        self._run_timeout_ms = run_timeout_ms or 0
        self._config: tf.compat.v1.ConfigProto | None = None
        if intra_op_threads is not None or inter_op_threads is not None:
            from tensorflow.python.eager import context

            self._config = context.context().config  # what Session(config=None) would use
            if intra_op_threads is not None:
                self._config.intra_op_parallelism_threads = intra_op_threads
            if inter_op_threads is not None:
                self._config.inter_op_parallelism_threads = inter_op_threads

    def load_known(self, path: Path) -> LoadedModel | None:
        """The version at ``path`` when its ``saved_model.pb`` is one whose shared graph is
        loaded or idle (no parse), else None."""
        if not self._share_graphs:
            return None
        shared = GRAPHS.acquire_known(path)
        return (
            None if shared is None else _on_shared(path, shared, self._config, self._run_timeout_ms)
        )

    def load(self, path: Path) -> LoadedModel:
        """With ``share_graphs`` (the default) versions with the same graph share it
        (graph_cache); without, every version goes through TensorFlow's v1 loader."""
        shared = (
            load_shared(path, self._config, self._run_timeout_ms) if self._share_graphs else None
        )
        return shared or TF1Model(path, self._config, run_timeout_ms=self._run_timeout_ms)


def load_shared(
    path: Path, config: tf.compat.v1.ConfigProto | None, run_timeout_ms: int = 0
) -> LoadedModel | None:
    """The version at ``path`` on a shared graph (graph_cache), or None when its graph cannot
    be shared (then it loads with TensorFlow's v1 loader)."""
    shared = GRAPHS.acquire_known(path) or GRAPHS.acquire(path, serve_meta_graph(path), config)
    return None if shared is None else _on_shared(path, shared, config, run_timeout_ms)


def _on_shared(
    path: Path, shared: SharedGraph, config: tf.compat.v1.ConfigProto | None, run_timeout_ms: int
) -> LoadedModel:
    """The version at ``path`` on ``shared`` (acquired for it; released if the load fails)."""
    try:
        if shared.fed is not None:  # one session for the graph, this version's weights fed
            from tfmux.runtimes.fed import FedModel

            release = functools.partial(GRAPHS.release, shared)
            return FedModel(path, shared.fed, shared.signatures, release, run_timeout_ms)
        return TF1Model(path, config, shared, run_timeout_ms)
    except BaseException:
        GRAPHS.release(shared)
        raise
