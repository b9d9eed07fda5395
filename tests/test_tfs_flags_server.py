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
        wait_until(lambda: [s.state for s in manager.statuses("b")] == ["AVAILABLE"], "b to load")
        loads = sum(loader.loads.values())
        path.write_text("not a models.config")  # logged; nothing changes
        wait_until(lambda: "Failed to read ModelServerConfig file" in caplog.text, "the error")
        assert served() == {"a", "b"}
        path.write_text(models_config(tmp_path, "b"))
        wait_until(lambda: served() == {"b"}, "model a to be removed")
        assert sum(loader.loads.values()) == loads  # b, unchanged, was not reloaded
        r = httpx.get(background.url + "/v1/models/b")
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
        labelled = models_config(tmp_path, "b").replace(
            'base_path: "', 'version_labels { key: "stable" value: 1 } base_path: "'
        )
        path.write_text(labelled)  # a label added: routing changes, nothing reloads
        wait_until(lambda: manager.traffic.label_version("b", "stable") == 1, "the label")
        assert sum(loader.loads.values()) == loads


def test_ssl_config_file_serves_grpc_over_mutual_tls(tmp_path: Path) -> None:
    """TF Serving's SSLConfig (PEM texts inline) through tfmux's TLS settings, end to end."""
    trustme = pytest.importorskip("trustme", reason="trustme makes the test CA (test extra)")
    if "tls_cert_file" not in ServerConfig.model_fields:
        pytest.skip("tfmux's TLS settings (tls_cert_file, ...) are not in this build yet")
    from google.protobuf import text_format

    from tfmux.tfs_main import build
    from tfmux.tfs_protos_text import parse_text

    server_ca, client_ca = trustme.CA(), trustme.CA()
    leaf, client = server_ca.issue_cert("127.0.0.1"), client_ca.issue_cert("client@tfmux.test")
    ssl = parse_text("SSLConfig", "")
    ssl.server_key = leaf.private_key_pem.bytes().decode()
    ssl.server_cert = b"".join(pem.bytes() for pem in leaf.cert_chain_pems).decode()
    ssl.custom_ca = client_ca.cert_pem.bytes().decode()
    ssl.client_verify = True
    (tmp_path / "ssl.config").write_text(text_format.MessageToString(ssl))
    make_repository(tmp_path, {"m": [1]})
    invocation = build(
        [
            "--model_name=m",
            f"--model_base_path={tmp_path / 'm'}",
            f"--ssl_config_file={tmp_path / 'ssl.config'}",
            "--tfmux_host=127.0.0.1",
        ],
        {},
    )
    private = Path(invocation.config.tls_key_file).parent  # type: ignore[arg-type]
    try:
        with BackgroundServer(invocation.config, loader=FakeLoader()) as background:
            target = f"127.0.0.1:{background.server.grpc_port}"
            root = server_ca.cert_pem.bytes()
            good = grpc.ssl_channel_credentials(
                root, client.private_key_pem.bytes(), client.cert_chain_pems[0].bytes()
            )
            anonymous = grpc.ssl_channel_credentials(root)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "m"
            with grpc.secure_channel(target, anonymous) as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                with pytest.raises(grpc.RpcError):  # client_verify: a certificate is required
                    stub.GetModelStatus(request, timeout=10)
            with grpc.secure_channel(target, good) as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                assert stub.GetModelStatus(request, timeout=10).model_version_status
    finally:
        invocation.close()
    assert not private.exists()  # the PEM files are gone with the server


@pytest.mark.parametrize("implementation", ["tfmux", "grpcio"])
def test_grpc_health_check(tmp_path: Path, implementation: str) -> None:
    """gRPC's standard health service, with a client built from the same wire format."""
    from tfmux.transports.grpc_health import HealthCheckRequest, HealthCheckResponse

    make_repository(tmp_path, {"m": [1]})
    config = ServerConfig(
        models=[model_config("m", tmp_path / "m")],
        grpc_health_service=True,
        grpc_implementation=implementation,
    )
    with BackgroundServer(config, loader=FakeLoader()) as background:
        target = f"127.0.0.1:{background.server.grpc_port}"
        with grpc.insecure_channel(target) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=HealthCheckRequest.SerializeToString,
                response_deserializer=HealthCheckResponse.FromString,
            )
            for service in ("", "ModelService", "tensorflow.serving.PredictionService"):
                answer = check(HealthCheckRequest(service=service), timeout=10)
                assert answer.status == HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                check(HealthCheckRequest(service="nope"), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            watch = channel.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=HealthCheckRequest.SerializeToString,
                response_deserializer=HealthCheckResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as info:
                next(iter(watch(HealthCheckRequest(), timeout=10)))
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert check(HealthCheckRequest(), timeout=10).status == HealthCheckResponse.SERVING


def test_no_health_service_unless_asked(tmp_path: Path) -> None:
    from tfmux.transports.grpc_health import HealthCheckRequest, HealthCheckResponse

    make_repository(tmp_path, {"m": [1]})
    config = ServerConfig(models=[model_config("m", tmp_path / "m")])
    with BackgroundServer(config, loader=FakeLoader()) as background:
        target = f"127.0.0.1:{background.server.grpc_port}"
        check = grpc.insecure_channel(target).unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            check(HealthCheckRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
