"""One answer whichever door: the same inputs give identical outputs (values and dtypes)
through TF Serving REST, TF Serving gRPC, KServe V2 REST (JSON and binary) and KServe V2 gRPC."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfmux.types import numpy_dtype

from .harness import BackgroundServer

pytestmark = pytest.mark.tf

Tensors = dict[str, np.ndarray]
CASES: dict[str, Tensors] = {
    "binary": {"x": np.array([[1.0, 2.0, 3.0], [0.1, -0.2, 0.3]], np.float32)},
    "regression": {"x": np.array([[1.5, -2.0, 0.25]], np.float32)},
    "multi": {
        "a": np.array([[1.5, 2.25], [-3.0, 0.1]], np.float32),
        "b": np.array([7, -9], np.int64),
        "s": np.array([b"hello", "grüße".encode()], object),
    },
}
DATATYPE = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "object": "BYTES"}


def output_dtypes(server: BackgroundServer, model: str) -> dict[str, str]:
    meta = httpx.get(f"{server.url}/v1/models/{model}/metadata").json()
    outputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    tf_names = {"DT_FLOAT": "float32", "DT_INT64": "int64", "DT_INT32": "int32"}
    return {name: tf_names.get(o["dtype"], "string") for name, o in outputs.items()}


def tfs_rest(server: BackgroundServer, model: str, inputs: Tensors) -> Tensors:
    body = {"inputs": {k: _jsonable(v) for k, v in inputs.items()}}
    r = httpx.post(f"{server.url}/v1/models/{model}:predict", content=json.dumps(body))
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    dtypes = output_dtypes(server, model)
    if not isinstance(outputs, dict):
        outputs = {next(iter(dtypes)): outputs}
    return {k: _typed(v, dtypes[k]) for k, v in outputs.items()}


def tfs_grpc(server: BackgroundServer, model: str, inputs: Tensors) -> Tensors:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(f"127.0.0.1:{server.server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def v2_rest(binary: bool) -> Callable[[BackgroundServer, str, Tensors], Tensors]:
    def infer(server: BackgroundServer, model: str, inputs: Tensors) -> Tensors:
        with triton_http.InferenceServerClient(server.url.removeprefix("http://")) as client:
            return _triton_infer(client, triton_http, model, inputs, binary)

    return infer


def v2_grpc(server: BackgroundServer, model: str, inputs: Tensors) -> Tensors:
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        return _triton_infer(client, triton_grpc, model, inputs, None)


def _triton_infer(client, module, model: str, inputs: Tensors, binary: bool | None) -> Tensors:
    items = []
    for name, value in inputs.items():
        item = module.InferInput(name, list(value.shape), DATATYPE[str(value.dtype)])
        if binary is None:
            item.set_data_from_numpy(value)
        else:
            item.set_data_from_numpy(value, binary_data=binary)
        items.append(item)
    meta = client.get_model_metadata(model)
    names = (
        [o["name"] for o in meta["outputs"]]
        if isinstance(meta, dict)
        else [o.name for o in meta.outputs]
    )
    if binary is None:
        wanted = [module.InferRequestedOutput(n) for n in names]
    else:
        wanted = [module.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client.infer(model, items, outputs=wanted)
    return {n: result.as_numpy(n) for n in names}


def _jsonable(value: np.ndarray) -> object:
    if value.dtype == object:
        return [v.decode() for v in value.tolist()]
    return value.tolist()


def _typed(value: object, dtype: str) -> np.ndarray:
    if dtype == "string":
        return np.array([v.encode() for v in value], object)  # type: ignore[attr-defined]
    return np.array(value, numpy_dtype(dtype))


DOORS = {
    "tfs_grpc": tfs_grpc,
    "v2_rest_json": v2_rest(False),
    "v2_rest_binary": v2_rest(True),
    "v2_grpc": v2_grpc,
}


@pytest.mark.parametrize("model", sorted(CASES))
@pytest.mark.parametrize("door", sorted(DOORS))
def test_every_door_gives_the_same_answer(e2e_server, model: str, door: str) -> None:
    inputs = CASES[model]
    reference = tfs_rest(e2e_server, model, inputs)
    got = DOORS[door](e2e_server, model, inputs)
    assert sorted(got) == sorted(reference)
    for name, want in reference.items():
        have = np.asarray(got[name])
        if want.dtype == object:
            # tritonclient gives JSON BYTES back as text, binary ones as bytes
            texts = [v.encode() if isinstance(v, str) else bytes(v) for v in have.reshape(-1)]
            assert texts == list(want.reshape(-1)), name
        else:
            assert have.dtype == want.dtype, (name, have.dtype, want.dtype)
            np.testing.assert_array_equal(have, want, err_msg=name)
