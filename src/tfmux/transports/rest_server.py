"""The REST port's server: uvicorn over ``rest_guard``'s protocol, accepting through
``transports.acceptor`` (admission: refusals and throttling), with no signal handling of its
own (``TfmuxServer`` owns shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from tfmux.config import ServerConfig
from tfmux.tls import TlsFiles
from tfmux.transports.acceptor import Acceptor
from tfmux.transports.admission import AdmissionGate, AdmissionLimits, TokenBucket
from tfmux.transports.rest_guard import BULK_BURST, GuardedHttpToolsProtocol, RestLimits


class RestServer(uvicorn.Server):
    """uvicorn, started on a socket bound beforehand, accepting as the admission gate allows."""

    def __init__(self, config: uvicorn.Config, admission: AdmissionLimits) -> None:
        super().__init__(config)
        self.admission = admission
        self.gate: AdmissionGate | None = None  # the port's gate, once started (for /metrics)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        protocol = config.http_protocol_class
        gate = AdmissionGate(
            self.admission,
            protocol.limits.max_connections,
            lambda: len(self.server_state.connections),
        )
        protocol.gate = self.gate = gate
        rate = protocol.limits.bulk_bytes_per_second
        now = asyncio.get_running_loop().time()
        protocol.bulk = TokenBucket(rate, BULK_BURST, now) if rate else None

        def create_protocol() -> asyncio.Protocol:
            return protocol(config=config, server_state=self.server_state, app_state={})

        acceptors = [Acceptor(sock, create_protocol, gate, config.ssl) for sock in sockets or []]
        for acceptor in acceptors:
            acceptor.start()
        self.servers = acceptors  # type: ignore[assignment]  # close() is all uvicorn calls
        self.started = True


def uvicorn_config(app: Any, c: ServerConfig, tls: TlsFiles | None) -> uvicorn.Config:
    """uvicorn's settings for ``app`` on the REST port, with the port's limits."""
    limits = RestLimits(
        c.http_max_connections,
        c.http_header_timeout_seconds,
        c.http_body_timeout_seconds,
        c.http_max_header_bytes,
        c.http_bulk_bytes_per_second,
    )
    context = tls.context(alpn=["http/1.1"]) if tls is not None else None
    return uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level=c.log_level,
        http=GuardedHttpToolsProtocol.with_limits(limits),  # httptools, with limits
        proxy_headers=False,  # measured on the hot path; tfmux reads no proxy headers
        timeout_graceful_shutdown=c.shutdown_grace_seconds,
        timeout_keep_alive=c.http_keep_alive_seconds,  # type: ignore[arg-type]
        ssl_context_factory=(lambda *_: context) if context is not None else None,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # says TCP; with proto 0, keep-alive responses waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
