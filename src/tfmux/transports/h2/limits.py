"""The limits that make tfmux's own HTTP/2 server safe to expose (``server.h2`` settings).

Every limit is per connection unless its name says otherwise. The defaults follow what nginx,
Go's net/http2 and grpc C-core do and never bother a well-behaved gRPC client (grpcio,
tritonclient, TF Serving's client: 20 MB messages, 64 concurrent calls on one channel).
docs/grpc.md lists them with the attacks they answer.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class H2Limits(BaseModel):
    """Limits of the gRPC port's HTTP/2 server (``grpc_implementation: tfmux``)."""

    model_config = ConfigDict(extra="forbid")

    # Connections and streams.
    max_connections: int = Field(default=1000, ge=1, description="open connections on the port")
    max_concurrent_streams: int = Field(
        default=256, ge=1, description="SETTINGS_MAX_CONCURRENT_STREAMS, advertised and enforced"
    )
    preface_timeout_seconds: float = Field(
        default=10.0, gt=0, description="time a new connection has to send the HTTP/2 preface"
    )
    idle_timeout_seconds: float = Field(
        default=300.0, gt=0, description="a connection without streams this long gets GOAWAY"
    )
    incomplete_request_timeout_seconds: float = Field(
        default=120.0, gt=0, description="a request not fully received this long is ended"
    )
    # Header blocks.
    max_header_block_bytes: int = Field(
        default=64 * KiB, ge=1 * KiB, description="HEADERS + CONTINUATION bytes of one block"
    )
    max_continuation_frames: int = Field(
        default=32, ge=1, description="CONTINUATION frames in one header block"
    )
    # Flow control and buffered request bytes.
    initial_stream_window_bytes: int = Field(
        default=64 * KiB, ge=65_535, le=2**31 - 1, description="SETTINGS_INITIAL_WINDOW_SIZE"
    )
    stream_window_bytes: int = Field(
        default=4 * MiB, ge=64 * KiB, le=2**31 - 1, description="stream window while under caps"
    )
    connection_window_bytes: int = Field(
        default=32 * MiB, ge=64 * KiB, le=2**31 - 1, description="connection receive window"
    )
    connection_buffer_bytes: int = Field(
        default=64 * MiB, ge=1 * MiB, description="unfinished request bytes one connection holds"
    )
    server_buffer_bytes: int = Field(
        default=1 * GiB, ge=1 * MiB, description="unfinished request bytes all connections hold"
    )
    write_buffer_high_bytes: int = Field(
        default=1 * MiB, ge=16 * KiB, description="unsent bytes at which a client stops being read"
    )
    # Floods: frames of each kind a connection may send per flood window beyond what its
    # useful work earned (streams answered, DATA bytes; guard.PER_ANSWER and guard.PER_UNIT).
    # Busy clients are covered by what they earn, so the unearned allowance only bounds what
    # an abusive connection makes the server parse before its GOAWAY (5x less than the 1,000 /
    # 10,000 of fixed counts; netty allows 200 resets per 30 s). Resets: 64, a client's 64
    # concurrent calls all cancelled at once; at 200 each rapid-reset connection cost ~4 ms of
    # parsing and the soak's well-behaved client 2.3-3.2x its p99 (docs/security.md).
    flood_window_seconds: float = Field(default=10.0, gt=0)
    max_resets: int = Field(
        default=64, ge=1, description="RST_STREAM of streams in progress, beyond answers"
    )
    max_pings: int = Field(default=200, ge=1, description="PING frames, beyond those earned")
    max_settings: int = Field(default=100, ge=1, description="SETTINGS, beyond those earned")
    max_empty_frames: int = Field(
        default=100, ge=1, description="empty DATA/HEADERS/CONTINUATION without an end flag"
    )
    max_control_frames: int = Field(
        default=2000, ge=1, description="WINDOW_UPDATE, PRIORITY, ACKs, unknown, beyond earned"
    )
    # Compressed requests.
    inflate_threads: int = Field(
        default=2, ge=1, description="threads that inflate gzip/deflate requests"
    )
