"""Accepting connections on a listening socket as the admission gate allows.

``loop.create_server`` accepts every pending connection at once and cannot stop accepting
short of closing the socket; this accepts at most ``accepts_per_turn`` per event-loop turn and
leaves the rest in the kernel's backlog while the gate says wait (``transports.admission``).
It stands in for the ``asyncio.Server`` that uvicorn and the HTTP/2 server keep: ``close`` and
``wait_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from tfmux.transports.admission import AdmissionGate, Admit, client_address

log = logging.getLogger("tfmux.accept")
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
OUT_OF_FILES_PAUSE = 0.1  # seconds without accepting after the process ran out of descriptors


class Acceptor:
    """Accepts on ``sock`` (listening, non-blocking) and hands each connection to ``factory``."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        gate: AdmissionGate,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self._factory = factory
        self._gate = gate
        self._tls = tls
        self._handshake_timeout = handshake_timeout if tls is not None else None
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[object]] = set()
        self._unopened: set[socket.socket] = set()  # handed over, connection_made not called
        self._reading = False
        self._closed = False

    def start(self) -> None:
        if not self._closed and not self._reading:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _pause(self, seconds: float) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False
        if self._resume is None:
            self._resume = self._loop.call_later(seconds, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        self.start()

    def _on_readable(self) -> None:
        for _ in range(self._gate.limits.accepts_per_turn):
            decision = self._gate.decide(len(self._unopened))
            if decision is Admit.WAIT:
                self._pause(self._gate.wait)
                return
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                self._gate.nobody_came()
                return
            except OSError as exc:
                self._gate.nobody_came()
                if exc.errno in _OUT_OF_FILES:
                    log.warning("cannot accept connections: %s; pausing", exc.strerror)
                    self._pause(OUT_OF_FILES_PAUSE)
                    return
                raise
            if decision is not Admit.DROP and not self._gate.admits(client_address(address)):
                conn.close()  # from a throttled address
                continue
            self._gate.done(decision)
            if decision is Admit.DROP:
                conn.close()
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):  # TCP only (not Unix sockets)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        """``connect_accepted_socket`` in a task; until the protocol's ``connection_made``
        (after the TLS handshake, if any) the connection is counted as ``_unopened``: the open
        count the gate reads does not have it yet, and counting the task until it finishes
        (a few loop turns later) would count it twice and refuse a newcomer below the limit."""
        self._unopened.add(conn)

        def factory() -> asyncio.Protocol:
            protocol = self._factory()
            made = protocol.connection_made

            def connection_made(transport: asyncio.BaseTransport) -> None:
                self._unopened.discard(conn)
                made(transport)

            setattr(protocol, "connection_made", connection_made)  # noqa: B010 (a method)
            return protocol

        task = self._loop.create_task(
            self._loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        )
        self._pending.add(task)
        task.add_done_callback(lambda t: self._handed_over(t, conn))

    def _handed_over(self, task: asyncio.Task[object], conn: socket.socket) -> None:
        self._pending.discard(task)
        self._unopened.discard(conn)  # (already gone unless it failed before opening)
        if task.cancelled() or task.exception() is not None:
            conn.close()  # a failed TLS handshake, or the loop closing: nothing to serve

    def close(self) -> None:
        """Stop accepting and close the listening socket (open connections stay)."""
        if self._closed:
            return
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.sock.close()

    async def wait_closed(self) -> None:
        """After ``close``: connections still in their TLS handshake are given up."""
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
