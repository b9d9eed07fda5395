"""tfmux's own front ends, unchanged, naming the replica that served each answer:
``X-Tfmux-Replica`` on REST responses, ``x-tfmux-replica`` trailing metadata on gRPC."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tfmux.cluster.service import SERVED_BY
from tfmux.transports.grpc_server import HandlerHost, Registrar

HEADER = b"x-tfmux-replica"
TRAILER = "x-tfmux-replica"
ASGIApp = Callable[[dict[str, Any], Any, Any], Any]


class ServedByHeader:
    """ASGI middleware: the REST app with the serving replica in a response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        served: list[str] = []
        token = SERVED_BY.set(served)

        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and served:
                headers = [*message.get("headers", ()), (HEADER, served[-1].encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_named)
        finally:
            SERVED_BY.reset(token)


def served_by_trailer(register: Registrar) -> Registrar:
    """A gRPC registrar whose unary methods end with the serving replica in the trailers."""

    def wrapped(host: HandlerHost) -> None:
        register(_NamingHost(host))

    return wrapped


class _NamingHost:
    def __init__(self, host: HandlerHost) -> None:
        self._host = host

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._host.add_generic_rpc_handlers([_NamingGeneric(h) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        named = {name: _named(handler) for name, handler in handlers.items()}
        self._host.add_registered_method_handlers(service, named)


class _NamingGeneric:
    """A generic handler (``method_handlers_generic_handler``) with each method wrapped; keeps
    the ``_method_handlers`` table tfmux's h2 server reads."""

    def __init__(self, generic: Any) -> None:
        self._generic = generic
        table = getattr(generic, "_method_handlers", None)
        self._method_handlers = None if table is None else {k: _named(v) for k, v in table.items()}

    def service_name(self) -> Any:
        return self._generic.service_name()

    def service(self, details: Any) -> Any:
        if self._method_handlers is not None:
            return self._method_handlers.get(details.method)
        return _named(self._generic.service(details))


def _named(handler: Any) -> Any:
    if handler is None or not inspect.iscoroutinefunction(handler.unary_unary):
        return handler
    behavior = handler.unary_unary

    async def unary_unary(request: Any, context: Any) -> Any:
        served: list[str] = []
        token = SERVED_BY.set(served)
        try:
            return await behavior(request, context)
        finally:
            if served:
                context.set_trailing_metadata(((TRAILER, served[-1]),))
            SERVED_BY.reset(token)

    return handler._replace(unary_unary=unary_unary)
