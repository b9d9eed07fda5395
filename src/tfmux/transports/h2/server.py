"""tfmux's own gRPC server: the part of ``grpc.aio.Server`` tfmux uses (handler registration,
start, graceful stop) over asyncio HTTP/2 connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tfmux.transports.h2.connection import H2Connection
from tfmux.transports.h2.rpc import GrpcDispatcher, Registry


class H2GrpcServer:
    """Unary gRPC over h2c. Register services, then ``await start(host, port)``."""

    def __init__(self, max_message_bytes: int) -> None:
        self._registry = Registry()
        self._dispatcher = GrpcDispatcher(self._registry, max_message_bytes)
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[Path] = []
        self._stopped = asyncio.Event()

    # -- what the generated add_XServicer_to_server functions call ---------------------

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._registry.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._registry.add_registered_method_handlers(service, handlers)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the bound port."""
        loop = asyncio.get_running_loop()
        bound = port
        for sock in _listen(host, port):
            server = await loop.create_server(self._connection, sock=sock)
            self._servers.append(server)
            bound = sock.getsockname()[1]
        return bound

    async def start_unix(self, path: Path) -> None:
        """Also listen on the Unix domain socket at ``path`` (a stale socket file there is
        replaced; the file is removed when the server stops)."""
        if path.is_socket():
            path.unlink()
        server = await asyncio.get_running_loop().create_unix_server(
            self._connection, path=str(path)
        )
        self._servers.append(server)
        self._unix_paths.append(path)

    def _connection(self) -> H2Connection:
        connection = H2Connection(self._dispatcher)
        self._dispatcher.opened(connection)
        return connection

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; in-flight calls get ``grace`` seconds to finish, then are cancelled."""
        for server in self._servers:
            server.close()
        connections = list(self._dispatcher.connections)
        for connection in connections:
            if grace:
                connection.shutdown()
            else:
                connection.abort()
        if grace and connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dispatcher.wait_idle(), grace)
        for connection in list(self._dispatcher.connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path in self._unix_paths:
            path.unlink(missing_ok=True)
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True once ``stop`` has finished (grpc.aio's name for it)."""
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host``: one per address it resolves to, all on one port. An
    IPv6 wildcard also accepts IPv4 (dual stack), as grpc's ``[::]:port`` does."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    errors: list[str] = []
    for family, kind, proto, _, address in infos:
        if sockets:  # every further address on the port the first one got
            address = (address[0], sockets[0].getsockname()[1], *address[2:])
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            errors.append(f"{address[0]}: {exc.strerror}")
            continue
        sock.setblocking(False)
        sockets.append(sock)
    if not sockets:
        raise OSError(f"cannot listen for gRPC on {host}:{port}: {'; '.join(errors)}")
    return sockets
