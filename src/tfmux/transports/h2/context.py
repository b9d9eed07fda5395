"""The ServicerContext tfmux's own server hands to servicers: the part of
``grpc.aio.ServicerContext`` a unary RPC can use, with grpc.aio's semantics (``abort`` raises
``grpc.aio.AbortError`` and its status wins; ``set_code`` + an exception answers that code).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc

from tfmux.transports.h2 import frames as f
from tfmux.transports.h2.headers import Metadata
from tfmux.transports.h2.stream import Stream

MetadataPairs = Sequence[tuple[str, str | bytes]]


def code_number(code: Any) -> int:
    """A ``grpc.StatusCode`` (or a plain int) as the wire's number."""
    return int(code.value[0]) if isinstance(code, grpc.StatusCode) else int(code)


class ServicerContext:
    """One call's context. Duck-types ``grpc.aio.ServicerContext`` for unary handlers."""

    __slots__ = (
        "_callbacks",
        "_code",
        "_details",
        "_initial",
        "_peer",
        "_trailing",
        "aborted",
        "stream",
    )

    def __init__(self, stream: Stream, peer: str) -> None:
        self.stream = stream
        self._peer = peer
        self._code: Any = grpc.StatusCode.OK
        self._details = ""
        self.aborted = False
        self._initial: MetadataPairs = ()
        self._trailing: MetadataPairs = ()
        self._callbacks: list[Callable[[Any], None]] | None = None

    # -- status ------------------------------------------------------------------------

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: MetadataPairs = ()
    ) -> NoReturn:
        """End the RPC with ``code``: raises ``grpc.aio.AbortError``, which must propagate."""
        if self.aborted:
            raise grpc.aio.UsageError("Abort already called!")
        self.aborted = True
        self._code = code
        if details or not self._details:
            self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError("Locally aborted.")

    async def abort_with_status(self, status: Any) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    @property
    def status(self) -> tuple[int, str]:
        return code_number(self._code), self._details

    # -- metadata ----------------------------------------------------------------------

    def invocation_metadata(self) -> Metadata:
        return self.stream.head.metadata

    async def send_initial_metadata(self, metadata: MetadataPairs) -> None:
        self._initial = tuple(metadata)

    def set_trailing_metadata(self, metadata: MetadataPairs) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> MetadataPairs:
        return self._trailing

    @property
    def has_metadata(self) -> bool:
        return bool(self._initial or self._trailing)

    @property
    def has_callbacks(self) -> bool:
        return self._callbacks is not None

    def initial_block(self) -> bytes:
        """The response head, with any initial metadata the handler sent."""
        return f.RESPONSE_HEAD + _encode(self._initial)

    def trailer_block(self) -> bytes:
        """Trailing metadata as header fields (empty when none was set)."""
        return _encode(self._trailing)

    # -- the call ----------------------------------------------------------------------

    def time_remaining(self) -> float | None:
        deadline = self.stream.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def cancelled(self) -> bool:
        return self.stream.cancelled or self.stream.deadline_hit

    def done(self) -> bool:
        return self.stream.closed

    def set_compression(self, compression: Any) -> None:
        """Responses are sent uncompressed; accepted for compatibility."""

    def disable_next_message_compression(self) -> None:
        """Responses are sent uncompressed; accepted for compatibility."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def run_callbacks(self) -> None:
        for callback in self._callbacks or ():
            callback(self)

    async def read(self) -> NoReturn:
        raise grpc.aio.UsageError("read() is for streaming requests; this call is unary")

    async def write(self, message: Any) -> NoReturn:
        raise grpc.aio.UsageError("write() is for streaming responses; this call is unary")


def _encode(metadata: MetadataPairs) -> bytes:
    out = []
    for key, value in metadata:
        name = key.lower().encode("ascii")
        if isinstance(value, bytes):
            raw = base64.b64encode(value).rstrip(b"=")
        else:
            raw = value.encode("latin-1")
        out.append(f.literal(name, raw))
    return b"".join(out)
