"""What classify and regress signatures return, checked once for both TF Serving doors (REST
JSON and gRPC), with TF Serving's wording."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tfmux.errors import failed_precondition, invalid_argument
from tfmux.types import CLASSIFY_METHOD, DTYPE_TO_TF, SignatureSpec, dtype_name

_INPUTS, _CLASSES, _SCORES, _OUTPUTS = "inputs", "classes", "scores", "outputs"


def examples_input(signature: SignatureSpec, method_name: str) -> str:
    """The input (serialized tf.Examples) of a classify or regress call on ``signature``.

    TF Serving's rule (``PreProcessClassification`` / ``PreProcessRegression``, with its
    default of no method-name check): the signature's method is not looked at, so TF2
    signatures, all exported with the predict method, classify and regress; what counts is
    one input named ``inputs`` and, to classify, one or two outputs among ``classes`` and
    ``scores``, to regress, one output named ``outputs``.
    """
    classify = method_name == CLASSIFY_METHOD
    kind = "classification" if classify else "regression"
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    outputs = signature.outputs
    if classify and len(outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(outputs)}")
    if not classify and len(outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if _INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No {kind} inputs found in SignatureDef '{signature.name}' (it has "
            f"{', '.join(signature.inputs)}; a {kind} signature has one input '{_INPUTS}')"
        )
    if classify and _CLASSES not in outputs and _SCORES not in outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" '
            f"or \"scores\". Signature '{signature.name}' has {', '.join(outputs)}"
        )
    if not classify and _OUTPUTS not in outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef '{signature.name}' (it has "
            f"{', '.join(outputs)}; a regression signature has one output '{_OUTPUTS}')"
        )
    return _INPUTS


def classifications(
    outputs: Mapping[str, np.ndarray], num_examples: int | None = None
) -> tuple[list[list[str]], np.ndarray]:
    """(labels, float32 scores), both [batch, num_classes], from ``classes`` ([N, C] strings)
    and/or ``scores`` ([N, C] floats). A missing one gives empty labels or zero scores, as the
    empty fields of TF Serving's Class proto. ``num_examples``, when known, must be N."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise failed_precondition(
            'Expected classification signature outputs to contain at least one of "classes" '
            'or "scores"'
        )
    _check("classes", classes, "OSU", "DT_STRING", num_examples)
    _check("scores", scores, "f", "DT_FLOAT", num_examples)
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid_argument(
            f"Tensors class and score should match in shape. Got {list(classes.shape)} vs. "
            f"{list(scores.shape)}"
        )
    shape = classes.shape if classes is not None else scores.shape  # type: ignore[union-attr]
    labels = (
        [[_label(c) for c in row] for row in classes]
        if classes is not None
        else [[""] * shape[1] for _ in range(shape[0])]
    )
    values = (
        scores.astype(np.float32, copy=False) if scores is not None else np.zeros(shape, np.float32)
    )
    return labels, values


def regressions(outputs: Mapping[str, np.ndarray], num_examples: int | None = None) -> np.ndarray:
    """The float32 values ([N]) of a regress signature's ``outputs`` ([N] or [N, 1])."""
    values = outputs.get("outputs")
    if values is None:
        raise invalid_argument("Could not find output tensor 'outputs'")
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{list(values.shape)}"
        )
    if num_examples is not None and values.shape[0] != num_examples:
        raise invalid_argument(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {values.shape[0]}"
        )
    if values.dtype.kind != "f":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT. Got: {_tf_dtype(values)}")
    return values.reshape(-1).astype(np.float32, copy=False)


def _check(
    name: str, array: np.ndarray | None, kinds: str, tf_dtype: str, num_examples: int | None
) -> None:
    if array is None:
        return
    if array.ndim != 2:
        raise invalid_argument(
            f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)} "
            f"for '{name}'"
        )
    if array.dtype.kind not in kinds:
        raise invalid_argument(f"Expected {name} Tensor of {tf_dtype}. Got: {_tf_dtype(array)}")
    if num_examples is not None and array.shape[0] != num_examples:
        raise invalid_argument(
            f"Expected {name} output batch size of {num_examples}. Got: {array.shape[0]}"
        )


def _label(value: bytes | str) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def _tf_dtype(array: np.ndarray) -> str:
    return DTYPE_TO_TF.get(dtype_name(array), str(array.dtype))
