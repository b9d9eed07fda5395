"""tfmux's own front ends answering without a model: the ceiling of its HTTP and gRPC stacks.

REST: tfmux's ``RestApp`` under the same uvicorn settings as ``TfmuxServer`` (httptools, uvloop,
access log off, proxy headers off, the same listening socket), with routes that read the body
with tfmux's codecs (``tfs_json.parse_predict`` for /v1, ``v2_json.parse_infer`` for /v2) and
answer a fixed body shaped like the model's real answer. gRPC: ``start_grpc_server`` (tfmux's
options) with a ``Predict`` that decodes each input with ``tensor_proto.to_array`` and answers a
fixed ``PredictResponse``. Nothing calls a model.

    python -m benchmarks.nomodel_server --http-port P --grpc-port G
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import numpy as np
import orjson
import uvicorn

from benchmarks.models import OUTPUTS
from tfmux.transports import tfs_json, v2_json
from tfmux.transports.rest import Handler, Request, Response, RestApp

WIDTH = {"mlp": 10, "tiny": 1}  # values per row of each model's output


def _fixed_rest(model: str) -> bytes:
    return orjson.dumps({"predictions": [[0.5] * WIDTH.get(model, 1)]})


def _fixed_v2(model: str) -> tuple[bytes, int]:
    values = np.full((1, WIDTH.get(model, 1)), 0.5, dtype="<f4")
    header = orjson.dumps(
        {
            "model_name": model,
            "model_version": "1",
            "outputs": [
                {
                    "name": OUTPUTS.get(model, "y"),
                    "datatype": "FP32",
                    "shape": list(values.shape),
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
        }
    )
    return header + values.tobytes(), len(header)


def route(method: str, path: str) -> Handler | None:
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        answer = _fixed_rest(path[len("/v1/models/") : -len(":predict")])

        async def predict(request: Request) -> Response:
            tfs_json.parse_predict(request.body)
            return Response(body=answer)

        return predict
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        body, length = _fixed_v2(path[len("/v2/models/") : -len("/infer")])
        header = (v2_json.HEADER_LENGTH.lower().encode(), str(length).encode())

        async def infer(request: Request) -> Response:
            v2_json.parse_infer(request.body, request.headers.get(header[0]))
            return Response(body=body, content_type=b"application/octet-stream", headers=[header])

        return infer
    if path == "/ready":

        async def ready(request: Request) -> Response:
            return Response(body=b"{}")

        return ready
    return None


def grpc_registrar() -> Any:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfmux.transports.tensor_proto import to_array, write_tensor_proto

    answers = {}
    for model, width in WIDTH.items():
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model
        write_tensor_proto(
            response.outputs[OUTPUTS[model]],
            OUTPUTS[model],
            np.full((1, width), 0.5, dtype=np.float32),
        )
        answers[model] = response

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
        async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            for alias, tensor in request.inputs.items():
                to_array(alias, tensor)
            return answers.get(request.model_spec.name, predict_pb2.PredictResponse())

    def register(server: grpc.aio.Server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)

    return register


def _bind(port: int) -> socket.socket:
    """The listening socket as ``tfmux.server`` makes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(http_port: int, grpc_port: int) -> None:
    from tfmux.transports.grpc_server import start_grpc_server

    app = RestApp([route], 64 * 1024 * 1024)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            http="httptools",
            proxy_headers=False,  # as TfmuxServer runs uvicorn
            timeout_graceful_shutdown=30,
        )
    )
    grpc_server, _ = await start_grpc_server(
        "127.0.0.1", grpc_port, 256 * 1024 * 1024, [grpc_registrar()]
    )
    try:
        await server.serve(sockets=[_bind(http_port)])
    finally:
        await grpc_server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="tfmux's front ends without a model.")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.http_port, args.grpc_port))


if __name__ == "__main__":
    main()
