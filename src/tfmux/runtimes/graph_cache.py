"""Shared graphs: versions with the same graph (same architecture, other weights) import it once.

Profiled on a 4 MiB TF2 SavedModel, TensorFlow's v1 loader spends its ~30 ms on importing the
graph, then instantiating the SavedModel's restore *function* in the new session (the
checkpoint read itself is ~1 ms), then running the init op; tfmux then spent another ~18 ms
checking in a session run that every variable the signatures read was restored. Here:

- versions are keyed by their graph (``graph_key``: a hash of the MetaGraphDef's bytes with
  TF2 function-name counters masked); versions with equal hashes share one
  finalized ``tf.Graph`` (imported once, kept while any version uses it and for a bounded while
  after), and every version still gets its **own Session**, so its own variables: sessions on
  one graph share nothing but the graph's definition (TensorFlow keeps resources per session);
- a TF2 restore function made only of ``RestoreV2`` into ``AssignVariableOp`` is read once per
  graph into a map (checkpoint key -> variable) and rebuilt as plain graph ops (one
  ``RestoreV2`` into every ``AssignVariableOp``, fed the checkpoint prefix): a load runs it
  once, with no function to instantiate, and the restored-variables check is answered from
  the same map, statically;
- an init op that is a plain ``NoOp`` (TF2's usual ``__saved_model_init_op``) is not run.

Graphs this cannot map exactly (other ops in the restore function, variables the signatures
read that the checkpoint does not cover, TF2 graphs without a restore function) are not
shared: they load as before (``shareable`` returns None). TF1 graph-only SavedModels are shared
and restored through their own graph-level saver.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from tfmux.errors import ServingError, internal
from tfmux.runtimes import collect_garbage
from tfmux.runtimes.restore_map import (
    needs_init,
    tf1_restore_map,
    tf2_restore_map,
    unrestored,
)
from tfmux.runtimes.savedmodel import (
    INIT_OP_SIGNATURE,
    SERVE_TAG,
    from_op_error,
    meta_graph_kind,
    signature_specs,
)
from tfmux.types import SignatureSpec

IDLE_GRAPHS = 64  # graphs kept after their last version unloads (reloads skip the import)
IDLE_BYTES = 64 * 1024 * 1024  # ... up to this many bytes of graph definitions
# Idle fed graphs keep their session (~0.35 MiB for a small graph, not charged to the budget):
# only this many of them.
IDLE_SESSIONS = 8
COLLECT_EVERY = 8  # graphs dropped from the cache between two garbage collections
KNOWN_FILES = 100_000  # saved_model.pb files whose graph key is remembered


@dataclass
class SharedGraph:
    """One imported, finalized graph and how to give a fresh session its variables."""

    key: str
    graph: tf.Graph
    signatures: dict[str, SignatureSpec]
    size: int  # bytes of the MetaGraphDef
    saver: Any = None  # graph-level saver (TF1 graphs)
    prefix_feed: str = ""  # the checkpoint prefix placeholder of ``assign_op``
    assign_op: str = ""  # reads the checkpoint into every variable (RestoreV2 -> assigns)
    run_init: bool = False
    users: int = 0
    fed: Any = None  # a FedSession (runtimes/fed.py): one session, weights fed per version

    def close(self) -> None:
        """The graph left the cache: close the shared session of a fed graph."""
        if self.fed is not None:
            self.fed.close()

    def open_session(self, path: Path, config: Any) -> Any:
        """A new session on the graph with the variables of the SavedModel at ``path``."""
        session = tf.compat.v1.Session(graph=self.graph, config=config)
        try:
            self._restore(session, path)
        except BaseException as exc:
            session.close()
            if isinstance(exc, tf.errors.OpError):
                raise from_op_error(exc, f"Failed to load SavedModel at {path}: ") from exc
            if isinstance(exc, ServingError):
                raise
            raise internal(f"Failed to load SavedModel at {path}: {exc}") from exc
        return session

    def _restore(self, session: Any, path: Path) -> None:
        prefix = str(path / "variables" / "variables")
        if self.assign_op:
            session.run(self.assign_op, feed_dict={self.prefix_feed: prefix})
        elif self.saver is not None:
            with self.graph.as_default():
                self.saver.restore(session, prefix)
        if self.run_init:
            with self.graph.as_default():
                loader_impl.SavedModelLoader(str(path)).run_init_ops(session, [SERVE_TAG])


class GraphCache:
    """Shared graphs by MetaGraphDef hash: in use, plus a bounded set of idle ones. Thread-safe."""

    def __init__(self, idle_graphs: int = IDLE_GRAPHS, idle_bytes: int = IDLE_BYTES) -> None:
        self._lock = threading.Lock()
        self._graphs: dict[str, SharedGraph] = {}
        self._idle: OrderedDict[str, SharedGraph] = OrderedDict()
        self._idle_graphs = idle_graphs
        self._idle_bytes = idle_bytes
        self.imports = 0  # graphs imported (tests and the benchmark read it)
        self._files: dict[tuple[int, ...], str] = {}  # saved_model.pb identity -> key
        self._dropped = 0  # graphs dropped since the last collection
        self.feed_variables = True  # fed graphs where possible (False: a session per version)

    def acquire(
        self, path: Path, meta_graph: meta_graph_pb2.MetaGraphDef, config: Any = None
    ) -> SharedGraph | None:
        """The shared graph for ``meta_graph`` (imported now if new), with one more user; None
        when the graph cannot be shared (the caller loads it the usual way). ``config``: the
        ConfigProto of a fed graph's session, when this import makes it."""
        key = graph_key(meta_graph)
        with self._lock:  # imports are rare and ~10 ms: one at a time keeps it simple
            shared = self._graphs.get(key) or self._idle.pop(key, None)
            if shared is None:
                fed = self.feed_variables
                shared = _import(key, path, meta_graph, meta_graph.ByteSize(), config, fed)
                if shared is None:
                    return None
                self.imports += 1
            self._graphs[key] = shared
            shared.users += 1
            identity = _file_identity(path)
            if identity:
                if len(self._files) >= KNOWN_FILES:
                    self._files.clear()
                self._files[identity] = key
            return shared

    def acquire_known(self, path: Path) -> SharedGraph | None:
        """The shared graph of a ``saved_model.pb`` file seen before and unchanged since (same
        inode, size and modification time), with one more user, without reading it; None
        when not known (then ``acquire``)."""
        identity = _file_identity(path)
        with self._lock:
            key = self._files.get(identity) if identity else None
            shared = (self._graphs.get(key) or self._idle.pop(key, None)) if key else None
            if shared is None:
                return None
            self._graphs[key] = shared  # type: ignore[index]
            shared.users += 1
            return shared

    def release(self, shared: SharedGraph) -> None:
        """A version using ``shared`` closed; the graph is kept idle for a while."""
        with self._lock:
            shared.users -= 1
            if shared.users > 0 or self._graphs.get(shared.key) is not shared:
                return
            del self._graphs[shared.key]
            dropped = []
            if shared.size <= self._idle_bytes:
                self._idle[shared.key] = shared
            else:
                dropped.append(shared)  # too large to keep idle
            while len(self._idle) > self._idle_graphs or (
                sum(g.size for g in self._idle.values()) > self._idle_bytes
            ):
                dropped.append(self._idle.popitem(last=False)[1])
            sessions = [k for k, g in self._idle.items() if g.fed is not None]
            excess = max(0, len(sessions) - IDLE_SESSIONS)
            dropped += [self._idle.pop(key) for key in sessions[:excess]]
        self._drop(dropped)

    def clear_idle(self) -> None:
        with self._lock:
            dropped = list(self._idle.values())
            self._idle.clear()
        self._drop(dropped, collect_now=True)

    def _drop(self, graphs: list[SharedGraph], collect_now: bool = False) -> None:
        """Graphs that left the cache: closed, and collected every ``COLLECT_EVERY`` drops (a
        ``tf.Graph`` is a web of reference cycles: left to the collector's own pace, dropped
        graphs piled up to ~15% of the budget under churn; a full collection costs ~3 ms with
        70 graphs resident, too much for every drop)."""
        if not graphs:
            return
        for graph in graphs:
            graph.close()
        with self._lock:
            self._dropped += len(graphs)
            collect = collect_now or self._dropped >= COLLECT_EVERY
            if collect:
                self._dropped = 0
        graphs.clear()  # (one the caller still holds goes at the next collection)
        if collect:
            collect_garbage()

    def __len__(self) -> int:
        with self._lock:
            return len(self._graphs) + len(self._idle)


def _file_identity(path: Path) -> tuple[int, ...] | None:
    try:
        stat = (path / "saved_model.pb").stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


GRAPHS = GraphCache()
# TF2 function names end in a process-wide counter (``__inference_serve_12``).
_FUNCTION_NAME = re.compile(rb"(__inference_[A-Za-z0-9_]*?_)([0-9]+)")


def _mask(match: re.Match[bytes]) -> bytes:
    return match.group(1) + b"#" * len(match.group(2))


def graph_key(meta_graph: meta_graph_pb2.MetaGraphDef) -> str:
    """SHA-256 of the MetaGraphDef's bytes with the counters of its TF2 function names masked
    (``__inference_serve_12`` -> ``__inference_serve_##``, same length, so the bytes stay a
    valid encoding of the renamed graph), so the same model code saved again with other
    weights shares the key. Masking is one-to-one or not done: when two names of the graph
    would become one, the exact bytes are hashed.

    (TensorFlow's own fingerprint, ``fingerprint.pb``, is not used: its graph hash left out
    constants inside functions, so ``x * 1.0`` and ``x * 3.0`` models had the same one.)
    """
    data = meta_graph.SerializeToString(deterministic=True)
    functions = {f.signature.name.encode() for f in meta_graph.graph_def.library.function}
    names = {m.group() for m in _FUNCTION_NAME.finditer(data) if m.group() in functions}
    masked = {_FUNCTION_NAME.sub(_mask, name) for name in names}
    if len(masked) == len(names):  # only names of the graph's own functions are masked
        data = _FUNCTION_NAME.sub(lambda m: _mask(m) if m.group() in names else m.group(), data)
    return hashlib.sha256(data).hexdigest()


def _import(
    key: str,
    path: Path,
    meta_graph: meta_graph_pb2.MetaGraphDef,
    size: int,
    config: Any = None,
    feed_variables: bool = True,
) -> SharedGraph | None:
    tf2 = meta_graph_kind(meta_graph) == "tf2"
    assigns = tf2_restore_map(meta_graph) if tf2 else None
    if feed_variables and not needs_init(meta_graph):
        fed = _fed_session(meta_graph, assigns, config)
        if fed is not None:
            return SharedGraph(key, fed.graph, signature_specs(meta_graph), size, fed=fed)
    if tf2 and (assigns is None or unrestored(meta_graph, assigns)):
        return None
    graph = tf.Graph()
    with graph.as_default():
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, [SERVE_TAG])
        shared = SharedGraph(key, graph, signature_specs(meta_graph), size, saver=saver)
        if assigns:
            shared.saver = None
            prefix = tf.compat.v1.placeholder(tf.string, [], name="tfmux_restore/prefix")
            values = tf.raw_ops.RestoreV2(
                prefix=prefix,
                tensor_names=[key for key, _, _ in assigns],
                shape_and_slices=[""] * len(assigns),
                dtypes=[dtype for _, _, dtype in assigns],
                name="tfmux_restore/read",
            )
            ops = [
                tf.raw_ops.AssignVariableOp(
                    resource=graph.get_operation_by_name(variable).outputs[0], value=value
                )
                for (_, variable, _), value in zip(assigns, values, strict=True)
            ]
            shared.prefix_feed = prefix.name
            shared.assign_op = tf.group(*ops, name="tfmux_restore/all").name
    shared.run_init = needs_init(meta_graph)
    graph.finalize()  # nothing adds ops to a graph sessions share
    return shared


def _fed_session(
    meta_graph: meta_graph_pb2.MetaGraphDef, assigns: list[Any] | None, config: Any
) -> Any:
    """The FedSession of ``meta_graph`` when its signatures only read variables its
    checkpoint restores whole (runtimes/fed_graph.py), else None."""
    from tfmux.runtimes.fed import FedSession
    from tfmux.runtimes.fed_graph import fed_graph

    if meta_graph_kind(meta_graph) == "tf2":
        if assigns is None:
            return None
        restored = {variable: key for key, variable, _ in assigns}
    else:
        restored = tf1_restore_map(meta_graph.graph_def)
    names = [name for name in meta_graph.signature_def if name != INIT_OP_SIGNATURE]
    rewritten = fed_graph(meta_graph, restored, names)
    return None if rewritten is None else FedSession(*rewritten, config)
