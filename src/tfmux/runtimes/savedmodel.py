"""Read a SavedModel directory's ``saved_model.pb`` without loading the model, plus the
signature lookup, output selection and TensorFlow error translation both runtimes share.

Both runtimes take their signature metadata from here, so it is exactly what the SavedModel
declares (and what TF Serving reports for it). Importing this module imports TensorFlow (its
protobuf modules live in the ``tensorflow`` package); it is only imported when loading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfmux.errors import ErrorKind, ServingError, internal, invalid_argument, not_found
from tfmux.types import PREDICT_METHOD, TF_TO_DTYPE, Shape, SignatureSpec, TensorSpec

SERVE_TAG = "serve"
SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"
INIT_OP_SIGNATURE = "__saved_model_init_op"

ModelKind = Literal["tf1", "tf2"]

# TensorFlow status codes -> error kinds (same names); DATA_LOSS has no kind of its own.
_KIND_OF_CODE = {getattr(tf.errors, kind.value): kind for kind in ErrorKind}
# Lines of a TensorFlow error message that locate the failure but do not describe it.
_MESSAGE_NOISE = ("Graph execution error:", "Detected at node", "<stack traces", 'File "')


def read_saved_model(path: Path) -> saved_model_pb2.SavedModel:
    """Parse ``<path>/saved_model.pb`` (or ``saved_model.pbtxt``, as TensorFlow also accepts).

    Raises ServingError NOT_FOUND when neither file exists, PERMISSION_DENIED or INTERNAL when
    it cannot be read, and INVALID_ARGUMENT when it does not parse; messages name the file.
    """
    pb_path = Path(path) / SAVED_MODEL_FILE
    text_path = Path(path) / SAVED_MODEL_TEXT_FILE
    is_text = not pb_path.exists() and text_path.exists()
    source = text_path if is_text else pb_path
    try:
        data = source.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(f"SavedModel not found: no {SAVED_MODEL_FILE} at {pb_path}") from None
    except PermissionError as exc:
        raise ServingError(ErrorKind.PERMISSION_DENIED, f"Cannot read {source}: {exc}") from exc
    except OSError as exc:
        raise internal(f"Cannot read {source}: {exc}") from exc
    saved_model = saved_model_pb2.SavedModel()
    try:
        if is_text:
            text_format.Parse(data.decode("utf-8"), saved_model)
        else:
            saved_model.ParseFromString(data)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"Corrupt SavedModel at {source}: {exc}") from exc
    if not saved_model.meta_graphs:
        raise invalid_argument(f"Corrupt SavedModel at {source}: it holds no meta graph")
    return saved_model


def serve_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged ``serve`` of the SavedModel at ``path``.

    Raises ServingError NOT_FOUND when there is none (listing the tag sets there are).
    """
    saved_model = read_saved_model(path)
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tag_sets = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise not_found(
        f"No MetaGraphDef with tag {SERVE_TAG!r} in the SavedModel at {path}; "
        f"available tag sets: {tag_sets}"
    )


def meta_graph_kind(meta_graph: meta_graph_pb2.MetaGraphDef) -> ModelKind:
    """``tf2`` for object-based SavedModels (``tf.saved_model.save``, Keras ``export``), which
    carry an object graph; ``tf1`` for graph-only ones (``tf.compat.v1.saved_model.Builder``)."""
    return "tf2" if meta_graph.object_graph_def.nodes else "tf1"


def signature_specs(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, SignatureSpec]:
    """The signatures of a meta graph, keyed by name, without the internal init-op signature."""
    return {
        name: SignatureSpec(
            name=name,
            inputs=_tensor_specs(name, sig.inputs),
            outputs=_tensor_specs(name, sig.outputs),
            method_name=sig.method_name or PREDICT_METHOD,
        )
        for name, sig in sorted(meta_graph.signature_def.items())
        if name != INIT_OP_SIGNATURE
    }


def read_signatures(path: Path) -> dict[str, SignatureSpec]:
    """The signatures of the ``serve`` meta graph of the SavedModel at ``path``."""
    return signature_specs(serve_meta_graph(path))


def _tensor_specs(
    signature: str, infos: Mapping[str, meta_graph_pb2.TensorInfo]
) -> dict[str, TensorSpec]:
    """TensorSpecs from a SignatureDef's ``map<string, TensorInfo>``, sorted by alias."""
    return {alias: _tensor_spec(signature, alias, infos[alias]) for alias in sorted(infos)}


def _tensor_spec(signature: str, alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    tf_name = types_pb2.DataType.Name(info.dtype)
    dtype = TF_TO_DTYPE.get(tf_name)
    if dtype is None:
        raise invalid_argument(
            f"Signature {signature!r}: tensor {alias!r} has unsupported dtype {tf_name}"
        )
    return TensorSpec(
        name=alias, dtype=dtype, shape=_shape(info.tensor_shape), tensor_name=info.name
    )


def _shape(proto: tensor_shape_pb2.TensorShapeProto) -> Shape | None:
    """A TensorShapeProto as a tuple: ``None`` for unknown rank and for -1 dimensions."""
    if proto.unknown_rank:
        return None
    return tuple(None if d.size < 0 else int(d.size) for d in proto.dim)


def find_signature(signatures: Mapping[str, SignatureSpec], name: str) -> SignatureSpec:
    """The named signature; INVALID_ARGUMENT (TF Serving's wording) when there is none."""
    spec = signatures.get(name)
    if spec is None:
        raise invalid_argument(f'Serving signature key "{name}" not found.')
    return spec


def select_outputs(spec: SignatureSpec, output_names: Sequence[str] | None) -> tuple[str, ...]:
    """The output aliases to return: all of ``spec``'s when ``output_names`` is None or empty.

    Raises INVALID_ARGUMENT for an alias the signature does not have.
    """
    if not output_names:
        return tuple(spec.outputs)
    for alias in output_names:
        if alias not in spec.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(spec.outputs)}}}."
            )
    return tuple(output_names)


def model_failure(exc: tf.errors.OpError) -> ServingError:
    """A model that raised while running, with TensorFlow's message without its noise:
    INVALID_ARGUMENT when the graph rejected its inputs (InvalidArgumentError: a shape it
    cannot take, a failed assertion; TF Serving answers the graph's own status), else
    INTERNAL (the request was well formed; the model failed)."""
    kind = (
        ErrorKind.INVALID_ARGUMENT
        if isinstance(exc, tf.errors.InvalidArgumentError)
        else ErrorKind.INTERNAL
    )
    return ServingError(kind, f"{type(exc).__name__}: {_clean(exc.message)}")


def _clean(message: str) -> str:
    lines = (line.strip() for line in message.splitlines())
    return (
        " ".join(line for line in lines if line and not line.startswith(_MESSAGE_NOISE)) or message
    )


def from_op_error(exc: tf.errors.OpError, prefix: str = "") -> ServingError:
    """A TensorFlow error as a ServingError of the same status code, without the preamble
    and stack trace lines TensorFlow adds to graph execution errors."""
    kind = _KIND_OF_CODE.get(exc.error_code, ErrorKind.INTERNAL)
    return ServingError(kind, prefix + _clean(exc.message))
