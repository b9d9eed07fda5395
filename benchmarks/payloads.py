"""Request bodies of the benchmark, one row each, written once and sent by every generator.

* REST JSON (TF Serving): ``{"instances": [[...]]}`` to ``/v1/models/NAME:predict``.
* V2 binary: the JSON header, then the row's float32 bytes, with ``Inference-Header-Content-Length``
  and the outputs asked back as binary, to ``/v2/models/NAME/infer``.
* gRPC Predict: one length-prefixed ``PredictRequest`` (the gRPC message framing), to
  ``/tensorflow.serving.PredictionService/Predict``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from benchmarks.models import sample_row

GRPC_PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
V2_HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Payload:
    """One request: where it goes, its body file and its extra headers."""

    path: str
    body_file: Path
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return self.body_file.read_bytes()


def rest_body(model: str) -> bytes:
    return orjson.dumps({"instances": [sample_row(model)]})


def v2_binary_body(model: str) -> tuple[bytes, int]:
    """(body, JSON header length): one FP32 input sent as binary, outputs asked as binary."""
    row = np.asarray([sample_row(model)], dtype="<f4")
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(row.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": row.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + row.tobytes(), len(header)


def grpc_predict_message(model: str) -> bytes:
    """A serialized tensorflow.serving.PredictRequest (tensor_content, as clients send it)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    row = np.asarray([sample_row(model)], dtype="<f4")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in row.shape]
            ),
            tensor_content=row.tobytes(),
        )
    )
    return bytes(request.SerializeToString())


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def write_payloads(directory: Path, model: str) -> dict[str, Payload]:
    """Write the three bodies for ``model``; keyed by protocol (rest, v2, grpc)."""
    directory.mkdir(parents=True, exist_ok=True)
    rest = directory / f"{model}.rest.json"
    rest.write_bytes(rest_body(model))
    v2 = directory / f"{model}.v2.bin"
    body, header_length = v2_binary_body(model)
    v2.write_bytes(body)
    grpc = directory / f"{model}.grpc.bin"
    grpc.write_bytes(grpc_frame(grpc_predict_message(model)))
    return {
        "rest": Payload(f"/v1/models/{model}:predict", rest, {"Content-Type": "application/json"}),
        "v2": Payload(
            f"/v2/models/{model}/infer",
            v2,
            {"Content-Type": "application/octet-stream", V2_HEADER_LENGTH: str(header_length)},
        ),
        "grpc": Payload(
            GRPC_PREDICT_PATH, grpc, {"content-type": "application/grpc", "te": "trailers"}
        ),
    }
