"""What every part of the benchmark agrees on: paths, cores, protocols, models, logging."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DOC = ROOT / "docs" / "benchmarks.md"
DOC_START, DOC_END = "<!-- results:start -->", "<!-- results:end -->"
SERVER_CORE, LOAD_CORE = 0, 1
PROTOCOLS = ("rest", "v2", "grpc")
PROTOCOL_NAMES = {"rest": "REST JSON", "v2": "V2 binary", "grpc": "gRPC Predict"}
MODELS = ("mlp", "tiny")
CONNECTIONS = 32
DISTURBED = 0.25  # share of the server's core other processes may take before a re-measure


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]  # the demo binary model's input, two rows


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def binary_predict_request() -> Any:
    """A TF Serving PredictRequest of ``ROWS`` for the demo ``binary`` model (imported here,
    so only the client processes that send it load the protos)."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "binary"
    x = request.inputs["x"]
    x.dtype = 1  # DT_FLOAT
    x.tensor_shape.dim.add(size=len(ROWS))
    x.tensor_shape.dim.add(size=len(ROWS[0]))
    x.float_val.extend(v for row in ROWS for v in row)
    return request
