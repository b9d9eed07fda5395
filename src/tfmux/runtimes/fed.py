"""One session per graph, weights per version: versions of one architecture fed their variables.

A graph whose signatures only read their variables is rewritten once (``fed_graph``) so that
every variable is a placeholder, imported once and run by **one** ``Session`` with one set of
executors and callables for every version that has it. A version's load is reading its
checkpoint into numpy arrays (one ``RestoreV2`` run in that session, no graph, session or
function to build); its memory is those arrays; every call feeds the version's arrays with
the request's inputs. Isolation holds by construction: the session has no state of its own
(no variables, no tables: graphs with any are not fed), so what a call computes depends on
what it is fed and nothing else, and unloading a version drops its arrays and nothing more.

Feeding is zero-copy when an array is aligned as TensorFlow wants (``_ALIGNMENT`` bytes; the
arrays are re-aligned once at load when not), so a call costs what it would with variables.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.client import pywrap_tf_session

from tfmux.errors import ErrorKind, ServingError, failed_precondition, internal, invalid_argument
from tfmux.runtimes import bundle
from tfmux.runtimes.fed_graph import FedVariable
from tfmux.runtimes.savedmodel import find_signature, from_op_error, select_outputs
from tfmux.runtimes.tf1 import _Plan, _PlanKey, run_failure
from tfmux.types import SignatureSpec

_ALIGNMENT = bundle.ALIGNMENT


class FedSession:
    """The session of a fed graph, shared by its versions: reads a version's weights, and
    makes (and keeps) one callable per signature, inputs and outputs. Thread-safe."""

    def __init__(
        self,
        graph_def: graph_pb2.GraphDef,
        variables: list[FedVariable],
        config: tf.compat.v1.ConfigProto | None,
    ) -> None:
        self.variables = variables
        self.feeds = [v.feed for v in variables]
        self._keys = [v.key for v in variables]
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
            prefix = tf.compat.v1.placeholder(tf.string, [], name="tfmux_fed/prefix")
            values = tf.raw_ops.RestoreV2(
                prefix=prefix,
                tensor_names=[v.key for v in variables],
                shape_and_slices=[""] * len(variables),
                dtypes=[tf.dtypes.as_dtype(v.dtype) for v in variables],
                name="tfmux_fed/read",
            )
        self.graph.finalize()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        options = config_pb2.CallableOptions(feed=[prefix.name], fetch=[v.name for v in values])
        self._restore = self.session._make_callable_from_options(options)
        self._read = functools.partial(
            pywrap_tf_session.TF_SessionRunCallable, self.session._session, self._restore._handle
        )
        self._plans: dict[tuple[_PlanKey, int], _Plan] = {}
        self._lock = threading.Lock()
        self._closed = False

    def read_weights(self, path: Path) -> list[np.ndarray]:
        """The variables of the SavedModel at ``path``, in ``variables`` order, aligned: read
        from the checkpoint's files directly when they are plain tensors (``bundle.py``,
        checksums verified), else by the graph's ``RestoreV2``."""
        prefix = str(path / "variables" / "variables")
        failed = f"Failed to load SavedModel at {path}: "
        try:
            arrays = bundle.read_tensors(prefix, self._keys)
        except FileNotFoundError as exc:
            raise ServingError(ErrorKind.NOT_FOUND, failed + str(exc)) from exc
        except (OSError, bundle.BundleError) as exc:
            raise ServingError(ErrorKind.INTERNAL, failed + str(exc)) from exc
        if arrays is None:
            try:
                arrays = self._read([np.array(prefix.encode(), dtype=object)], None)
            except tf.errors.OpError as exc:
                raise from_op_error(exc, failed) from exc
        for variable, array in zip(self.variables, arrays, strict=True):
            if array.dtype != tf.dtypes.as_dtype(variable.dtype).as_numpy_dtype:
                raise invalid_argument(
                    f"{failed}variable {variable.feed[:-2]} is {array.dtype} in the "
                    f"checkpoint, the graph expects {tf.dtypes.as_dtype(variable.dtype).name}"
                )
            if variable.shape is not None and not _fits(variable.shape, array.shape):
                raise invalid_argument(
                    f"{failed}variable {variable.feed[:-2]} has shape {list(array.shape)} in "
                    "the checkpoint, the graph expects "
                    f"{[d if d is not None else -1 for d in variable.shape]}"
                )
        return [_aligned(array) for array in arrays]

    def plan(self, key: _PlanKey, spec: SignatureSpec, timeout_ms: int) -> _Plan:
        plan = self._plans.get((key, timeout_ms))
        if plan is not None:
            return plan
        outputs = select_outputs(spec, key[2] or None)
        with self._lock:
            if self._closed:
                raise failed_precondition("The shared session is closed")
            plan = self._plans.get((key, timeout_ms))
            if plan is None:
                plan = _Plan(self.session, spec, key[1], outputs, timeout_ms, self.feeds)
                self._plans[(key, timeout_ms)] = plan
            return plan

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._plans.clear()
            self._restore = self._read = None
        self.session.close()


def _fits(expected: tuple[int | None, ...], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(
        e is None or e == a for e, a in zip(expected, actual, strict=True)
    )


def _aligned(array: np.ndarray) -> np.ndarray:
    """``array`` itself when TensorFlow can feed it without a copy, else an aligned copy."""
    if array.dtype == object or (array.ctypes.data % _ALIGNMENT == 0 and array.flags.c_contiguous):
        return array
    buffer = np.empty(array.nbytes + _ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    copy = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


class FedModel:
    """One version on a fed graph: its signatures, its weights, and the shared session."""

    runtime = "tf1"

    def __init__(
        self,
        path: Path,
        fed: FedSession,
        signatures: Mapping[str, SignatureSpec],
        release: Callable[[], None],
        run_timeout_ms: int = 0,
    ) -> None:
        self._path = path
        self._fed = fed
        self._signatures = signatures
        self._release: Callable[[], None] | None = release
        self._run_timeout_ms = run_timeout_ms
        self._weights: list[np.ndarray] | None = fed.read_weights(path)

    @property
    def signatures(self) -> Mapping[str, SignatureSpec]:
        return self._signatures

    @property
    def memory_bytes(self) -> int:
        """The version's weights: what it holds (the budget charges at least this)."""
        return sum(a.nbytes for a in self._weights or ())

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        weights = self._weights
        if weights is None:
            raise failed_precondition(f"The model at {self._path} is closed")
        key = (signature, tuple(inputs), tuple(output_names) if output_names else ())
        spec = find_signature(self._signatures, signature)
        try:
            return self._fed.plan(key, spec, self._run_timeout_ms)(inputs, weights)
        except tf.errors.OpError as exc:
            raise run_failure(exc, self._run_timeout_ms) from exc
        except (TypeError, ValueError) as exc:  # what a callable says of unfeedable values
            raise internal(str(exc)) from exc

    def uninitialized_variables(self) -> list[str]:
        return []  # every variable a signature reads is fed from the checkpoint

    def close(self) -> None:
        """Drop the weights (no reference cycles: nothing to collect); later runs raise
        FAILED_PRECONDITION."""
        self._weights = None
        release, self._release = self._release, None
        if release is not None:
            release()
