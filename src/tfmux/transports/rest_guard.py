"""The REST port's connection limits: uvicorn's httptools protocol with the guards it lacks.

Measured on uvicorn 0.55 (tests/test_rest_limits.py keeps these true): a connection that sends
nothing, or sends its headers a byte at a time, is held forever (the keep-alive timer runs only
between requests, and any byte cancels it); header lines accumulate without a size limit; a
request body that trickles in is waited for without end; and after an early answer (413), the
rest of an endless chunked body is read and discarded for as long as the client sends it.
``limit_concurrency`` answers 503 once connections *or in-flight requests* pass the limit,
which would refuse a batching server's legitimate bursts, so it is not used.

Here, per connection, one timer guards the phase the connection is in:

- **head**: from the connection (or the first byte of the next request) until its headers are
  complete: ``header_timeout`` in all, at most ``max_header_bytes``; else 408 / 431 and close;
- **body**: while a request body arrives, at most ``body_timeout`` between two reads; else 408
  and close;
- **linger**: after a response sent before its request body was read (413), the rest of the
  body is discarded for at most ``LINGER_SECONDS`` and ``LINGER_MAX_BYTES``, then the
  connection is closed (an endless chunked body is stopped); a body that ends within both
  leaves the connection usable;
- **idle**: between requests, uvicorn's own keep-alive timeout.

Past ``max_connections`` open connections, a new one gets 503 with ``Connection: close`` at its
first request (and the header timeout if it sends none); nothing already open is disturbed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tfmux.transports.admission import AdmissionGate, TokenBucket, client_address

log = logging.getLogger("tfmux.rest")
REFUSAL_LOG_SECONDS = 10.0  # refusals are logged at most this often (a flood is not a log flood)
LINGER_SECONDS = 5.0  # the longest a body answered early (413) is read and discarded
# and the most of it: enough for a client that reads while it sends to see the 413 (a client
# that sends its whole body first gets a reset either way); beyond it the connection is closed
# as abusive (``transports.admission``). Was 16 MiB: an attacker sending bodies declared too
# large then had the server read 16 MiB per connection (the soak's huge_bodies: 3.4 GB/s).
LINGER_MAX_BYTES = 4 * 1024 * 1024


BULK_AFTER = 1024 * 1024  # body bytes of one request read freely; beyond, the bulk budget pays
BULK_BURST = 32 * 1024 * 1024  # bulk bytes read at full speed after a quiet while
BULK_LONGEST_HOLD = 1.0  # seconds a connection waits for the budget before it asks again


class BudgetedFlow(FlowControl):
    """uvicorn's flow control, plus a hold while the server's bulk-body budget is in debt:
    uvicorn resumes reading whenever the application asks for more body, which must not undo
    the hold."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self.held: asyncio.TimerHandle | None = None

    def resume_reading(self) -> None:
        if self.held is None:
            super().resume_reading()

    def hold(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.pause_reading()
        self.held = loop.call_later(seconds, self.release)

    def release(self) -> None:
        if self.held is not None:
            self.held.cancel()
            self.held = None
        super().resume_reading()


@dataclass(frozen=True)
class RestLimits:
    """The REST port's limits; see docs/security.md for defaults and reasons."""

    max_connections: int = 1000
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    bulk_bytes_per_second: int = 64 * 1024 * 1024  # 0: no bulk budget


def _answer(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    body = orjson.dumps({"error": "the server has too many connections; retry later"})
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_refusals = {"count": 0, "logged_at": -REFUSAL_LOG_SECONDS}


def _log_refusal(open_: int, limit: int) -> None:
    _refusals["count"] += 1
    now = time.monotonic()
    if now - _refusals["logged_at"] >= REFUSAL_LOG_SECONDS:
        log.warning(
            "REST connections refused (503): %d since the last report; %d open, the limit "
            "is %d (--http-max-connections)",
            _refusals["count"],
            open_,
            limit,
        )
        _refusals.update(count=0, logged_at=now)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (``limits`` is set per server)."""

    limits = RestLimits()
    gate: AdmissionGate | None = None  # hears connections closed for abuse (set per server)
    bulk: TokenBucket | None = None  # the server's bulk-body budget (set per server)
    holds = 0  # times a connection waited for the bulk budget (per server class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard: asyncio.TimerHandle | None = None
        self._in_head = True  # until the headers of the current request are complete
        self._head_bytes = 0  # raw bytes received in this head phase
        self._field_bytes = 0  # URL and header bytes of the current request
        self._refused = False
        self._discarded = 0  # bytes of a body answered early, read and dropped
        self._body_bytes = 0  # body bytes of the current request, read so far
        self._guarding: Callable[[], None] | None = None

    @classmethod
    def with_limits(cls, limits: RestLimits) -> type[GuardedHttpToolsProtocol]:
        """A protocol class for one server's limits (uvicorn instantiates it per connection)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        if self._guard is not None:
            self._guard.cancel()
        self._guard = self.loop.call_later(seconds, callback)
        self._guarding = callback

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _abusive(self) -> None:
        if self.gate is not None:
            self.gate.note_abuse(client_address(self.client))

    def _close_with(self, status: int, reason: str, message: str) -> None:
        self._abusive()
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(_answer(status, reason, message))
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the handler's receive() answers http.disconnect
            self.cycle.message_event.set()
        self.transport.close()

    def _too_large(self) -> None:
        limit = self.limits.max_header_bytes
        self._close_with(
            431, "Request Header Fields Too Large", f"request headers exceed {limit} bytes"
        )

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = BudgetedFlow(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refused = True
            _log_refusal(len(self.connections) - 1, self.limits.max_connections)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if isinstance(self.flow, BudgetedFlow) and self.flow.held is not None:
            self.flow.held.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._too_large()

    # -- phases (parser callbacks) ---------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._field_bytes = 0
        self._body_bytes = 0
        if self._guard is None or self._guarding != self._head_timed_out:
            # a further request; the first one's timer runs since the connection was made
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._field_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._field_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._field_bytes > self.limits.max_header_bytes:
            self._too_large()
            return
        self._arm(self.limits.body_timeout, self._body_timed_out)
        if self._refused:
            self.app = _over_capacity
        super().on_headers_complete()

    def _spend(self, size: int) -> None:
        """Bulk bytes (past ``BULK_AFTER`` in one request, discarded ones included) are paid
        from the server's budget; in debt, this connection is not read until it is paid (at
        most ``BULK_LONGEST_HOLD`` at a time), so endless or huge uploads share a bounded rate
        and cannot take the core from everyone else."""
        self._body_bytes += size
        if self.bulk is None or self._body_bytes <= BULK_AFTER:
            return
        flow = self.flow
        wait = self.bulk.spend(size, self.loop.time())
        if wait > 0 and isinstance(flow, BudgetedFlow) and flow.held is None:
            flow.hold(self.loop, min(wait, BULK_LONGEST_HOLD))
            type(self).holds += 1

    def on_body(self, body: bytes) -> None:
        if self.transport.is_closing() or self.cycle is None:
            return
        self._spend(len(body))
        if self.cycle.response_complete:  # discarded, while the linger timer runs
            self._discarded += len(body)
            if self._discarded > LINGER_MAX_BYTES:
                self._abusive()
                self._disarm()
                self.transport.close()
            return
        self._arm(self.limits.body_timeout, self._body_timed_out)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if self.transport.is_closing() or self.cycle is None:
            return
        if self.cycle.response_complete:
            # the end of a body answered early (413): the connection is idle again
            self.cycle.more_body = False
            self._in_head = True
            self._arm(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle.more_body:
            # answered before its body was read (413): discard the rest, briefly
            self._discarded = 0
            self._arm(LINGER_SECONDS, self.transport.close)
        else:
            self._in_head = True

    # -- timers ------------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._guard = None
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing was asked: just close, as on keep-alive expiry
            return
        seconds = self.limits.header_timeout
        self._close_with(408, "Request Timeout", f"request headers not received in {seconds} s")

    def _body_timed_out(self) -> None:
        self._guard = None
        seconds = self.limits.body_timeout
        self._close_with(408, "Request Timeout", f"no request body data received for {seconds} s")
