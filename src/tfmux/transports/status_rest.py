"""The status API and the dashboard page over REST.

- ``GET /status``: every model and version (state, load error, labels, pinned, memory, last
  use, load time, the last minute's request rate, error rate, p50/p99 latency, mean batch
  size, queue depth), splits and shadows, memory against the budget, recent events;
- ``GET /status/history?model=NAME&busiest=N``: the bounded time series (overall, the N
  busiest models' and each named model's), oldest point first;
- ``GET /status/events?after=ID``: the lifecycle events newer than event ``ID``;
- ``GET /dashboard``: the page, a thin client of the three (its files under /dashboard/).

Who may read them is the dashboard's exposure rule (tfmux.dashboard.dashboard_access). The
cluster gateway serves the same paths over its replicas (tfmux.cluster.status), with more
fields (every replica, and which replicas hold each model version).
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable
from typing import TypeVar, cast
from urllib.parse import parse_qs

from tfmux.core.service import ServingService
from tfmux.dashboard import ASSETS, DashboardAccess, asset
from tfmux.errors import ErrorKind, ServingError, invalid_argument
from tfmux.transports.rest import Handler, Request, Response, authorization
from tfmux.transports.tfs_codec import dumps
from tfmux.transports.tfs_json import encode_error

T = TypeVar("T")
PAGE = "/dashboard"
MAX_BUSIEST = 50
MAX_NAMED = 20
# The page and its files: same-origin only, no framing, no inline script.
_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
]


class StatusRest:
    """Answers /status, /status/history, /status/events and /dashboard (and its files)."""

    def __init__(self, service: ServingService, access: DashboardAccess) -> None:
        self._service = service
        self._access = access
        self._files = {name: asset(name) for name in ASSETS} if access.enabled else {}

    def route(self, method: str, path: str) -> Handler | None:
        if path in ("/status", "/status/history", "/status/events"):
            handler = {
                "/status": self._overview,
                "/status/history": self._history,
                "/status/events": self._events,
            }[path]
        elif path in (PAGE, PAGE + "/"):
            handler = self._file("index.html")
        elif path.startswith(PAGE + "/") and path[len(PAGE) + 1 :] in ASSETS:
            handler = self._file(path[len(PAGE) + 1 :])
        else:
            return None
        if not self._access.enabled:
            return self._off
        return handler if method == "GET" else _method_not_allowed

    def _file(self, name: str) -> Handler:
        async def serve(request: Request) -> Response:
            return Response(200, self._files[name], ASSETS[name], list(_PAGE_HEADERS))

        return serve

    def _check(self, request: Request) -> None:
        token = self._access.token
        if token is None:
            return
        sent = authorization(request) or ""
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise ServingError(
                ErrorKind.UNAUTHENTICATED,
                "the status API of a server listening beyond loopback needs the header "
                "'Authorization: Bearer <admin token>'",
            )

    async def _overview(self, request: Request) -> Response:
        self._check(request)
        return Response(body=dumps(await _settled(self._service.overview())))

    async def _history(self, request: Request) -> Response:
        self._check(request)
        query = _query(request)
        models = query.get("model", [])
        if len(models) > MAX_NAMED:
            raise invalid_argument(f"at most {MAX_NAMED} 'model' parameters, not {len(models)}")
        busiest = _integer(query, "busiest", 5, MAX_BUSIEST)
        return Response(body=dumps(await _settled(self._service.history(models, busiest))))

    async def _events(self, request: Request) -> Response:
        self._check(request)
        after = _integer(_query(request), "after", 0, None)
        return Response(body=dumps({"events": await _settled(self._service.events(after))}))

    async def _off(self, request: Request) -> Response:
        raise ServingError(
            ErrorKind.PERMISSION_DENIED, f"the dashboard and status API are {self._access.reason}"
        )


async def _settled(value: T | Awaitable[T]) -> T:
    """A status read: a value (one process) or a coroutine (the cluster gateway asks its
    replicas)."""
    if inspect.isawaitable(value):
        return cast(T, await value)
    return cast(T, value)


def _query(request: Request) -> dict[str, list[str]]:
    try:
        text = request.query.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_argument("the query string must be ASCII (percent-encoded)") from None
    try:
        return parse_qs(text, max_num_fields=64)
    except ValueError:
        raise invalid_argument("too many query parameters (at most 64)") from None


def _integer(query: dict[str, list[str]], key: str, default: int, most: int | None) -> int:
    values = query.get(key)
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or (most is not None and int(text) > most):
        limit = f" up to {most}" if most is not None else ""
        raise invalid_argument(f"'{key}' must be a whole number{limit}, not {text[:40]!r}")
    return int(text)


async def _method_not_allowed(request: Request) -> Response:
    body = encode_error(f"method {request.method} not allowed; use GET")
    return Response(405, body, headers=[(b"allow", b"GET")])
