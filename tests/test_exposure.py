"""Safe exposure defaults: beyond loopback without an admin token, management is off.

The decision (``tfmux.exposure.gate``) is tested for every kind of host; then a real server
configured for ``--host 0.0.0.0`` is checked over real sockets on every management API (V2
REST, V2 gRPC with tritonclient, TF Serving's HandleReloadConfigRequest). Tests never listen
beyond loopback: the server configured for 0.0.0.0 is built (which decides) but not started,
and its service's management is served by a server on 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as triton
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from tfmux.exposure import gate, is_loopback
from tfmux.server import TfmuxServer

from .harness import BackgroundServer
from .test_management import (
    BEARER,
    TOKEN,
    control,
    grpc_code,
    grpc_target,
    index,
    predicts,
    reload_request,
    rest,
    server_config,
    triton_status,
)

pytestmark = pytest.mark.tf


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.7", False),
        ("fe80::1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_gate_automatic_is_on_at_loopback_and_with_a_token() -> None:
    for host, token in (("127.0.0.1", None), ("localhost", None), ("0.0.0.0", TOKEN)):
        decision = gate("model management", None, host, token, "management")
        assert decision.enabled and decision.warning is None


def test_gate_automatic_is_off_beyond_loopback_without_a_token() -> None:
    decision = gate("model management", None, "0.0.0.0", None, "management")
    assert not decision.enabled
    for hint in ("0.0.0.0", "--admin-token", "--management"):
        assert hint in decision.denial
    assert decision.warning == decision.denial


def test_gate_explicit_choices_win() -> None:
    off = gate("model management", False, "127.0.0.1", TOKEN, "management")
    assert not off.enabled and "--no-management" in off.denial
    on = gate("model management", True, "0.0.0.0", None, "management")
    assert on.enabled and on.warning is not None and "without a token" in on.warning
    guarded = gate("model management", True, "0.0.0.0", TOKEN, "management")
    assert guarded.enabled and guarded.warning is None


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def started(config_host: str, model_root: Path, **settings: object) -> BackgroundServer:
    """A server configured to listen on ``config_host`` (so it decides for that host), which
    then listens on 127.0.0.1 (tests never listen beyond loopback)."""
    server = BackgroundServer(server_config(model_root, host=config_host, **settings))
    server.server.config = server.server.config.model_copy(update={"host": "127.0.0.1"})
    return server


@pytest.fixture(scope="module")
def exposed(model_root: Path) -> Iterator[tuple[BackgroundServer, list[str]]]:
    records = Records()
    logging.getLogger("tfmux").addHandler(records)
    try:
        with started("0.0.0.0", model_root) as server:
            yield server, records.messages
    finally:
        logging.getLogger("tfmux").removeHandler(records)


def test_exposed_server_warns_at_startup(exposed) -> None:
    _, messages = exposed
    warnings = [m for m in messages if m.startswith("model management is off")]
    assert len(warnings) == 1 and "--admin-token" in warnings[0]


def test_exposed_without_token_refuses_management_on_every_api(exposed, model_root) -> None:
    server, _ = exposed
    with rest(server) as http:
        for path in (control("binary", "unload"), control("regression", "load")):
            for headers in ({}, {"Authorization": BEARER}):
                r = http.post(path, headers=headers)
                assert r.status_code == 403
                assert "--admin-token" in r.json()["error"]
                assert "--management" in r.json()["error"]
        assert index(http)["binary"]["state"] == "READY" and predicts(http)
    with triton.InferenceServerClient(grpc_target(server)) as client:
        for call in (client.unload_model, client.load_model):
            status, message = triton_status(call, "binary")
            assert status == "StatusCode.PERMISSION_DENIED" and "--admin-token" in message
        assert client.is_model_ready("binary")
    with grpc.insecure_channel(grpc_target(server)) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        for request in (model_management_pb2.ReloadConfigRequest(), reload_request(model_root)):
            code, details = grpc_code(models.HandleReloadConfigRequest, request, timeout=60)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "--admin-token" in details
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert predicts(http)


def test_token_or_explicit_opt_in_keep_management_beyond_loopback(model_root) -> None:
    for settings in ({"admin_token": TOKEN}, {"management": True}):
        exposed = TfmuxServer(server_config(model_root, host="0.0.0.0", **settings))
        assert exposed.service.management.enabled


def test_explicit_opt_in_loads_without_a_token_and_warns(model_root) -> None:
    records = Records()
    logging.getLogger("tfmux").addHandler(records)
    try:
        with started("0.0.0.0", model_root, management=True) as server, rest(server) as http:
            assert http.post(control("regression", "load")).status_code == 200
            assert predicts(http, "regression")
    finally:
        logging.getLogger("tfmux").removeHandler(records)
    assert any("open to anyone" in m for m in records.messages)


def test_loopback_keeps_management_open_without_warning(model_root) -> None:
    server = TfmuxServer(server_config(model_root))
    assert server.service.management.enabled and server.management_gate.warning is None
