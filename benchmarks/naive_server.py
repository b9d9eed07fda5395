"""The naive baseline: how a model server is commonly written by hand.

REST (default): a Starlette app on uvicorn (default settings, access log off) whose handlers
parse the body, call the model's ``serving_default`` signature once per request in Starlette's
thread pool, and answer. It speaks the two REST shapes the benchmark sends:

* ``POST /v1/models/{name}:predict`` with ``{"instances": [...]}`` -> ``{"predictions": [...]}``
* ``POST /v2/models/{name}/infer`` with binary tensor data -> binary outputs

``--grpc``: a synchronous ``grpc.server`` with a thread pool whose ``Predict`` converts the
request with ``tf.make_ndarray``, calls the model and answers with ``tf.make_tensor_proto``.

    python -m benchmarks.naive_server --model-repository DIR --port P [--grpc]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

Signature = Callable[..., dict[str, Any]]
HEADER_LENGTH = "inference-header-content-length"


def load_models(repository: Path) -> dict[str, Signature]:
    """Every ``<repository>/<name>/<version>/`` (newest version), by name."""
    models = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=_version)
        if versions:
            loaded = tf.saved_model.load(str(versions[-1]))
            models[model_dir.name] = loaded.signatures["serving_default"]
    return models


def _version(path: Path) -> int:
    return int(path.name)


def call_model(signature: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def rest_app(models: dict[str, Signature]) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        signature = models.get(request.path_params["name"])
        if signature is None:
            return JSONResponse({"error": "no such model"}, status_code=404)
        body = await request.json()
        x = np.asarray(body["instances"], dtype=np.float32)
        outputs = await run_in_threadpool(call_model, signature, {"x": x})
        (values,) = outputs.values()
        return JSONResponse({"predictions": values.tolist()})

    async def infer(request: Request) -> Response:
        signature = models.get(request.path_params["name"])
        if signature is None:
            return JSONResponse({"error": "no such model"}, status_code=404)
        body = await request.body()
        header_length = int(request.headers[HEADER_LENGTH])
        header = json.loads(body[:header_length])
        inputs, offset = {}, header_length
        for spec in header["inputs"]:
            size = spec["parameters"]["binary_data_size"]
            raw = body[offset : offset + size]
            inputs[spec["name"]] = np.frombuffer(raw, dtype="<f4").reshape(spec["shape"])
            offset += size
        outputs = await run_in_threadpool(call_model, signature, inputs)
        described, chunks = [], []
        for name, value in outputs.items():
            chunk = np.ascontiguousarray(value, dtype="<f4").tobytes()
            described.append(
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(value.shape),
                    "parameters": {"binary_data_size": len(chunk)},
                }
            )
            chunks.append(chunk)
        answer = json.dumps({"model_name": request.path_params["name"], "outputs": described})
        head = answer.encode()
        return Response(
            head + b"".join(chunks),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(head))},
        )

    async def ready(request: Request) -> Response:
        return JSONResponse({"models": sorted(models)})

    return Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/ready", ready),
        ]
    )


def serve_grpc(models: dict[str, Signature], port: int, workers: int) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
        def Predict(self, request: Any, context: Any) -> Any:
            signature = models.get(request.model_spec.name)
            if signature is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "no such model")  # raises
                raise AssertionError("unreachable")
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            for name, value in call_model(signature, inputs).items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"naive gRPC server on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description="The naive per-request baseline server.")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc", action="store_true", help="serve gRPC Predict instead of REST")
    parser.add_argument("--grpc-workers", type=int, default=10)
    args = parser.parse_args()
    models = load_models(args.model_repository)
    if args.grpc:
        serve_grpc(models, args.port, args.grpc_workers)
        return
    import uvicorn

    uvicorn.run(
        rest_app(models), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
