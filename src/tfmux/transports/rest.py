"""The REST front end: a small raw-ASGI app (measured ~2x a framework router on this machine).

It reads bodies (with a size limit), routes by path, and maps neutral error kinds to HTTP
status codes. Protocol handlers (TF Serving /v1, KServe /v2) live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tfmux.core.batching import Gone
from tfmux.errors import ErrorKind, ServingError
from tfmux.transports.tfs_json import encode_error
from tfmux.types import InferenceResult

log = logging.getLogger("tfmux.rest")

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.FAILED_PRECONDITION: 400,
    ErrorKind.OUT_OF_RANGE: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.ABORTED: 409,
    ErrorKind.RESOURCE_EXHAUSTED: 429,
    ErrorKind.CANCELLED: 499,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNKNOWN: 500,
    ErrorKind.UNIMPLEMENTED: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE_EXCEEDED: 504,
}
JSON = b"application/json"
ROUTING_KEY = b"x-routing-key"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes = b""
    gone: Gone | None = None
    query: bytes = b""  # the raw query string (GET requests)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]
# A route answers a method on a path with a handler, or None when it does not answer that method
# on that path. Its answer depends only on the method and path (the app caches it). The app
# answers 405 with ``Allow`` when some route answers the path for other methods only.
Route = Callable[[str, str], Handler | None]
ROUTE_CACHE_SIZE = 4096
# The methods probed to tell 405 (a known path) from 404; HEAD is not answered for GET paths
# (the OpenAPI document declares none), so it is 405 there too.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


def authorization(request: Request) -> str | None:
    """The Authorization header (a management call's bearer token), if sent."""
    value = request.headers.get(b"authorization")
    return None if value is None else value.decode("latin-1")


def routing_key(request: Request) -> str | None:
    """The ``X-Routing-Key`` header: the same key lands on the same arm of a split."""
    value = request.headers.get(ROUTING_KEY)
    return value.decode("latin-1") if value else None


def served_by(result: InferenceResult) -> list[tuple[bytes, bytes]]:
    """Response headers naming what answered: ``X-Model-Name`` (the concrete model, also for
    an alias), ``X-Model-Version``, and ``X-Model-Arm`` when a split chose the arm."""
    headers = [
        (b"x-model-name", result.model_name.encode()),
        (b"x-model-version", str(result.version).encode()),
    ]
    if result.arm:
        headers.append((b"x-model-arm", result.arm.encode()))
    return headers


def error_response(exc: ServingError) -> Response:
    """The HTTP answer for an error: TF Serving's status for its kind, 413 for big bodies;
    a 401 names the scheme it wants (``WWW-Authenticate: Bearer``)."""
    status = 413 if isinstance(exc, PayloadTooLarge) else HTTP_STATUS.get(exc.kind, 500)
    challenge = [(b"www-authenticate", b'Bearer realm="tfmux"')] if status == 401 else []
    return Response(status, encode_error(exc.message), headers=challenge)


class RestApp:
    """ASGI application dispatching to routes in order; first match wins."""

    def __init__(self, routes: list[Route], max_body_bytes: int) -> None:
        self._routes = routes
        self._max_body = max_body_bytes
        self._handlers: dict[tuple[str, str], Handler] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        headers = dict(scope["headers"])
        try:
            handler = self._match(method, path)
            if method in ("POST", "PUT"):
                body = await self._read_body(headers, receive)
                gone = _disconnect_probe(receive)
                request = Request(method, path, headers, body, gone)
                if gone is not None:
                    response = await handler(request)
                else:
                    response = await _unless_disconnected(handler(request), receive)
            else:
                query = scope.get("query_string", b"")
                response = await handler(Request(method, path, headers, query=query))
        except ServingError as exc:
            response = error_response(exc)
        except Exception as exc:  # a bug must answer 500, not drop the connection
            log.exception("unhandled error for %s %s", method, path)
            response = Response(500, encode_error(f"internal error: {type(exc).__name__}: {exc}"))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type),
                    (b"content-length", str(len(response.body)).encode()),
                    *response.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    def _match(self, method: str, path: str) -> Handler:
        handler = self._handlers.get((method, path))
        if handler is not None:
            return handler
        handler = self._find(method, path)
        if handler is None:
            allowed = [other for other in METHODS if self._find(other, path) is not None]
            if not allowed:
                raise ServingError(ErrorKind.NOT_FOUND, f"no such endpoint: {method} {path}")
            handler = method_not_allowed(allowed)
        if len(self._handlers) >= ROUTE_CACHE_SIZE:
            self._handlers.clear()
        self._handlers[method, path] = handler
        return handler

    def _find(self, method: str, path: str) -> Handler | None:
        for route in self._routes:
            handler = route(method, path)
            if handler is not None:
                return handler
        return None

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise self._too_large(int(declared))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServingError(ErrorKind.CANCELLED, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise self._too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int) -> ServingError:
        return PayloadTooLarge(
            f"request body of {size} bytes exceeds the limit of {self._max_body} bytes "
            "(--max-body-size)"
        )


def method_not_allowed(allowed: list[str]) -> Handler:
    """405 for a known path asked with a method it does not answer; ``Allow`` lists those it
    does (RFC 9110 section 15.5.6)."""
    allow = ", ".join(allowed)

    async def answer(request: Request) -> Response:
        message = f"method {request.method} not allowed for {request.path}; use {allow}"
        return Response(405, encode_error(message), headers=[(b"allow", allow.encode())])

    return answer


def _disconnect_probe(receive: Any) -> Gone | None:
    """A cheap check for a client that went away, when the HTTP server offers one.

    uvicorn's ``receive`` is a method of the request cycle, whose ``disconnected`` flag its
    protocol sets when the connection is lost: reading it costs nothing per request, where
    watching ``receive()`` costs a task (measured ~10% of a small model's request path). The
    batcher reads it before queued work runs. Other ASGI servers get the watcher instead.
    """
    cycle = getattr(receive, "__self__", None)
    if isinstance(getattr(cycle, "disconnected", None), bool):
        return lambda: bool(cycle.disconnected)
    return None


async def _unless_disconnected(work: Awaitable[Response], receive: Any) -> Response:
    """Run a handler; if the client disconnects first, cancel it (dropping queued work)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(receive())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServingError):
            await task
        raise ServingError(ErrorKind.CANCELLED, "client disconnected")
    return task.result()


class PayloadTooLarge(ServingError):
    """Maps to 413, which has no gRPC counterpart (gRPC says RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.RESOURCE_EXHAUSTED, message)
