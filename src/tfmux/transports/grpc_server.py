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
from tfmux.transports.h2 import H2GrpcServer

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
    *,
    tcp: bool = True,
    unix_path: Path | None = None,
) -> tuple[GrpcServer, int | None]:
    """Start serving; returns the server and the port it bound (``port`` 0 picks one).
    ``tcp`` False: no TCP port (None is returned); ``unix_path``: also on this Unix socket."""
    if implementation == "tfmux":
        server = H2GrpcServer(max_message_bytes)
        for register in registrars:
            register(server)
        bound = None
        try:
            if tcp:
                bound = await server.start(host, port)
            if unix_path is not None:
                await server.start_unix(unix_path)
        except OSError as exc:
            await server.stop(None)
            where = f"unix:{unix_path}" if bound is not None or not tcp else f"{host}:{port}"
            raise OSError(f"cannot listen for gRPC on {where}: {exc}") from None
        return server, bound
    return await _start_grpcio(host, port, max_message_bytes, registrars, tcp, unix_path)


async def _start_grpcio(
    host: str,
    port: int,
    max_message_bytes: int,
    registrars: Sequence[Registrar],
    tcp: bool = True,
    unix_path: Path | None = None,
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
            added = server.add_insecure_port(address)
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
