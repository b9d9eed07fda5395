"""What the HTTP/2 server's limits did: connections closed by reason and other limit hits,
as Prometheus counters (fixed label sets) and rate-limited log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("tfmux.grpc.h2")

# Why a connection was closed by the server (label values of the closed counter).
CLOSE_REASONS = (
    "protocol_error",
    "flow_control_error",
    "frame_size_error",
    "compression_error",
    "header_block_too_large",
    "flood_resets",
    "flood_pings",
    "flood_settings",
    "flood_empty_frames",
    "flood_control_frames",
    "preface_timeout",
    "idle_timeout",
    "connection_limit",
    "internal_error",
)
# Limits that act on one stream or pause a connection (label values of the hits counter).
HIT_REASONS = (
    "max_concurrent_streams",
    "connection_buffer",
    "server_buffer",
    "incomplete_request_timeout",
    "message_too_large",
    "inflated_too_large",
    "write_backpressure",
)
_LOG_EVERY = 10.0  # seconds between log lines of one reason
# Closes that are not the client's abuse (the rest make the acceptor throttle newcomers).
_NOT_ABUSE = frozenset(("idle_timeout", "connection_limit", "internal_error"))


class H2Stats:
    """Counters shared by a server's connections."""

    def __init__(self) -> None:
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self.hits = dict.fromkeys(HIT_REASONS, 0)
        self._logged: dict[str, tuple[float, int]] = {}
        # the admission gate's note_abuse, given the client's address
        self.on_abuse: Callable[[str | None], None] | None = None

    def connection_closed(
        self, reason: str, peer: str, detail: str, address: str | None = None
    ) -> None:
        self.closed[reason if reason in self.closed else "internal_error"] += 1
        if self.on_abuse is not None and reason not in _NOT_ABUSE:
            self.on_abuse(address)
        self._log(reason, f"closed HTTP/2 connection from {peer}: {reason} ({detail})")

    def hit(self, reason: str, peer: str, detail: str) -> None:
        self.hits[reason] += 1
        if reason != "write_backpressure":  # normal for large answers: not worth a line
            self._log(reason, f"HTTP/2 limit {reason} hit by {peer}: {detail}")

    def _log(self, reason: str, line: str) -> None:
        """At most one line per reason every 10 s, saying how many were not logged."""
        now = time.monotonic()
        last, skipped = self._logged.get(reason, (0.0, 0))
        if now - last < _LOG_EVERY and last:
            self._logged[reason] = (last, skipped + 1)
            return
        self._logged[reason] = (now, 0)
        suffix = f" (and {skipped} more since the last line)" if skipped else ""
        log.warning("%s%s", line, suffix)


class H2Collector(Collector):
    """The counters for a Prometheus registry."""

    def __init__(self, stats: H2Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        closed = CounterMetricFamily(
            "tfmux_grpc_connections_closed",
            "gRPC (HTTP/2) connections the server closed because of a limit or protocol error.",
            labels=["reason"],
        )
        for reason, count in self._stats.closed.items():
            closed.add_metric([reason], count)
        yield closed
        hits = CounterMetricFamily(
            "tfmux_grpc_limit_hits",
            "gRPC (HTTP/2) limits that ended or refused one stream, or paused reading a client.",
            labels=["limit"],
        )
        for reason, count in self._stats.hits.items():
            hits.add_metric([reason], count)
        yield hits
