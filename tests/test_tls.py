"""TLS on both ports, with the clients people use and a CA made at test time (trustme).

REST over https (httpx), gRPC over TLS with ALPN h2 on tfmux's own server and on grpc.aio
(grpcio secure channels, tritonclient with ssl=True, TF Serving's PredictionService stub);
mutual TLS refuses clients without a certificate, or with one from another CA; plaintext
clients against a TLS port are refused cleanly. After each refusal, a good request works.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import trustme
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfmux.config import ConfigError, ModelConfig, ModelSources, ServerConfig, build_config
from tfmux.server import TfmuxServer

from .harness import BackgroundServer

pytestmark = pytest.mark.tf

ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]


@dataclass
class Pki:
    """A server CA and certificate for 127.0.0.1, and clients of a second CA."""

    dir: Path
    server_ca: trustme.CA
    client_ca: trustme.CA

    @property
    def ca_file(self) -> Path:
        return self.dir / "server-ca.pem"

    def file(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ca.cert_pem.write_to_path(str(root / "server-ca.pem"))
    client_ca.cert_pem.write_to_path(str(root / "client-ca.pem"))
    leaf = server_ca.issue_cert("127.0.0.1", "localhost")
    leaf.private_key_pem.write_to_path(str(root / "server.key"))
    leaf.cert_chain_pems[0].write_to_path(str(root / "server.pem"))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(root / "server.pem"), append=True)
    client = client_ca.issue_cert("client@tfmux.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(root / "client.pem"))
    client.private_key_pem.write_to_path(str(root / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(root / "client.crt"))
    stranger = server_ca.issue_cert("stranger@tfmux.test")  # signed by the wrong CA
    stranger.private_key_pem.write_to_path(str(root / "stranger.key"))
    stranger.cert_chain_pems[0].write_to_path(str(root / "stranger.crt"))
    return Pki(root, server_ca, client_ca)


def tls_config(model_root: Path, pki: Pki, mutual: bool, implementation: str) -> ServerConfig:
    return ServerConfig(
        models=[ModelConfig(name="binary", base_path=model_root / "binary")],
        grpc_implementation=implementation,  # type: ignore[arg-type]
        tls_cert_file=pki.dir / "server.pem",
        tls_key_file=pki.dir / "server.key",
        tls_client_ca_file=pki.dir / "client-ca.pem" if mutual else None,
    )


@pytest.fixture(scope="module", params=["tfmux", "grpcio"])
def servers(request, model_root, pki) -> Iterator[tuple[BackgroundServer, BackgroundServer]]:
    """A TLS server and a mutual-TLS server, with the gRPC implementation of the param."""
    implementation = request.param
    with (
        BackgroundServer(tls_config(model_root, pki, False, implementation)) as tls,
        BackgroundServer(tls_config(model_root, pki, True, implementation)) as mtls,
    ):
        yield tls, mtls


def https(server: BackgroundServer) -> str:
    return f"https://127.0.0.1:{server.server.http_port}"


def target(server: BackgroundServer) -> str:
    return f"127.0.0.1:{server.server.grpc_port}"


def client_context(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(pki.file(f"{cert}.crt"), pki.file(f"{cert}.key"))
    return context


def rest_predicts(server: BackgroundServer, context: ssl.SSLContext) -> bool:
    with httpx.Client(verify=context, timeout=30) as http:
        r = http.post(f"{https(server)}/v1/models/binary:predict", json={"instances": ROWS})
        return r.status_code == 200 and len(r.json()["predictions"]) == 2


def credentials(pki: Pki, cert: str | None = None) -> grpc.ChannelCredentials:
    chain = key = None
    if cert is not None:
        key = Path(pki.file(f"{cert}.key")).read_bytes()
        chain = Path(pki.file(f"{cert}.crt")).read_bytes()
    return grpc.ssl_channel_credentials(pki.ca_file.read_bytes(), key, chain)


def predict_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "binary"
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[
            tensor_shape_pb2.TensorShapeProto.Dim(size=2),
            tensor_shape_pb2.TensorShapeProto.Dim(size=3),
        ]
    )
    x = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[v for row in ROWS for v in row]
    )
    request.inputs["x"].CopyFrom(x)
    return request


def grpc_predicts(server: BackgroundServer, creds: grpc.ChannelCredentials) -> bool:
    with grpc.secure_channel(target(server), creds) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request(), timeout=30)
        return response.outputs["probability"].tensor_shape.dim[0].size == 2


def grpc_refused(server: BackgroundServer, channel: grpc.Channel) -> grpc.StatusCode:
    with channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(), timeout=10)
        return info.value.code()


# -- REST --------------------------------------------------------------------------------------


def test_rest_over_https(servers, pki) -> None:
    tls, _ = servers
    assert rest_predicts(tls, client_context(pki))
    with httpx.Client(verify=client_context(pki), timeout=30) as http:
        assert http.get(f"{https(tls)}/v2/health/ready").status_code == 200


def test_rest_plaintext_client_is_refused_then_https_works(servers, pki) -> None:
    tls, _ = servers
    with httpx.Client(timeout=10) as http, pytest.raises(httpx.TransportError):
        http.get(f"http://127.0.0.1:{tls.server.http_port}/v2/health/ready")
    assert rest_predicts(tls, client_context(pki))


def test_rest_client_not_trusting_the_server_fails_then_a_good_one_works(servers, pki) -> None:
    tls, _ = servers
    with httpx.Client(timeout=10) as http, pytest.raises(httpx.ConnectError):
        http.get(f"{https(tls)}/v2/health/ready")  # the system CAs do not know the test CA
    assert rest_predicts(tls, client_context(pki))


def test_rest_mutual_tls(servers, pki) -> None:
    _, mtls = servers
    for cert in (None, "stranger"):
        with pytest.raises(httpx.TransportError):
            rest_predicts(mtls, client_context(pki, cert))
    assert rest_predicts(mtls, client_context(pki, "client"))


# -- gRPC --------------------------------------------------------------------------------------


def test_grpc_alpn_is_h2(servers, pki) -> None:
    tls, _ = servers
    context = client_context(pki)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", tls.server.grpc_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        assert conn.selected_alpn_protocol() == "h2"


def test_tf_serving_stub_over_a_secure_channel(servers, pki) -> None:
    tls, _ = servers
    assert grpc_predicts(tls, credentials(pki))


def test_tritonclient_grpc_with_ssl(servers, pki) -> None:
    tls, _ = servers
    with triton.InferenceServerClient(
        target(tls), ssl=True, root_certificates=str(pki.ca_file)
    ) as client:
        assert client.is_server_ready() and client.is_model_ready("binary")
        x = triton.InferInput("x", [2, 3], "FP32")
        x.set_data_from_numpy(np.array(ROWS, np.float32))
        assert client.infer("binary", [x]).as_numpy("probability").shape == (2, 1)


def test_grpc_plaintext_client_is_refused_then_tls_works(servers, pki) -> None:
    tls, _ = servers
    code = grpc_refused(tls, grpc.insecure_channel(target(tls)))
    assert code == grpc.StatusCode.UNAVAILABLE
    # tfmux's server counts a connection once its handshake is done, so failed handshakes
    # do not hold graceful shutdown for its whole grace period
    assert not getattr(getattr(tls.server._grpc, "_dispatcher", None), "connections", None)
    assert grpc_predicts(tls, credentials(pki))


def test_grpc_mutual_tls(servers, pki) -> None:
    _, mtls = servers
    for cert in (None, "stranger"):
        code = grpc_refused(mtls, grpc.secure_channel(target(mtls), credentials(pki, cert)))
        assert code == grpc.StatusCode.UNAVAILABLE
    assert grpc_predicts(mtls, credentials(pki, "client"))


# -- configuration -----------------------------------------------------------------------------


def test_tls_settings_are_validated(pki, model_root) -> None:
    sources = ModelSources(models=[f"binary={model_root / 'binary'}"])
    with pytest.raises(ConfigError, match="tls_key_file"):
        build_config(sources, {"tls_cert_file": pki.dir / "server.pem"})
    with pytest.raises(ConfigError, match="tls_cert_file"):
        build_config(sources, {"tls_client_ca_file": pki.dir / "client-ca.pem"})


def test_a_bad_certificate_stops_the_start_with_its_name(pki, model_root) -> None:
    config = ServerConfig(
        models=[ModelConfig(name="binary", base_path=model_root / "binary")],
        tls_cert_file=pki.dir / "client-ca.pem",  # a certificate, but not the key's
        tls_key_file=pki.dir / "server.key",
    )
    with pytest.raises(OSError, match=r"client-ca\.pem"):
        asyncio.run(TfmuxServer(config).start())  # refused before anything loads or listens


def test_command_line_options_reach_the_settings(pki, model_root) -> None:
    """`tfmux serve` refuses a certificate without its key, and maps the REST limits."""
    from click.testing import CliRunner

    from tfmux.cli import main

    model = f"binary={model_root / 'binary'}"
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--model", model, "--tls-cert", pki.file("server.pem")])
    assert result.exit_code == 2 and "tls_key_file" in result.output
    result = runner.invoke(main, ["serve", "--model", model, "--http-max-header-size", "512"])
    assert result.exit_code == 2 and "http_max_header_bytes" in result.output
