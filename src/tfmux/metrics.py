"""Prometheus metrics, defined once, fed by the core's Observer events and state snapshots.

Bounded for thousands of models (a scrape of 1,000 models measured in docs/memory.md): a
request for a model the server does not serve is counted under the model label ``_unknown``
(never one series per made-up name); histograms (request latency, load time) are kept per model
for the first ``histogram_models`` models that report one, the rest share the label ``_other``;
counters and state gauges stay per model. ``_created`` series are not exposed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Summary,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tfmux import histograms
from tfmux.core.manager import ModelManager

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_MODEL = "_unknown"  # the model label of requests for models the server does not serve
OTHER_MODELS = "_other"  # the model label of histograms beyond ``histogram_models``
HISTOGRAM_MODELS = 32  # default: models with histograms of their own

disable_created_metrics()  # a ``_created`` line per series doubles the scrape, for no use here


class Metrics:
    """The server's metrics in a registry of its own (several servers may share a process)."""

    def __init__(self, histogram_models: int = HISTOGRAM_MODELS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._histogram_models = histogram_models
        self._detailed: set[str] = set()  # models with histograms of their own
        self._detailed_lock = threading.Lock()
        self._known: Callable[[str], bool] = lambda name: True
        self.requests = Counter(
            "tfmux_requests",
            "Requests by model, version, method and outcome (OK or the error kind).",
            ["model", "version", "method", "code"],
            registry=self.registry,
        )
        self.latency = histograms.Histogram(
            "tfmux_request_latency_seconds",
            "Time from a request reaching the core until its answer, by model and version "
            "(model _other: models beyond the histogram limit).",
            ["model", "version", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "tfmux_model_loads",
            "Model version loads by outcome (OK or the error kind).",
            ["model", "version", "code"],
            registry=self.registry,
        )
        self.load_seconds = histograms.Histogram(
            "tfmux_model_load_seconds",
            "Time to load a model version (model _other: models beyond the histogram limit).",
            ["model", "version"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )

        self.batch_size = histograms.Histogram(
            "tfmux_batch_size",
            "Rows per batch run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = histograms.Histogram(
            "tfmux_batch_requests",
            "Requests merged into one batch.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = histograms.Histogram(
            "tfmux_queue_seconds",
            "Time a request waited in its model's batch queue.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped = Counter(
            "tfmux_requests_dropped",
            "Queued requests dropped: queue_full (rejected), deadline (expired), cancelled.",
            ["model", "version", "reason"],
            registry=self.registry,
        )

        self.routes = Counter(
            "tfmux_routed_requests",
            "Requests that named only the model (or alias), by the split arm and version chosen.",
            ["model", "arm", "version"],
            registry=self.registry,
        )
        self.shadows = Counter(
            "tfmux_shadow_requests",
            "Mirrored requests by outcome: agree, disagree, error, dropped (over its budget).",
            ["model", "version", "shadow_version", "outcome"],
            registry=self.registry,
        )
        self.shadow_diff = Summary(
            "tfmux_shadow_mean_abs_diff",
            "Mean absolute difference between shadow and primary, per numeric output.",
            ["model", "version", "shadow_version", "output"],
            registry=self.registry,
        )

        # Label children looked up once per label set: ``labels()`` costs more than the update.
        self._done: dict[tuple[str, str, str, str | None], tuple[Any, Any]] = {}
        self._batches: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def watch(self, manager: ModelManager) -> None:
        """Report model states read from ``manager`` at each scrape; label values only for the
        models it serves."""
        self.registry.register(_StateCollector(manager))
        self._known = manager.serves

    def _histogram_labels(self, name: str, version: str) -> tuple[str, str]:
        """Labels of a histogram series: the model's own for the first ``histogram_models``
        models, ``_other`` (and no version) for the rest. Called only when a child is made."""
        with self._detailed_lock:
            if name not in self._detailed and len(self._detailed) < self._histogram_models:
                self._detailed.add(name)
            detailed = name in self._detailed
        return (name, version) if detailed else (OTHER_MODELS, "")

    # Observer protocol -------------------------------------------------------------------

    def model_loaded(self, name: str, version: int, seconds: float, error: str | None) -> None:
        v = str(version)
        self.loads.labels(name, v, error or "OK").inc()
        self.load_seconds.labels(*self._histogram_labels(name, v)).observe(seconds)

    def request_done(
        self, name: str, version: str, method: str, seconds: float, error: str | None
    ) -> None:
        key = (name, version, method, error)
        children = self._done.get(key)
        if children is None and not self._known(name):
            # One series for every made-up name, and no cache entry per name.
            key = (UNKNOWN_MODEL, "", method, error)
            name, version = UNKNOWN_MODEL, ""
            children = self._done.get(key)
        if children is None:
            latency = None
            if error is None:
                latency = self.latency.labels(*self._histogram_labels(name, version), method)
            children = (self.requests.labels(name, version, method, error or "OK"), latency)
            self._done[key] = children
        count, latency = children
        count.inc()
        if latency is not None:
            latency.observe(seconds)

    def batch_ran(
        self, name: str, version: str, rows: int, requests: int, queue_seconds: list[float]
    ) -> None:
        children = self._batches.get((name, version))
        if children is None:
            labels = self._histogram_labels(name, version)
            children = (
                self.batch_size.labels(*labels),
                self.batch_requests.labels(*labels),
                self.queue_seconds.labels(*labels),
            )
            self._batches[name, version] = children
        size, merged, queue = children
        size.observe(rows)
        merged.observe(requests)
        queue.observe_many(queue_seconds)

    def request_dropped(self, name: str, version: str, reason: str) -> None:
        self.dropped.labels(name, version, reason).inc()

    def routed(self, name: str, arm: str, version: str) -> None:
        self.routes.labels(name, arm, version).inc()

    def shadow_done(
        self, name: str, version: str, shadow_version: str, outcome: str, diffs: dict[str, float]
    ) -> None:
        self.shadows.labels(name, version, shadow_version, outcome).inc()
        for output, diff in diffs.items():
            self.shadow_diff.labels(name, version, shadow_version, output).observe(diff)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Reads model states and queue depths at scrape time (on the event loop)."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("tfmux_models_loaded", "Model versions currently AVAILABLE.")
        state = GaugeMetricFamily(
            "tfmux_model_version_state",
            "1 for the state each served model version is in.",
            labels=["model", "version", "state"],
        )
        memory = GaugeMetricFamily(
            "tfmux_model_memory_bytes",
            "Memory a loaded model version costs (measured, or estimated when loads overlapped).",
            labels=["model", "version", "measured"],
        )
        budget = self._manager.budget
        used = GaugeMetricFamily("tfmux_memory_used_bytes", "Memory charged to loaded models.")
        used.add_metric([], budget.used())
        limit = GaugeMetricFamily("tfmux_memory_budget_bytes", "The memory budget (0: none).")
        limit.add_metric([], budget.limit or 0)
        depth = GaugeMetricFamily(
            "tfmux_queue_depth",
            "Requests waiting in a model version's batch queues.",
            labels=["model", "version"],
        )
        count = 0
        for served in self._manager.models():
            for version, mv in served.versions.items():
                s = mv.state.value
                count += s == "AVAILABLE"
                labels = [served.config.name, str(version)]
                state.add_metric([*labels, s], 1)
                status = mv.status()
                if status.memory_bytes is not None:
                    measured = "true" if status.memory_measured else "false"
                    memory.add_metric([*labels, measured], status.memory_bytes)
                if mv.batchers:  # only versions with batch queues (loaded, batching on)
                    queued = sum(b.statistics().queued for b in list(mv.batchers.values()))
                    depth.add_metric(labels, queued)
        loaded.add_metric([], count)
        yield loaded
        yield state
        yield depth
        yield memory
        yield used
        yield limit
