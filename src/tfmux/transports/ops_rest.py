"""Health and metrics endpoints: /v2/health/live, /v2/health/ready, /metrics."""

from __future__ import annotations

from collections.abc import Callable

from tfmux.transports.rest import Handler, Request, Response

TEXT = b"text/plain; charset=utf-8"
METRICS_PATHS = ("/metrics", "/monitoring/prometheus/metrics")


class OpsRest:
    """Liveness (the process answers), readiness (eager loads have ended) and metrics."""

    def __init__(
        self,
        ready: Callable[[], bool],
        render_metrics: Callable[[], bytes],
        content_type: str,
        metrics_path: str | None = None,
    ) -> None:
        """``metrics_path``: one more path serving the metrics (TF Serving's monitoring
        config names one)."""
        self._ready = ready
        self._metrics_paths = (*METRICS_PATHS, metrics_path) if metrics_path else METRICS_PATHS
        self._render = render_metrics
        self._metrics_type = content_type.encode()

    def route(self, method: str, path: str) -> Handler | None:
        if method != "GET":
            return None
        if path == "/v2/health/live":
            return self._live
        if path == "/v2/health/ready":
            return self._readiness
        if path in self._metrics_paths:
            return self._metrics
        return None

    async def _live(self, request: Request) -> Response:
        return Response(200, b"", TEXT)

    async def _readiness(self, request: Request) -> Response:
        return Response(200 if self._ready() else 503, b"", TEXT)

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self._render(), self._metrics_type)
