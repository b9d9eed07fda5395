"""What each port's admission gate decided for new connections, in /metrics.

``tfmux_admission_events_total{port, event}`` counts, per port (``rest``, ``grpc``): ``refused``
(newcomers past the connection limit answered 503 / GOAWAY), ``waited`` (times the acceptor
left newcomers in the kernel's backlog at the limit), ``abuse`` (connections the server closed
for breaking a limit), ``throttled`` (times throttling of newcomers began after abuse) and
``dropped`` (newcomers closed at once while throttled). ``tfmux_admission_throttled_addresses``
is how many client addresses are throttled now (an attack, or a misbehaving client, being held
off), and ``tfmux_admission_throttled{port}`` is 1 while *every* newcomer is throttled (abuse
from many addresses): the alert that says legitimate newcomers are turned away with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tfmux.transports.admission import AdmissionGate


class AdmissionCollector(Collector):
    """Reads the gates at scrape time (``gates()``: port name → gate, None before it starts)."""

    def __init__(self, gates: Callable[[], Mapping[str, AdmissionGate | None]]) -> None:
        self._gates = gates

    def describe(self) -> Iterator[Metric]:
        """The families without samples (what ``register`` checks names with, before the
        servers, and so the gates, exist)."""
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        return self._families(self._gates())

    @staticmethod
    def _families(gates: Mapping[str, AdmissionGate | None]) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "tfmux_admission_events",
            "New connections refused, left waiting, dropped while throttled; abuse closes and "
            "throttling episodes, per port.",
            labels=["port", "event"],
        )
        throttled = GaugeMetricFamily(
            "tfmux_admission_throttled",
            "1 while the port admits every newcomer at the throttled rate (abuse from many "
            "addresses).",
            labels=["port"],
        )
        addresses = GaugeMetricFamily(
            "tfmux_admission_throttled_addresses",
            "Client addresses whose newcomers are admitted at the throttled rate after abuse.",
            labels=["port"],
        )
        for port, gate in gates.items():
            if gate is None:
                continue
            for event, count in sorted(gate.counts.items()):
                events.add_metric([port, event], count)
            throttled.add_metric([port], 1.0 if gate.throttled else 0.0)
            addresses.add_metric([port], gate.throttled_addresses())
        yield events
        yield throttled
        yield addresses
