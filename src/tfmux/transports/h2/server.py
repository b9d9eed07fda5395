"""tfmux's own gRPC server: the part of ``grpc.aio.Server`` tfmux uses (handler registration,
start, graceful stop) over asyncio HTTP/2 connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from tfmux.transports.acceptor import Acceptor
from tfmux.transports.admission import AdmissionGate, AdmissionLimits
from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.connection import H2Connection
from tfmux.transports.h2.guard import Shared
from tfmux.transports.h2.limits import H2Limits
from tfmux.transports.h2.rpc import GrpcDispatcher, Registry
from tfmux.transports.h2.stats import H2Stats


class H2GrpcServer:
    """Unary gRPC over h2c. Register services, then ``await start(host, port)``."""

    def __init__(
        self,
        max_message_bytes: int,
        limits: H2Limits | None = None,
        stats: H2Stats | None = None,
        admission: AdmissionLimits | None = None,
    ) -> None:
        self.limits = limits or H2Limits()
        self.shared = Shared(self.limits, max_message_bytes, stats)
        self.stats = self.shared.stats
        self._registry = Registry()
        self._dispatcher = GrpcDispatcher(self._registry, self.shared)
        self.gate = AdmissionGate(
            admission or AdmissionLimits(),
            self.limits.max_connections,
            lambda: len(self._dispatcher.connections),
        )
        self.stats.on_abuse = self.gate.note_abuse
        self._servers: list[asyncio.AbstractServer | Acceptor] = []
        self._unix_paths: list[Path] = []
        self._stopped = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    # -- what the generated add_XServicer_to_server functions call ---------------------

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._registry.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._registry.add_registered_method_handlers(service, handlers)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, handshake_timeout: float = 10
    ) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the bound port. With ``tls``
        (a server context offering ALPN ``h2``), connections are TLS; a connection that has
        not finished its handshake within ``handshake_timeout`` seconds is closed."""
        loop = asyncio.get_running_loop()
        bound = port
        timeout = handshake_timeout if tls is not None else None
        for sock in _listen(host, port):
            acceptor = Acceptor(sock, self._connection, self.gate, tls, timeout)
            acceptor.start()
            self._servers.append(acceptor)
            bound = sock.getsockname()[1]
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return bound

    async def start_unix(
        self, path: Path, tls: ssl.SSLContext | None = None, handshake_timeout: float = 10
    ) -> None:
        """Also listen on the Unix domain socket at ``path`` (a stale socket file there is
        replaced; the file is removed when the server stops)."""
        if path.is_socket():
            path.unlink()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            self._connection,
            path=str(path),
            ssl=tls,
            ssl_handshake_timeout=handshake_timeout if tls is not None else None,
        )
        self._servers.append(server)
        self._unix_paths.append(path)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def _connection(self) -> asyncio.Protocol:
        """A new connection's protocol; past ``max_connections`` one that refuses it. (The
        connection limit for any listener, TLS included, lives here; a connection registers
        itself in ``connection_made``, after a TLS handshake, so a failed handshake never
        stays registered.)"""
        if len(self._dispatcher.connections) >= self.limits.max_connections:
            return _Refused(self.shared)
        return H2Connection(self._dispatcher)

    async def _sweep(self) -> None:
        """Timeouts: preface, idle connections, requests never received in full."""
        limits = self.limits
        shortest = min(
            limits.preface_timeout_seconds,
            limits.idle_timeout_seconds,
            limits.incomplete_request_timeout_seconds,
        )
        period = min(1.0, shortest / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in list(self._dispatcher.connections):
                connection.tick(now)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; in-flight calls get ``grace`` seconds to finish, then are cancelled."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
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
        self._dispatcher.close()
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


class _Refused(asyncio.Protocol):
    """A connection past the limit: SETTINGS and GOAWAY (no stream was processed), closed."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        limit = self._shared.limits.max_connections
        message = f"server at its connection limit ({limit})"
        transport.write(self._shared.preface + f.goaway(0, f.NO_ERROR, message.encode()))
        transport.close()
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._shared.stats.connection_closed("connection_limit", f"{peer[0]}:{peer[1]}", message)


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
