"""Restore maps: which checkpoint key each variable of a SavedModel's graph is restored from,
read from the graph without running it (TF2: the restore function; TF1: the graph-level
saver's assign ops), and whether the SavedModel has an init op that does something."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import tensor_util

from tfmux.runtimes.savedmodel import INIT_OP_SIGNATURE

VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})
_RESTORE_OPS = {"RestoreV2", "Const", "Identity", "AssignVariableOp", "NoOp"}
_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")
_ASSIGN_OPS = frozenset({"Assign", "AssignVariableOp"})


def _node_name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def tf2_restore_map(meta_graph: meta_graph_pb2.MetaGraphDef) -> list[tuple[str, str, Any]] | None:
    """(checkpoint key, variable op name, dtype) for every variable the SavedModel's restore
    function assigns; None unless that function is RestoreV2 -> AssignVariableOp only."""
    restore = meta_graph.saver_def.restore_op_name
    call = next((n for n in meta_graph.graph_def.node if n.name == restore), None)
    if call is None or call.op not in ("StatefulPartitionedCall", "PartitionedCall"):
        return None
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    body = functions.get(call.attr["f"].func.name)
    if body is None or any(n.op not in _RESTORE_OPS for n in body.node_def):
        return None
    outer = [name for name in call.input if not name.startswith("^")]
    args = {arg.name: outer[i] for i, arg in enumerate(body.signature.input_arg)}
    nodes = {n.name: n for n in body.node_def}
    names: dict[str, list[str]] = {}
    for node in body.node_def:
        if node.op == "RestoreV2":
            const = nodes.get(node.input[1].split(":")[0])
            if const is None or const.op != "Const":
                return None
            values = tensor_util.MakeNdarray(const.attr["value"].tensor)
            names[node.name] = [v.decode() for v in values.reshape(-1)]
    result = []
    for node in body.node_def:
        if node.op != "AssignVariableOp":
            continue
        variable = args.get(node.input[0])
        source = _through_identities(nodes, node.input[1])
        if variable is None or source is None or source[0] not in names:
            return None
        restored, index = source
        result.append((names[restored][index], variable.split(":")[0], node.attr["dtype"].type))
    return result


def _through_identities(nodes: Mapping[str, Any], ref: str) -> tuple[str, int] | None:
    """Follow ``Identity`` nodes from a function-body tensor reference to ``(RestoreV2 node,
    output index)``."""
    for _ in range(len(nodes) + 1):
        parts = ref.split(":")
        node = nodes.get(parts[0])
        if node is None:
            return None
        if node.op == "RestoreV2" and len(parts) == 3:
            return node.name, int(parts[2])
        if node.op != "Identity":
            return None
        ref = node.input[0]
    return None


def unrestored(meta_graph: meta_graph_pb2.MetaGraphDef, assigns: list[Any]) -> bool:
    """Whether a signature reads a variable the checkpoint does not restore."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    restored = {variable for _, variable, _ in assigns}
    stack = [
        info.name.split(":")[0]
        for name, sig in meta_graph.signature_def.items()
        if name != INIT_OP_SIGNATURE
        for info in sig.outputs.values()
    ]
    seen: set[str] = set()
    while stack:
        name = stack.pop().lstrip("^").split(":")[0]
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        if node.op == "VarHandleOp" and name not in restored:
            return True
        stack.extend(node.input)
    return False


def needs_init(meta_graph: meta_graph_pb2.MetaGraphDef) -> bool:
    """Whether the SavedModel has an init op that does something (not a lone NoOp; TF2 names
    its ``NoOp`` both in the init signature and in the main-op collection)."""
    collections = meta_graph.collection_def
    names = [
        name
        for collection in _INIT_COLLECTIONS
        if collection in collections
        for name in collections[collection].node_list.value
    ]
    init = meta_graph.signature_def.get(INIT_OP_SIGNATURE)
    if init is not None:
        names.extend(info.name for info in init.outputs.values())
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    for name in names:
        node = nodes.get(name.split(":")[0])
        if node is None or node.op != "NoOp" or node.input:
            return True
    return False


def tf1_restore_map(graph_def: graph_pb2.GraphDef) -> dict[str, str]:
    """Variable node name -> checkpoint key, for variables a graph-level saver restores
    (TF1: ``Assign``/``AssignVariableOp`` of a ``RestoreV2`` output, whole tensors only)."""
    nodes = {n.name: n for n in graph_def.node}
    result: dict[str, str] = {}
    for node in graph_def.node:
        if node.op not in _ASSIGN_OPS or len(node.input) < 2:
            continue
        source = _follow_identities(nodes, node.input[1])
        if source is None:
            continue
        restore, index = source
        names = _string_const(nodes, restore.input[1]) if len(restore.input) > 2 else None
        slices = _string_const(nodes, restore.input[2]) if len(restore.input) > 2 else None
        if names is None or slices is None or index >= len(names) or any(slices):
            continue
        variable = _node_name(node.input[0])
        if variable in nodes and nodes[variable].op in VARIABLE_OPS:
            result[variable] = names[index]
    return result


def _follow_identities(
    nodes: Mapping[str, node_def_pb2.NodeDef], ref: str
) -> tuple[node_def_pb2.NodeDef, int] | None:
    for _ in range(len(nodes) + 1):
        node = nodes.get(_node_name(ref))
        if node is None:
            return None
        if node.op == "RestoreV2":
            parts = ref.split(":")
            return node, int(parts[1]) if len(parts) > 1 else 0
        if node.op != "Identity" or not node.input:
            return None
        ref = node.input[0]
    return None


def _string_const(nodes: Mapping[str, node_def_pb2.NodeDef], ref: str) -> list[str] | None:
    node = nodes.get(_node_name(ref))
    if node is None or node.op != "Const":
        return None
    values = tensor_util.MakeNdarray(node.attr["value"].tensor)
    return [v.decode() for v in values.reshape(-1)]
