"""Test material for versions and warmup: a model that counts its calls, warmup files written
with TensorFlow's own TFRecordWriter, and version directories that appear atomically or half.

Builders import TensorFlow only when called.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tfmux.demo import import_tensorflow, write_version

WARMUP_FILE = Path("assets.extra", "tf_serving_warmup_requests")


def counting(root: Path, name: str = "counting", versions: Sequence[int] = (1, 2)) -> Path:
    """TF2, one directory per version: ``x`` float32 [None] -> ``y`` = x * version and
    ``calls`` int64 [None], how many calls the loaded model has run, this one included."""
    base = Path(root) / name
    for version in versions:
        write_version(base, version, lambda path, v=version: _build_counting(path, float(v)))
    return base


def _build_counting(path: Path, factor: float) -> None:
    tf = import_tensorflow()

    class Counting(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.calls = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            calls = self.calls.assign_add(1)
            return {"y": x * factor, "calls": tf.fill(tf.shape(x), calls)}

    module = Counting()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def install(source: Path, base: Path, version: int) -> Path:
    """Copy version ``version`` of the model at ``source`` into ``base``; the directory
    appears at once (copied to a hidden folder, then renamed), as a careful deployer does."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".{version}-copying"
    shutil.copytree(source / str(version), staging)
    target = base / str(version)
    staging.rename(target)
    return target


def write_warmup(version_dir: Path, records: Sequence[bytes]) -> Path:
    """Write ``assets.extra/tf_serving_warmup_requests`` with TensorFlow's TFRecordWriter."""
    tf = import_tensorflow()
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def predict_record(signature: str = "", **inputs: np.ndarray) -> bytes:
    """A serialized PredictionLog holding a PredictRequest of ``inputs``."""
    tf = import_tensorflow()
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return log.SerializeToString()


def examples_input(rows: Sequence[Sequence[float]], feature: str = "x") -> Any:
    """An ``Input`` of tf.Examples with one float feature per row."""
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow_serving.apis import input_pb2

    examples = [
        example_pb2.Example(
            features=feature_pb2.Features(
                feature={feature: feature_pb2.Feature(float_list=feature_pb2.FloatList(value=r))}
            )
        )
        for r in rows
    ]
    return input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples))


def predict(client: httpx.Client, name: str, x: float = 1.0) -> dict[str, Any]:
    """One TF Serving REST predict of ``[x]``; its one row of outputs (fails unless 200)."""
    response = client.post(f"/v1/models/{name}:predict", json={"instances": [x]})
    assert response.status_code == 200, response.text
    row: dict[str, Any] = response.json()["predictions"][0]
    return row


def statuses(client: httpx.Client, name: str) -> dict[int, tuple[str, str, str]]:
    """Version -> (state, error code, error message) from TF Serving's REST model status."""
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == 200, response.text
    return {
        int(s["version"]): (s["state"], s["status"]["error_code"], s["status"]["error_message"])
        for s in response.json()["model_version_status"]
    }
