"""The server settings TF Serving's command line needed, in process with fake models (fast):
either port off, gRPC on a Unix socket (both gRPC implementations), one more metrics path, and
a polled models.config."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from tests.fakes import FakeLoader, make_repository, model_config, wait_until
from tests.harness import BackgroundServer
from tfmux.config import ServerConfig, load_tfs_config


def status_over(target: str, name: str) -> get_model_status_pb2.GetModelStatusResponse:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.GetModelStatus(request, timeout=30)


@pytest.mark.parametrize("implementation", ["tfmux", "grpcio"])
def test_grpc_on_a_unix_socket_only_without_rest(tmp_path: Path, implementation: str) -> None:
    make_repository(tmp_path, {"m": [1]})
    sock = tmp_path / "g.sock"
    config = ServerConfig(
        models=[model_config("m", tmp_path / "m")],
        http_enabled=False,
        grpc_tcp_enabled=False,
        grpc_socket_path=sock,
        grpc_implementation=implementation,
    )
    with BackgroundServer(config, loader=FakeLoader()) as background:
        assert background.server.http_port is None  # no REST port
        assert background.server.grpc_port is None  # no TCP gRPC port
        (version,) = status_over(f"unix:{sock}", "m").model_version_status
        assert (version.version, version.state) == (
            1,
            get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        )
    assert not sock.exists()  # removed when the server stopped


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    import socket

    make_repository(tmp_path, {"m": [1]})
    path = tmp_path / "g.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file nobody listens on, as a killed server leaves
    stale.close()
    config = ServerConfig(models=[model_config("m", tmp_path / "m")], grpc_socket_path=path)
    with BackgroundServer(config, loader=FakeLoader()) as background:
        assert status_over(f"unix:{path}", "m").model_version_status
        assert status_over(f"127.0.0.1:{background.server.grpc_port}", "m").model_version_status


def test_metrics_on_the_monitoring_path_too(tmp_path: Path) -> None:
    make_repository(tmp_path, {"m": [1]})
    config = ServerConfig(models=[model_config("m", tmp_path / "m")], metrics_path="/tfs/metrics")
    with BackgroundServer(config, loader=FakeLoader()) as background:
        for path in ("/tfs/metrics", "/metrics", "/monitoring/prometheus/metrics"):
            r = httpx.get(background.url + path)
            assert r.status_code == 200 and "# TYPE" in r.text
        assert httpx.get(background.url + "/tfs/other").status_code == 404


def models_config(root: Path, *names: str) -> str:
    entries = "".join(f'config {{ name: "{n}" base_path: "{root / n}" }} ' for n in names)
    return f"model_config_list {{ {entries}}}"


def test_a_polled_models_config_is_served_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_repository(tmp_path, {"a": [1], "b": [1]})
    path = tmp_path / "models.config"
    path.write_text(models_config(tmp_path, "a"))
    config = ServerConfig(
        models=load_tfs_config(path, "eager"),
        model_config_file=path,
        model_config_poll_seconds=0.05,
    )
    loader = FakeLoader()
    with BackgroundServer(config, loader=loader) as background:
        manager = background.server.manager

        def served() -> set[str]:
            return {m.config.name for m in manager.models()}

        path.write_text(models_config(tmp_path, "a", "b"))
        wait_until(lambda: served() == {"a", "b"}, "model b to be added")
        wait_until(lambda: manager.statuses("b")[0].state == "AVAILABLE", "b to load")
        loads = sum(loader.loads.values())
        path.write_text("not a models.config")  # logged; nothing changes
        wait_until(lambda: "Failed to read ModelServerConfig file" in caplog.text, "the error")
        assert served() == {"a", "b"}
        path.write_text(models_config(tmp_path, "b"))
        wait_until(lambda: served() == {"b"}, "model a to be removed")
        assert sum(loader.loads.values()) == loads  # b, unchanged, was not reloaded
        r = httpx.get(background.url + "/v1/models/b")
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
