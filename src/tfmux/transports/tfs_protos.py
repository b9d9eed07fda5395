"""TF Serving's gRPC messages (tensorflow.serving) read into and built from neutral types.

Everything a servicer needs besides calling the service: ModelSpec ↔ ModelRef, the serialized
tf.Examples of an ``Input``, classification/regression results from a signature's outputs,
SignatureDefs from SignatureSpecs, and status messages. Problems are INVALID_ARGUMENT with TF
Serving's wording where it has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
    status_pb2,
)

from tfmux.errors import invalid_argument
from tfmux.transports.tensor_proto import DTYPE_ENUM
from tfmux.transports.tfs_results import classifications, regressions
from tfmux.types import (
    DEFAULT_SIGNATURE,
    ModelRef,
    SignatureSpec,
    TensorSpec,
    VersionStatus,
)

_CODE = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type
_STATE = get_model_status_pb2.ModelVersionStatus.State


def model_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    """What a request's ModelSpec names: a model and at most one of a version or a label."""
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return ModelRef(spec.name, version=spec.version.value)
    if choice == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name)


def model_spec(name: str, version: int, signature_name: str | None = None) -> model_pb2.ModelSpec:
    """The ModelSpec of a response: the model, the version that served, the signature used."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name or "")
    spec.version.value = version
    return spec


def signature_name(spec: model_pb2.ModelSpec) -> str:
    """The signature a request asks for (``serving_default`` when empty)."""
    return spec.signature_name or DEFAULT_SIGNATURE


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The request's tf.Examples as a [N] object array of serialized protos.

    With ``example_list_with_context`` the context is serialized before each example, so the
    parsed example holds both and its own features win (TF Serving's behaviour).
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        context = b""
        examples = request_input.example_list.examples
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        examples = request_input.example_list_with_context.examples
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    out = np.empty(len(examples), dtype=object)
    out[:] = [context + example.SerializeToString() for example in examples]
    return out


def only_input(signature: SignatureSpec) -> str:
    """The single input (serialized tf.Examples) of a classify or regress signature."""
    if len(signature.inputs) != 1:
        raise invalid_argument(
            f"Expected one input Tensor: signature '{signature.name}' has {len(signature.inputs)}"
        )
    return next(iter(signature.inputs))


def classification_result(
    outputs: Mapping[str, np.ndarray], num_examples: int
) -> classification_pb2.ClassificationResult:
    """A ClassificationResult (checked by ``tfs_results.classifications``)."""
    labels, scores = classifications(outputs, num_examples)
    Class = classification_pb2.Class
    return classification_pb2.ClassificationResult(
        classifications=[
            classification_pb2.Classifications(
                classes=[
                    Class(label=label, score=score)
                    for label, score in zip(label_row, score_row, strict=True)
                ]
            )
            for label_row, score_row in zip(labels, scores.tolist(), strict=True)
        ]
    )


def regression_result(
    outputs: Mapping[str, np.ndarray], num_examples: int
) -> regression_pb2.RegressionResult:
    """A RegressionResult (checked by ``tfs_results.regressions``)."""
    Regression = regression_pb2.Regression
    values = regressions(outputs, num_examples).tolist()
    return regression_pb2.RegressionResult(regressions=[Regression(value=v) for v in values])


def signature_def_map(
    signatures: Mapping[str, SignatureSpec],
) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefMap GetModelMetadata returns under ``signature_def``."""
    out = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signatures.items():
        out.signature_def[key].CopyFrom(
            meta_graph_pb2.SignatureDef(
                inputs={alias: _tensor_info(t) for alias, t in signature.inputs.items()},
                outputs={alias: _tensor_info(t) for alias, t in signature.outputs.items()},
                method_name=signature.method_name,
            )
        )
    return out


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    if spec.shape is None:
        shape = tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    else:
        Dim = tensor_shape_pb2.TensorShapeProto.Dim
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[Dim(size=-1 if d is None else d) for d in spec.shape]
        )
    return meta_graph_pb2.TensorInfo(
        name=spec.tensor_name, dtype=DTYPE_ENUM.get(spec.dtype, 0), tensor_shape=shape
    )


def status_proto(error_code: str = "OK", message: str = "") -> status_pb2.StatusProto:
    """A StatusProto; ``error_code`` is an ErrorKind (or "OK") name."""
    code = _CODE.values_by_name.get(error_code) or _CODE.values_by_name["UNKNOWN"]
    return status_pb2.StatusProto(error_code=code.number, error_message=message)


def status_response(
    statuses: Sequence[VersionStatus],
) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse: each version's state and load status, as TF Serving answers."""
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=[
            get_model_status_pb2.ModelVersionStatus(
                version=s.version,
                state=_STATE.Value(s.state),
                status=status_proto(s.error_code, s.error_message),
            )
            for s in statuses
        ]
    )
