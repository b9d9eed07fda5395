"""Fed graphs: a SavedModel's serving graph with every variable turned into a fed placeholder.

Versions of one architecture differ only in their weights. When the signatures read their
variables and do nothing else with them, the graph can be rewritten once so that each variable
is a ``Placeholder`` of the variable's dtype and shape, with the same node name: one session
and one set of executors then serve every version, each call feeding the weights of the
version it is for (``runtimes/fed.py``). This module is the rewrite, on protos only:

- the serving graph is the signatures' inputs and outputs and everything they depend on
  (the saver, the restore function and initializers are left out);
- a variable (``VarHandleOp``, or a TF1 ``VariableV2``) becomes a placeholder; a
  ``ReadVariableOp`` of it becomes an ``Identity``; a TF1 op reading a ref variable reads the
  placeholder instead;
- a function call receiving a variable handle (TF2's signature wrapper, and the calls nested in
  it) calls a copy of its function whose argument is the value, the reads in it rewritten the
  same way, recursively;
- anything else touching a resource or a ref (assignments, lookup tables, queues, iterators,
  gathers from a resource, control flow receiving a handle, a variable the checkpoint does
  not restore) makes the graph unfit: ``fed_graph`` returns None and the version loads the
  session way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tensorflow.core.framework import (
    attr_value_pb2,
    function_pb2,
    graph_pb2,
    types_pb2,
)
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import op_def_registry

from tfmux.runtimes.restore_map import VARIABLE_OPS

CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})


@dataclass(frozen=True)
class FedVariable:
    """One variable of a fed graph: the placeholder that replaced it and where its value is."""

    feed: str  # tensor name of the placeholder ("dense/kernel:0")
    key: str  # checkpoint key
    dtype: int  # types_pb2 enum
    shape: tuple[int | None, ...] | None  # None: unknown rank


class _Unfit(Exception):
    """The graph cannot be fed its variables (the reason is the message)."""


def fed_graph(
    meta_graph: meta_graph_pb2.MetaGraphDef,
    restored: Mapping[str, str],
    signature_names: Iterable[str],
) -> tuple[graph_pb2.GraphDef, list[FedVariable]] | None:
    """The serving graph of ``meta_graph`` with its variables as placeholders, and the
    variables; None when the graph does anything with a resource but read variables, or
    reads a variable missing from ``restored`` (variable node name -> checkpoint key)."""
    try:
        return _Rewrite(meta_graph, restored).run(signature_names)
    except _Unfit:
        return None


def _node_name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _shape(attr: object) -> tuple[int | None, ...] | None:
    shape = attr.shape  # type: ignore[attr-defined]
    if shape.unknown_rank:
        return None
    return tuple(d.size if d.size >= 0 else None for d in shape.dim)


class _Rewrite:
    def __init__(self, meta_graph: meta_graph_pb2.MetaGraphDef, restored: Mapping[str, str]):
        self._meta = meta_graph
        self._graph = meta_graph.graph_def
        self._nodes = {n.name: n for n in self._graph.node}
        self._library = {f.signature.name: f for f in self._graph.library.function}
        self._restored = restored
        self._copies: dict[tuple[str, tuple[tuple[int, int], ...]], str] = {}
        self._new_functions: list[function_pb2.FunctionDef] = []

    def run(
        self, signature_names: Iterable[str]
    ) -> tuple[graph_pb2.GraphDef, list[FedVariable]] | None:
        roots = []
        outputs = set()
        for name in signature_names:
            signature = self._meta.signature_def[name]
            for info in [*signature.inputs.values(), *signature.outputs.values()]:
                if not info.name:  # composite tensors
                    raise _Unfit("a signature tensor without a name")
                roots.append(_node_name(info.name))
            outputs.update(_node_name(info.name) for info in signature.outputs.values())
        kept = self._ancestors(roots)
        variables = {n for n in kept if self._nodes[n].op in VARIABLE_OPS}
        if variables & outputs:
            raise _Unfit("a signature outputs a variable itself")
        if not variables:
            return None  # nothing to feed: the session way costs the same
        fed: list[FedVariable] = []
        out = graph_pb2.GraphDef()
        out.versions.CopyFrom(self._graph.versions)
        order = {name: i for i, name in enumerate(self._nodes)}
        for name in sorted(kept, key=order.__getitem__):
            node = out.node.add()
            node.CopyFrom(self._nodes[name])
            if name in variables:
                fed.append(self._placeholder(node))
                continue
            calls: dict[int, int] = {}
            for position, ref in enumerate(node.input):
                if ref.startswith("^") or _node_name(ref) not in variables:
                    continue
                variable = self._nodes[_node_name(ref)]
                if variable.op != "VarHandleOp":  # a TF1 ref variable: read unless assigned
                    if _takes_ref(node):
                        raise _Unfit(f"{node.op} {node.name} assigns a variable")
                elif node.op == "ReadVariableOp" and position == 0:
                    _read_to_identity(node)
                elif node.op in CALL_OPS:
                    calls[position] = variable.attr["dtype"].type
                else:
                    raise _Unfit(f"{node.op} {node.name} uses a variable")
            if calls:
                self._retarget_call(node, calls)
        functions = self._reachable_functions(out.node)
        for function in functions:
            out.library.function.add().CopyFrom(function)
        self._check(out.node, functions)
        return out, fed

    def _ancestors(self, roots: list[str]) -> set[str]:
        seen: set[str] = set()
        while roots:
            name = roots.pop()
            if name in seen:
                continue
            node = self._nodes.get(name)
            if node is None:
                raise _Unfit(f"no node {name}")
            seen.add(name)
            roots.extend(_node_name(ref) for ref in node.input)
        return seen

    def _placeholder(self, node: graph_pb2.NodeDef) -> FedVariable:
        key = self._restored.get(node.name)
        if key is None:
            raise _Unfit(f"variable {node.name} is not restored from the checkpoint")
        name, device = node.name, node.device
        dtype = node.attr["dtype"].type
        shape = attr_value_pb2.AttrValue()
        shape.CopyFrom(node.attr["shape"])
        node.Clear()
        node.name, node.op, node.device = name, "Placeholder", device
        node.attr["dtype"].type = dtype
        node.attr["shape"].CopyFrom(shape)
        return FedVariable(f"{name}:0", key, dtype, _shape(shape))

    def _retarget_call(self, node: object, positions: dict[int, int]) -> None:
        """Point a call receiving variable handles at ``positions`` (input index -> dtype) to
        a copy of its function taking the values."""
        attr = node.attr  # type: ignore[attr-defined]
        attr["f"].func.name = self._fed_function(attr["f"].func.name, positions)
        for position, dtype in positions.items():
            attr["Tin"].list.type[position] = dtype
        if "_read_only_resource_inputs" in attr:
            del attr["_read_only_resource_inputs"]

    def _fed_function(self, name: str, positions: dict[int, int]) -> str:
        key = (name, tuple(sorted(positions.items())))
        if key in self._copies:
            return self._copies[key]
        original = self._library.get(name)
        if original is None:
            raise _Unfit(f"no function {name}")
        function = function_pb2.FunctionDef()
        function.CopyFrom(original)
        new_name = f"{name}_tfmux_fed_" + "_".join(str(p) for p in sorted(positions))
        function.signature.name = new_name
        args: dict[str, int] = {}
        for position, dtype in positions.items():
            arg = function.signature.input_arg[position]
            if arg.type != types_pb2.DT_RESOURCE:
                raise _Unfit(f"argument {arg.name} of {name} is not a resource")
            arg.type = dtype
            args[arg.name] = dtype
            if position in function.resource_arg_unique_id:
                del function.resource_arg_unique_id[position]
        if any(ref in args for ref in function.ret.values()):
            raise _Unfit(f"{name} returns a variable handle")
        reads: set[str] = set()
        for node in function.node_def:
            calls: dict[int, int] = {}
            for position, ref in enumerate(node.input):
                if ref not in args:
                    continue
                if node.op == "ReadVariableOp" and position == 0:
                    _read_to_identity(node)
                    reads.add(node.name)
                elif node.op in CALL_OPS:
                    calls[position] = args[ref]
                else:
                    raise _Unfit(f"{node.op} {node.name} in {name} uses a variable")
            if calls:
                self._retarget_call(node, calls)
        if reads:  # a read's output was "read:value:0"; an Identity's is "read:output:0"
            for node in function.node_def:
                for i, ref in enumerate(node.input):
                    node.input[i] = _renamed(ref, reads)
            for output, ref in function.ret.items():
                function.ret[output] = _renamed(ref, reads)
        self._copies[key] = new_name
        self._library[new_name] = function
        self._new_functions.append(function)
        return new_name

    def _reachable_functions(self, nodes: Iterable[object]) -> list[function_pb2.FunctionDef]:
        found: dict[str, function_pb2.FunctionDef] = {}
        stack = [name for node in nodes for name in _called(node)]
        while stack:
            name = stack.pop()
            if name in found:
                continue
            function = self._library.get(name)
            if function is None:
                raise _Unfit(f"no function {name}")
            found[name] = function
            stack.extend(called for node in function.node_def for called in _called(node))
        return list(found.values())

    def _check(self, nodes: Iterable[object], functions: list[function_pb2.FunctionDef]) -> None:
        """Nothing left in the serving graph holds or takes a resource or a ref."""
        for function in functions:
            for arg in [*function.signature.input_arg, *function.signature.output_arg]:
                if arg.type == types_pb2.DT_RESOURCE or arg.is_ref:
                    raise _Unfit(f"{function.signature.name} passes a resource")
            for node in function.node_def:
                _check_node(node, self._library)
        for node in nodes:
            _check_node(node, self._library)


def _check_node(node: object, library: Mapping[str, object]) -> None:
    op = node.op  # type: ignore[attr-defined]
    if op in library:
        raise _Unfit(f"direct call of function {op}")
    op_def = op_def_registry.get(op)
    if op_def is None:
        raise _Unfit(f"unknown op {op}")
    for arg in [*op_def.input_arg, *op_def.output_arg]:
        if arg.type == types_pb2.DT_RESOURCE or arg.is_ref:
            raise _Unfit(f"{op} takes or gives a resource")
    for value in node.attr.values():  # type: ignore[attr-defined]
        kind = value.WhichOneof("value")
        if (kind == "type" and value.type == types_pb2.DT_RESOURCE) or (
            kind == "list" and types_pb2.DT_RESOURCE in value.list.type
        ):
            raise _Unfit(f"{op} {node.name} has a resource type")  # type: ignore[attr-defined]


def _called(node: object) -> list[str]:
    names = []
    for value in node.attr.values():  # type: ignore[attr-defined]
        kind = value.WhichOneof("value")
        if kind == "func":
            names.append(value.func.name)
        elif kind == "list":
            names.extend(f.name for f in value.list.func)
    return names


def _read_to_identity(node: object) -> None:
    dtype = node.attr["dtype"].type  # type: ignore[attr-defined]
    node.op = "Identity"  # type: ignore[attr-defined]
    del node.attr["dtype"]  # type: ignore[attr-defined]
    node.attr["T"].type = dtype  # type: ignore[attr-defined]


def _renamed(ref: str, reads: set[str]) -> str:
    parts = ref.split(":")
    if len(parts) == 3 and parts[0] in reads and parts[1] == "value":
        return f"{parts[0]}:output:{parts[2]}"
    return ref


def _takes_ref(node: object) -> bool:
    op_def = op_def_registry.get(node.op)  # type: ignore[attr-defined]
    return op_def is None or any(arg.is_ref for arg in op_def.input_arg)
