"""tfmux's own gRPC server: unary gRPC over cleartext HTTP/2 (h2c) on asyncio.

Why it exists: grpc.aio measured about 190 µs of library overhead per unary call on one core
(≈5,300 calls/s with a handler that does nothing); this server runs the same generated
servicers with a fraction of that. See docs/grpc.md.

Modules: ``frames`` (frame layout, HPACK literals), ``headers`` (HPACK decoding with a cache,
request heads), ``stream`` (stream state, flow-controlled sending), ``connection`` (the
asyncio Protocol), ``rpc`` (method table, message framing, one task per call), ``context``
(the ServicerContext), ``server`` (listen, graceful stop).
"""

from tfmux.transports.h2.server import H2GrpcServer

__all__ = ["H2GrpcServer"]
