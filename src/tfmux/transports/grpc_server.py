"""The gRPC front end: one server on the event loop carrying every gRPC service.

Two implementations serve the same generated servicers: tfmux's own HTTP/2 server
(``transports/h2``, the default, several times grpc.aio's calls/s on one core) and grpc.aio
(``grpc_implementation: grpcio``), kept as a fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import grpc

from tfmux.errors import ErrorKind, ServingError
from tfmux.tls import HANDSHAKE_TIMEOUT_SECONDS, TlsFiles
from tfmux.transports.admission import AdmissionLimits
from tfmux.transports.h2 import H2GrpcServer
from tfmux.transports.h2.limits import H2Limits
from tfmux.transports.h2.stats import H2Stats

ROUTING_KEY = "x-routing-key"
GrpcImplementation = Literal["tfmux", "grpcio"]


class HandlerHost(Protocol):
    """What ``add_XServicer_to_server`` needs: both servers satisfy it."""

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None: ...

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None: ...


class GrpcServer(Protocol):
    """A started server, whichever implementation: stopped with ``await stop(grace)``."""

    async def stop(self, grace: float | None) -> Any: ...


# Each service adds itself to the server (``add_XServicer_to_server``).
Registrar = Callable[[HandlerHost], None]

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    kind: getattr(grpc.StatusCode, kind.value) for kind in ErrorKind
}


async def start_grpc_server(
    host: str,
    port: int,
    max_message_bytes: int,
    registrars: Sequence[Registrar],
    implementation: GrpcImplementation = "tfmux",
    limits: H2Limits | None = None,
    stats: H2Stats | None = None,
    *,
    tls: TlsFiles | None = None,
    tcp: bool = True,
    unix_path: Path | None = None,
    admission: AdmissionLimits | None = None,
) -> tuple[GrpcServer, int | None]:
    """Start serving; returns the server and the port it bound (``port`` 0 picks one).
    ``limits`` and ``stats`` are for tfmux's own server (grpc.aio has limits of its own).
    With ``tls``, the port speaks gRPC over TLS (ALPN ``h2``), mutual when it has a client CA.
    ``tcp`` False: no TCP port (None is returned); ``unix_path``: also on this Unix socket."""
    if implementation == "tfmux":
        server = H2GrpcServer(max_message_bytes, limits, stats, admission)
        for register in registrars:
            register(server)
        context = tls.context(alpn=["h2"]) if tls is not None else None
        bound = None
        try:
            if tcp:
                bound = await server.start(host, port, context, HANDSHAKE_TIMEOUT_SECONDS)
            if unix_path is not None:
                await server.start_unix(unix_path, context, HANDSHAKE_TIMEOUT_SECONDS)
        except OSError as exc:
            await server.stop(None)
            where = f"unix:{unix_path}" if bound is not None or not tcp else f"{host}:{port}"
            raise OSError(f"cannot listen for gRPC on {where}: {exc}") from None
        return server, bound
    return await _start_grpcio(host, port, max_message_bytes, registrars, tls, tcp, unix_path)


async def _start_grpcio(
    host: str,
    port: int,
    max_message_bytes: int,
    registrars: Sequence[Registrar],
    tls: TlsFiles | None,
    tcp: bool = True,
    unix_path: Path | None = None,
    admission: AdmissionLimits | None = None,
) -> tuple[GrpcServer, int | None]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    for register in registrars:
        register(server)
    addresses = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"] if tcp else []
    if unix_path is not None:
        addresses.append(f"unix:{unix_path}")
    bound: int | None = None
    for address in addresses:
        try:
            if tls is None:
                added = server.add_insecure_port(address)
            else:
                added = server.add_secure_port(address, tls.grpc_credentials())
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if added == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        bound = bound or (added if not address.startswith("unix:") else None)
    await server.start()
    return server, bound


async def abort_with(context: grpc.aio.ServicerContext, exc: ServingError) -> None:
    """End an RPC with the gRPC status named like the error's kind."""
    await context.abort(GRPC_STATUS[exc.kind], exc.message)


def grpc_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's gRPC deadline as ``time.monotonic()`` seconds, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The ``authorization`` metadata of a call (management calls' bearer token), if sent."""
    return _metadata(context, "authorization")


def routing_key(context: grpc.aio.ServicerContext) -> str | None:
    """The ``x-routing-key`` metadata of a call (sticky split assignment), if sent."""
    return _metadata(context, ROUTING_KEY) or None


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None
