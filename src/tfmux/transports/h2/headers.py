"""Request header blocks: HPACK decoding (the ``hpack`` package) behind a per-connection cache,
and what a gRPC server reads from the headers (path, deadline, encoding, metadata).

A client sends the same header block bytes for every call of a method once its dynamic table
holds the values, so a block that did not change the dynamic table decodes to the same headers
for as long as the table stays as it is. The cache maps such blocks to their parsed
``RequestHead``; any block that changes the table clears it.
"""

from __future__ import annotations

import base64
from typing import Any

import hpack

from tfmux.transports.h2.frames import COMPRESSION_ERROR, H2Error

_CACHE_ENTRIES = 64
_CACHE_BLOCK_BYTES = 2048
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# Headers gRPC itself consumes; everything else (including user-agent) is call metadata.
_NOT_METADATA = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"}
)

_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

Metadata = tuple[tuple[str, str | bytes], ...]


class RequestHead:
    """The parts of a request's headers the server uses. Shared by every call whose header
    block was byte-identical, so it is never mutated after parsing."""

    __slots__ = (
        "_metadata",
        "content_length",
        "encoding",
        "headers",
        "malformed",
        "path",
        "problem",
        "timeout",
    )

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.path = ""
        self.timeout: float | None = None
        self.encoding: bytes | None = None
        self.problem: int | None = None  # an HTTP status for requests that are not gRPC
        self.malformed = _malformed(headers)  # RFC 9113 §8.1.1: answered RST(PROTOCOL_ERROR)
        self.content_length: int | None = None  # the DATA bytes the request must carry
        self._metadata: Metadata | None = None
        method = content_type = path = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                self.timeout = parse_timeout(value)
            elif name == b"grpc-encoding":
                self.encoding = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() and len(value) <= 18 else -1
                if length < 0 or self.content_length not in (None, length):
                    self.malformed = True  # not a number, or two that differ (RFC 9110 §8.6)
                self.content_length = length
        if path is None:
            self.problem = 400
        elif method != b"POST":
            self.problem = 405
        elif content_type is None or not content_type.startswith(b"application/grpc"):
            self.problem = 415
        else:
            self.path = path.decode("latin-1")

    @property
    def metadata(self) -> Metadata:
        """Call metadata as grpc.aio gives it: str values, bytes for ``-bin`` keys."""
        if self._metadata is None:
            pairs: list[tuple[str, str | bytes]] = []
            for name, value in self.headers:
                if name.startswith(b":") or name in _NOT_METADATA:
                    continue
                key = name.decode("latin-1")
                if key.endswith("-bin"):
                    pairs.append((key, _unbase64(value)))
                else:
                    pairs.append((key, value.decode("latin-1")))
            self._metadata = tuple(pairs)
        return self._metadata


def _malformed(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request head RFC 9113 §8.2-8.3 calls malformed: unknown, repeated or late
    pseudo-headers, upper-case or connection-specific names, ``te`` other than trailers,
    a missing or empty ``:method``, ``:scheme`` or ``:path``."""
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in seen:
                return True
            seen.add(name)
            if not value and name != b":authority":
                return True
        else:
            regular = True
            if name != name.lower() or name in _CONNECTION_SPECIFIC:
                return True
            if name == b"te" and value != b"trailers":
                return True
    return not {b":method", b":scheme", b":path"} <= seen


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1-8 digits and a unit) in seconds; None when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not 0 < len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


def _unbase64(value: bytes) -> bytes:
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return value


class HeaderDecoder:
    """One connection's HPACK decoder with the block → RequestHead cache."""

    def __init__(self, max_header_list: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list)
        self._table: Any = self._decoder.header_table
        self._cache: dict[bytes, RequestHead] = {}

    def decode(self, block: bytes) -> RequestHead:
        head = self._cache.get(block)
        if head is not None:
            return head
        entries = self._table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, self._table.maxsize)
        try:
            headers = self._decoder.decode(block, raw=True)
        except Exception as exc:  # HPACK state is unusable after any decoding error
            raise H2Error(COMPRESSION_ERROR, f"cannot decode header block: {exc}") from None
        head = RequestHead([(bytes(n), bytes(v)) for n, v in headers])
        first = entries[0] if entries else None
        if len(entries) != before[0] or first is not before[1] or self._table.maxsize != before[2]:
            self._cache.clear()  # the table changed: cached blocks may now mean other headers
        elif len(block) <= _CACHE_BLOCK_BYTES:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[block] = head
        return head
