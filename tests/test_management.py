"""Model management end to end on real servers and SavedModels: load and unload through V2
REST and V2 gRPC, reload through TF Serving's HandleReloadConfigRequest; the switch and the
admin token on each; models found by name in the configured repositories; names refused; and
what a version costs in the repository index and the model status."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2
from tritonclient.utils import InferenceServerException

from tfmux.config import ModelConfig, ServerConfig
from tfmux.demo import import_tensorflow, write_version

from .harness import BackgroundServer

pytestmark = pytest.mark.tf

TOKEN = "s3cret-token"
BEARER = f"Bearer {TOKEN}"
HEAVY_BYTES = 16 * 2**20  # the weights of model "heavy"
ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]


def build_heavy(path: Path) -> None:
    """TF2: ``x`` float32 [None] -> ``y`` = x + 1, holding HEAVY_BYTES of weights."""
    tf = import_tensorflow()
    module = tf.Module()
    module.w = tf.Variable(tf.ones([HEAVY_BYTES // 4]), name="w")
    module.serve = tf.function(
        lambda x: {"y": x + module.w[0]},
        input_signature=[tf.TensorSpec([None], tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def heavy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heavy")
    write_version(root / "heavy", 1, build_heavy)
    return root


def server_config(model_root: Path, *repositories: Path, **settings: Any) -> ServerConfig:
    """Serves ``binary``; every folder of ``model_root`` (and ``repositories``) is loadable."""
    return ServerConfig(
        models=[ModelConfig(name="binary", base_path=model_root / "binary")],
        model_repositories=[model_root, *repositories],
        **settings,
    )


@pytest.fixture(scope="module")
def open_server(model_root: Path, heavy_root: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(server_config(model_root, heavy_root)) as server:
        yield server


@pytest.fixture(scope="module")
def guarded_server(model_root: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(server_config(model_root, admin_token=TOKEN)) as server:
        yield server


@pytest.fixture(scope="module")
def closed_server(model_root: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(server_config(model_root, management=False)) as server:
        yield server


def rest(server: BackgroundServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


def grpc_target(server: BackgroundServer) -> str:
    return f"127.0.0.1:{server.server.grpc_port}"


def predicts(http: httpx.Client, name: str = "binary") -> bool:
    return http.post(f"/v1/models/{name}:predict", json={"instances": ROWS}).status_code == 200


def index(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.post("/v2/repository/index")
    assert response.status_code == 200
    return {entry["name"]: entry for entry in response.json()}


def control(name: str, action: str) -> str:
    return f"/v2/repository/models/{name}/{action}"


def triton_status(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """The status and message of the error ``call(*args, **kwargs)`` must raise."""
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return str(info.value.status()), str(info.value.message())


def grpc_code(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


# -- the admin token ---------------------------------------------------------------------------


def test_rest_management_needs_the_token(guarded_server) -> None:
    with rest(guarded_server) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for action in ("unload", "load"):
                r = http.post(control("binary", action), headers=headers)
                assert r.status_code == 401, r.text
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "Authorization: Bearer" in r.json()["error"]
            assert predicts(http)
        assert index(http)["binary"]["state"] == "READY"  # reading needs no token
        assert http.post(control("binary", "unload"), headers={"Authorization": BEARER}).is_success
        assert index(http)["binary"]["state"] == "UNAVAILABLE"
        assert http.post(control("binary", "load"), headers={"Authorization": BEARER}).is_success
        assert predicts(http)
    with triton_http.InferenceServerClient(guarded_server.url.removeprefix("http://")) as client:
        assert triton_status(client.unload_model, "binary")[0] == "401"
        client.unload_model("binary", headers={"Authorization": BEARER})
        assert not client.is_model_ready("binary")
        client.load_model("binary", headers={"Authorization": BEARER})
        assert client.is_model_ready("binary")


def test_v2_grpc_management_needs_the_token(guarded_server) -> None:
    with triton.InferenceServerClient(grpc_target(guarded_server)) as client:
        for headers in (None, {"authorization": "Bearer wrong"}):
            for call in (client.unload_model, client.load_model):
                status, message = triton_status(call, "binary", headers=headers)
                assert status == "StatusCode.UNAUTHENTICATED" and "Bearer" in message
            assert client.is_model_ready("binary")
        good = {"authorization": BEARER}
        client.unload_model("binary", headers=good)
        assert not client.is_model_ready("binary")
        client.load_model("binary", headers=good)
        x = triton.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.array(ROWS[:1], np.float32))
        assert client.infer("binary", [x]).as_numpy("probability").shape == (1, 1)


def reload_request(model_root: Path, *names: str) -> model_management_pb2.ReloadConfigRequest:
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(
            name=name, base_path=str(model_root / name), model_platform="tensorflow"
        )
    return model_management_pb2.ReloadConfigRequest(config=config)


def test_reload_config_needs_the_token(guarded_server, model_root) -> None:
    request = reload_request(model_root, "binary", "regression")
    with (
        grpc.insecure_channel(grpc_target(guarded_server)) as channel,
        rest(guarded_server) as http,
    ):
        reload = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            code, details = grpc_code(reload, request, metadata=metadata, timeout=120)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
            assert "regression" not in index(http) and predicts(http)
        good = (("authorization", BEARER),)
        assert reload(request, metadata=good, timeout=120).status.error_code == 0
        assert predicts(http, "regression")
        assert reload(reload_request(model_root, "binary"), metadata=good, timeout=120)
        assert set(index(http)) == {"binary"} and predicts(http)


# -- the switch --------------------------------------------------------------------------------


def test_everything_is_refused_when_management_is_disabled(closed_server, model_root) -> None:
    with rest(closed_server) as http:
        for path in (control("binary", "unload"), control("regression", "load")):
            for headers in ({}, {"Authorization": BEARER}):
                r = http.post(path, headers=headers)
                assert r.status_code == 403 and "--no-management" in r.json()["error"]
        assert index(http)["binary"]["state"] == "READY" and predicts(http)
    with triton.InferenceServerClient(grpc_target(closed_server)) as client:
        for call in (client.unload_model, client.load_model):
            status, message = triton_status(call, "binary")
            assert status == "StatusCode.PERMISSION_DENIED" and "disabled" in message
        assert client.is_model_ready("binary")
    with grpc.insecure_channel(grpc_target(closed_server)) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        for request in (model_management_pb2.ReloadConfigRequest(), reload_request(model_root)):
            code, _ = grpc_code(models.HandleReloadConfigRequest, request, timeout=60)
            assert code == grpc.StatusCode.PERMISSION_DENIED
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "binary"
        assert models.GetModelStatus(status, timeout=60).model_version_status


# -- what may be loaded ------------------------------------------------------------------------


def test_a_repository_folder_is_loaded_by_name(open_server) -> None:
    with rest(open_server) as http:
        assert "regression" not in index(http)
        assert http.post(control("regression", "load")).status_code == 200
        assert index(http)["regression"]["state"] == "READY" and predicts(http, "regression")
    with triton.InferenceServerClient(grpc_target(open_server)) as client:
        client.load_model("twin_a")
        assert client.is_model_ready("twin_a")


def test_a_repository_folder_that_fails_to_load(open_server) -> None:
    with rest(open_server) as http:
        r = http.post(control("corrupt", "load"))
        assert r.status_code == 400 and "failed to load model corrupt" in r.json()["error"]
        assert index(http)["corrupt"]["state"] == "UNAVAILABLE" and predicts(http)
    with triton.InferenceServerClient(grpc_target(open_server)) as client:
        status, message = triton_status(client.load_model, "corrupt")
        assert status == "StatusCode.INVALID_ARGUMENT" and "corrupt" in message
        client.load_model("binary")


def test_names_that_are_not_model_names_are_refused(open_server) -> None:
    with triton.InferenceServerClient(grpc_target(open_server)) as client:
        for name in ("../x", "a/b", "..", ".hidden", "/etc", "x y"):
            status, message = triton_status(client.load_model, name)
            assert status == "StatusCode.INVALID_ARGUMENT" and "must match" in message, name
        client.load_model("binary")
    with rest(open_server) as http:
        before = set(index(http))
        for raw in ("%2E%2E", ".hidden", "x%20y"):
            r = http.post(control(raw, "load"))
            assert r.status_code == 400 and "must match" in r.json()["error"], raw
        for raw in ("..%2Fx", "a%2Fb"):  # a slash leaves the load path: no such endpoint
            assert http.post(control(raw, "load")).status_code == 404
        assert set(index(http)) == before and predicts(http)


def test_a_name_in_no_repository_is_not_found(open_server) -> None:
    with rest(open_server) as http:
        r = http.post(control("nope", "load"))
        assert r.status_code == 404 and "not in any repository" in r.json()["error"]
        assert http.post(control("nope", "unload")).status_code == 404
        assert predicts(http)
    with triton.InferenceServerClient(grpc_target(open_server)) as client:
        for call in (client.load_model, client.unload_model):
            assert triton_status(call, "nope")[0] == "StatusCode.NOT_FOUND"
        client.load_model("binary")


# -- memory ------------------------------------------------------------------------------------


def test_memory_appears_in_the_index_not_the_tf_serving_status(open_server) -> None:
    with rest(open_server) as http:
        assert http.post(control("heavy", "load")).status_code == 200  # the only load running
        entry = index(http)["heavy"]
        # measured as an RSS delta: in this shared test process the allocator may reuse memory
        # other tests freed, so only the real-server test (test_memory.py) checks the size
        assert entry["memory_bytes"] > 0 and isinstance(entry["memory_measured"], bool)
        (status,) = http.get("/v1/models/heavy").json()["model_version_status"]
        assert set(status) == {"version", "state", "status"}  # TF Serving's fields only
        assert http.post(control("heavy", "unload")).status_code == 200
        assert "memory_bytes" not in index(http)["heavy"]
        assert http.post(control("heavy", "load")).status_code == 200
        assert index(http)["heavy"]["memory_bytes"] > 0
