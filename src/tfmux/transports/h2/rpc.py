"""gRPC over the HTTP/2 connections: the method table (filled by the generated
``add_XServicer_to_server`` functions), message framing, and one task per call that runs the
servicer's unary-unary handler and writes its answer or status.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import zlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from tfmux.transports.h2.context import ServicerContext
from tfmux.transports.h2.frames import OK_TRAILERS
from tfmux.transports.h2.guard import Shared
from tfmux.transports.h2.inflate import WBITS, TooLarge, inflate, lower_priority
from tfmux.transports.h2.stream import Sender, Stream

if TYPE_CHECKING:
    from tfmux.transports.h2.connection import H2Connection

log = logging.getLogger("tfmux.grpc")

OK, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 2, 4, 8
UNIMPLEMENTED, INTERNAL = 12, 13


class _CallDetails(NamedTuple):
    """``grpc.HandlerCallDetails`` for generic handlers that are not plain method tables."""

    method: str
    invocation_metadata: Any


class Method(NamedTuple):
    """A unary-unary handler ready to call, or None for methods tfmux cannot serve."""

    call: Any
    deserialize: Any
    serialize: Any
    is_async: bool


class Registry:
    """``/package.Service/Method`` → handler, as grpc's server resolves them: registered
    method handlers first, then generic handlers in the order they were added."""

    def __init__(self) -> None:
        self._registered: dict[str, Any] = {}
        self._generic: list[Any] = []
        self._resolved: dict[str, Method | None] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._generic.extend(handlers)
        self._resolved.clear()

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler
        self._resolved.clear()

    def lookup(self, path: str, stream: Stream) -> tuple[bool, Method | None]:
        """(found, method): found with no method means a streaming RPC."""
        if path in self._resolved:
            method = self._resolved[path]
            return True, method
        handler = self._registered.get(path)
        cacheable = True
        if handler is None:
            for generic in self._generic:
                table = getattr(generic, "_method_handlers", None)
                if isinstance(table, dict):
                    handler = table.get(path)
                else:
                    cacheable = False
                    handler = generic.service(_CallDetails(path, stream.head.metadata))
                if handler is not None:
                    break
        if handler is None:
            return False, None
        method = None
        if not handler.request_streaming and not handler.response_streaming:
            call = handler.unary_unary
            async_ = inspect.iscoroutinefunction(call)
            method = Method(call, handler.request_deserializer, handler.response_serializer, async_)
        if cacheable and len(self._resolved) < 4096:
            self._resolved[path] = method
        return True, method


class GrpcDispatcher:
    """Starts one task per complete request; what connections call (``Dispatcher``)."""

    def __init__(self, registry: Registry, shared: Shared) -> None:
        self.registry = registry
        self.shared = shared
        self.max_message = shared.max_message
        self.connections: set[H2Connection] = set()
        self._inflater = ThreadPoolExecutor(
            shared.limits.inflate_threads,
            thread_name_prefix="tfmux-inflate",
            initializer=lower_priority,
        )
        self._idle = asyncio.Event()
        self._idle.set()

    def opened(self, connection: H2Connection) -> None:
        self.connections.add(connection)
        self._idle.clear()

    def closed(self, connection: H2Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        """Stop the inflate threads (the server has stopped)."""
        self._inflater.shutdown(wait=False, cancel_futures=True)

    def dispatch(self, connection: H2Connection, stream: Stream) -> None:
        try:
            found, method = self.registry.lookup(stream.head.path, stream)
        except Exception as exc:  # a generic handler that raises costs this call only
            log.exception("finding the handler of gRPC %s failed", stream.head.path)
            connection.sender.status(stream, INTERNAL, f"cannot find the handler: {exc}")
            return
        if method is None:
            message = (
                f"tfmux does not implement streaming RPCs ({stream.head.path})"
                if found
                else "Method not found!"
            )
            connection.sender.status(stream, UNIMPLEMENTED, message)
            return
        unframed = self._unframe(connection, stream)
        if unframed is None:
            return
        payload, wbits = unframed
        context = ServicerContext(stream, connection.peer)
        loop = asyncio.get_running_loop()
        if wbits is None:
            call = self._run(connection, stream, method, payload, context)
        else:
            call = self._inflate_and_run(connection, stream, method, payload, wbits, context)
        stream.task = loop.create_task(call)
        if stream.deadline is not None:
            delay = max(stream.deadline - time.monotonic(), 0.0)
            stream.timer = loop.call_later(delay, _deadline_passed, stream)

    def _unframe(
        self, connection: H2Connection, stream: Stream
    ) -> tuple[memoryview, int | None] | None:
        """The request's one message and its zlib wbits if compressed, or None after
        answering the framing's error."""
        body = stream.body
        size = len(body) - 5
        if size < 0 or body[1:5] != size.to_bytes(4, "big"):
            connection.sender.status(stream, INTERNAL, "a unary request carries one message")
            return None
        payload = memoryview(body)[5:]
        if not body[0]:
            return payload, None
        wbits = WBITS.get(stream.head.encoding or b"")
        if wbits is None:
            encoding = (stream.head.encoding or b"").decode("latin-1")
            connection.sender.status(
                stream, UNIMPLEMENTED, f"unsupported grpc-encoding {encoding!r}"
            )
            return None
        return payload, wbits

    async def _inflate_and_run(
        self,
        connection: H2Connection,
        stream: Stream,
        method: Method,
        payload: memoryview,
        wbits: int,
        context: ServicerContext,
    ) -> None:
        """Inflate on the inflate threads (off the event loop), then run the call."""
        loop = asyncio.get_running_loop()
        limit = self.max_message
        try:
            data = await loop.run_in_executor(self._inflater, inflate, payload, wbits, limit)
        except TooLarge:
            detail = f"decompressed message larger than max ({limit})"
            self.shared.stats.hit("inflated_too_large", connection.peer, detail)
            connection.sender.status(stream, RESOURCE_EXHAUSTED, detail)
            return
        except zlib.error as exc:
            connection.sender.status(stream, INTERNAL, f"cannot decompress the request: {exc}")
            return
        except asyncio.CancelledError:
            if stream.deadline_hit:
                connection.sender.status(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")
            return
        await self._run(connection, stream, method, data, context)

    async def _run(
        self,
        connection: H2Connection,
        stream: Stream,
        method: Method,
        payload: bytes | bytearray | memoryview,
        context: ServicerContext,
    ) -> None:
        sender = connection.sender
        try:
            try:
                request = method.deserialize(payload) if method.deserialize else bytes(payload)
            except Exception as exc:
                sender.status(stream, INTERNAL, f"Failed to parse the request: {exc}")
                return
            response = method.call(request, context)
            if method.is_async or inspect.isawaitable(response):
                response = await response
            code, details = context.status
            if stream.deadline_hit:  # the handler swallowed the cancellation
                raise asyncio.CancelledError
            if code != OK:
                _status(sender, stream, code, details, context)
                return
            data = method.serialize(response) if method.serialize else response
            if type(data) is not bytes:
                data = bytes(data)
            if len(data) > self.max_message:
                message = f"Sent message larger than max ({len(data)} vs. {self.max_message})"
                sender.status(stream, RESOURCE_EXHAUSTED, message)
            elif context.has_metadata:
                trailers = OK_TRAILERS + context.trailer_block()
                sender.message(stream, data, context.initial_block(), trailers)
            else:
                sender.message(stream, data)
        except asyncio.CancelledError:
            if stream.deadline_hit:
                sender.status(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")
            # otherwise the client reset the stream or the server is stopping: no answer
        except Exception as exc:
            code, details = context.status
            if not context.aborted:
                log.exception("gRPC %s failed", stream.head.path)
                code = UNKNOWN if code == OK else code
                details = f"Unexpected {type(exc)}: {exc}"
            _status(sender, stream, code, details, context)
        finally:
            if stream.timer is not None:
                stream.timer.cancel()
            if context.has_callbacks:
                try:
                    context.run_callbacks()
                except Exception:
                    log.exception("a done callback of gRPC %s failed", stream.head.path)


def _status(
    sender: Sender, stream: Stream, code: int, details: str, context: ServicerContext
) -> None:
    """End the call with a status and the handler's trailing metadata, if it encodes."""
    try:
        extra = context.trailer_block()
    except Exception:
        log.exception("trailing metadata of gRPC %s cannot be sent", stream.head.path)
        extra = b""
    sender.status(stream, code, details, extra)


def _deadline_passed(stream: Stream) -> None:
    stream.deadline_hit = True
    if stream.task is not None and not stream.task.done():
        stream.task.cancel()
