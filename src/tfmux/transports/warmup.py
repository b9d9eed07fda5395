"""Warmup: requests run on a freshly loaded version before it becomes AVAILABLE.

TF Serving's convention: ``<version>/assets.extra/tf_serving_warmup_requests`` is a TFRecord
file of ``PredictionLog`` protos. Each record's request (predict, classify, regress or
multi-inference; the ModelSpec's name and version are ignored, its signature is used) runs
once, in file order, on the loaded model. As in TF Serving, the file holds at most 1000
records, and a record that cannot be read or fails fails the load, with an error naming the
record and keeping the failure's kind.

Without the file, a model configured with ``warmup: synthetic`` gets one batch-1 call per
signature, built from the signature (zeros, empty strings). Those inputs are invented, not the
model author's, so this is best effort: signatures whose shapes are unknown beyond the batch
dimension are skipped, and a call that fails is logged, never fatal.

Runs in the load thread. Imports TensorFlow and TF Serving's protos (the records are TF
Serving requests, decoded with the same helpers as the gRPC front end).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from tfmux.core.runtime import LoadedModel
from tfmux.core.validation import validate_inputs
from tfmux.errors import ErrorKind, ServingError, invalid_argument, unimplemented
from tfmux.runtimes.savedmodel import find_signature, model_failure
from tfmux.transports import tfs_protos
from tfmux.transports.tensor_proto import to_array
from tfmux.types import CLASSIFY_METHOD, REGRESS_METHOD, Shape, SignatureSpec, numpy_dtype

log = logging.getLogger("tfmux.warmup")

WARMUP_FILE = Path("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving's limit; a longer file fails the load
# The parts of a tf.data error that locate the failing op rather than describe the problem.
_OP_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\].*$", re.S)


@dataclass(frozen=True)
class WarmupReport:
    """What a warmup ran: ``source`` is the warmup file or ``synthetic``."""

    source: str
    requests: int
    seconds: float


def warm_up(model: LoadedModel, path: Path, name: str, synthetic: bool) -> WarmupReport | None:
    """Warm up ``model``, loaded from the version directory ``path``; logs what ran.

    Replays the warmup file when there is one, else runs the synthetic warmup when asked.
    Returns None when nothing ran. Raises ServingError when a warmup record fails; the caller
    owns ``model`` and closes it. ``name`` names the model in the log.
    """
    started = time.perf_counter()
    file = path / WARMUP_FILE
    if file.exists():
        source, requests = str(file), replay(model, file)
    elif synthetic:
        source, requests = "synthetic", run_synthetic(model, name)
    else:
        return None
    report = WarmupReport(source, requests, time.perf_counter() - started)
    log.info(
        "warmed up model %s (%s) with %d request(s) from %s in %.1f ms",
        name,
        path,
        requests,
        source,
        report.seconds * 1000,
    )
    return report


def replay(model: LoadedModel, file: Path) -> int:
    """Run every record of a warmup file on ``model``; returns the number of records."""
    count = 0
    for index, record in enumerate(read_records(file), start=1):
        if index > MAX_RECORDS:
            raise invalid_argument(
                f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {file}"
            )
        prediction_log = prediction_log_pb2.PredictionLog()
        try:
            prediction_log.ParseFromString(record)
        except DecodeError:
            raise invalid_argument(f"Failed to parse warmup record {index} from {file}") from None
        kind = prediction_log.WhichOneof("log_type")
        try:
            run_record(model, prediction_log)
        except Exception as exc:
            error = _as_serving_error(exc)
            raise ServingError(
                error.kind, f"Warmup record {index} ({kind}) from {file} failed: {error.message}"
            ) from exc
        count += 1
    return count


def read_records(file: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (CRC-checked); INVALID_ARGUMENT when it is corrupt."""
    records = iter(tf.data.TFRecordDataset(str(file)))
    for index in itertools.count(1):
        try:
            record = next(records)
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            detail = _OP_NOISE.sub("", exc.message).strip()
            raise invalid_argument(
                f"Cannot read record {index} of warmup file {file}: {detail}. "
                "Please verify your warmup data is in TFRecord format."
            ) from None
        yield record.numpy()


def run_record(model: LoadedModel, record: prediction_log_pb2.PredictionLog) -> None:
    """Run the request a PredictionLog holds, checking it as a real request would be."""
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        _predict(model, record.predict_log.request)
    elif kind == "classify_log":
        request = record.classify_log.request
        _examples(model, request.model_spec, request.input, CLASSIFY_METHOD)
    elif kind == "regress_log":
        request = record.regress_log.request
        _examples(model, request.model_spec, request.input, REGRESS_METHOD)
    elif kind == "multi_inference_log":
        request = record.multi_inference_log.request
        for task in request.tasks:
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
            _examples(model, task.model_spec, request.input, task.method_name)
    elif kind is not None:
        raise unimplemented(f"Unsupported log_type for warmup: {kind}")


def _predict(model: LoadedModel, request: Any) -> None:
    spec = find_signature(model.signatures, tfs_protos.signature_name(request.model_spec))
    inputs = {alias: to_array(alias, proto) for alias, proto in request.inputs.items()}
    model.run(spec.name, validate_inputs(spec, inputs), list(request.output_filter) or None)


def _examples(model: LoadedModel, model_spec: Any, request_input: Any, method: str) -> None:
    spec = find_signature(model.signatures, tfs_protos.signature_name(model_spec))
    if spec.method_name != method:
        raise invalid_argument(
            f"signature '{spec.name}' has method {spec.method_name}, but this request needs "
            f"{method}"
        )
    examples = tfs_protos.serialized_examples(request_input)
    inputs = validate_inputs(spec, {tfs_protos.only_input(spec): examples})
    outputs = model.run(spec.name, inputs)
    if method == CLASSIFY_METHOD:
        tfs_protos.classification_result(outputs, len(examples))
    else:
        tfs_protos.regression_result(outputs, len(examples))


def run_synthetic(model: LoadedModel, name: str) -> int:
    """One batch-1 call per signature with zeros / empty strings; returns the calls that ran.

    Skips signatures whose inputs cannot be synthesized; logs and ignores calls that fail.
    """
    count = 0
    for spec in model.signatures.values():
        inputs = synthetic_inputs(spec)
        if inputs is None:
            log.info(
                "synthetic warmup of model %s skips signature %r: input shapes are not known",
                name,
                spec.name,
            )
            continue
        try:
            model.run(spec.name, inputs)
        except Exception as exc:
            log.warning(
                "synthetic warmup of model %s: signature %r failed (ignored): %s",
                name,
                spec.name,
                _as_serving_error(exc).message,
            )
            continue
        count += 1
    return count


def synthetic_inputs(spec: SignatureSpec) -> dict[str, np.ndarray] | None:
    """Batch-1 zeros (empty strings for string inputs) for every input of ``spec``; None when
    an input's rank, or a dimension other than the first, is unknown."""
    inputs = {}
    for alias, tensor in spec.inputs.items():
        shape = _synthetic_shape(tensor.shape)
        if shape is None:
            return None
        if tensor.dtype == "string":
            inputs[alias] = np.full(shape, b"", dtype=object)
        else:
            inputs[alias] = np.zeros(shape, dtype=numpy_dtype(tensor.dtype))
    return inputs


def _synthetic_shape(shape: Shape | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if not shape:
        return ()
    first, *rest = shape
    dims = [d for d in rest if d is not None]
    if len(dims) != len(rest):
        return None
    return (1 if first is None else first, *dims)


def _as_serving_error(exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        return model_failure(exc)
    return ServingError(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")
