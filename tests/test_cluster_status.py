"""The cluster gateway's status over real replica cores (fake runtime, no Ray): every replica
asked at once and merged, a replica that fails or hangs shown unreachable within the timeout,
answers shared while cached, replica events merged, and the documented shape kept."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tfmux.cluster import status as cluster_status
from tfmux.cluster.overview import Gateway
from tfmux.cluster.placement import ReplicaSnapshot
from tfmux.cluster.replica import Answer, Forwarded, ReplicaCore
from tfmux.cluster.series import merge_history
from tfmux.cluster.status import ClusterStatus
from tfmux.config import ModelConfig, ServerConfig
from tfmux.core.routing import Split
from tfmux.core.status import HistoryReport
from tfmux.core.traffic import Routing
from tfmux.errors import unavailable
from tfmux.transports import status_openapi
from tfmux.transports.tfs_codec import dumps
from tfmux.types import VersionStatus

from .fakes import FakeLoader, make_repository

U = 1024 * 1024
X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


def validate(body: Any, schema: str) -> None:
    """``body`` as JSON against the status API's OpenAPI component ``schema``."""
    jsonschema = pytest.importorskip("jsonschema")
    document = {
        "$ref": f"#/components/schemas/{schema}",
        "components": {"schemas": status_openapi.schemas()},
    }
    jsonschema.Draft202012Validator(document).validate(orjson.loads(dumps(body)))


class Cluster:
    """Two replica cores answering, r3 failing as Ray does for a dead actor, r4 hanging."""

    def __init__(self, root: Path) -> None:
        make_repository(root, {"a": [1], "b": [1]}, size=U)
        self.configs = [ModelConfig(name=n, base_path=root / n, load="lazy") for n in "ab"]
        config = ServerConfig(models=self.configs, memory_budget_bytes=64 * U)
        self.cores = {
            r: ReplicaCore(config, r, f"node-{r}", FakeLoader()) for r in ("r1", "r2", "r4")
        }
        self.failing, self.hanging = {"r3"}, {"r4"}
        self.asked: Counter[tuple[str, str]] = Counter()
        self.live = ["r1", "r2", "r3", "r4"]
        held = (VersionStatus(1, "AVAILABLE", "OK", "", U, True),)
        self.last = {"r3": ReplicaSnapshot("r3", "node-r3", 7, 64 * U, U, {"a": held})}
        self.observed: list[str] = []

    async def ask(self, replica: str, method: str, *args: Any) -> Any:
        self.asked[replica, method] += 1
        if replica in self.failing:
            raise unavailable(f"replica {replica} is unavailable (ActorDiedError); retry")
        if replica in self.hanging:
            await asyncio.sleep(30)
        return await getattr(self.cores[replica], method)(*args)

    def snapshots(self) -> list[ReplicaSnapshot]:
        return [self.last.get(r, ReplicaSnapshot(r, f"node-{r}")) for r in self.live]

    def status(self, **kw: Any) -> ClusterStatus:
        observe = lambda snap: self.observed.append(snap["replica"])  # noqa: E731
        return ClusterStatus(self.ask, self.snapshots, observe, clock=lambda: 1e6, **kw)

    def gateway(self) -> Gateway:
        routing = {"b": Routing({"stable": 1}, Split({"stable": 100.0}))}
        served = {("r1", False): 1, ("r2", False): 1, ("r2", True): 1}
        return Gateway(self.configs, routing, served, {"r2": 1}, True, False)

    async def traffic(self) -> None:
        for replica, model in (("r1", "a"), ("r2", "b"), ("r2", "b")):
            answer = await self.cores[replica].infer(Forwarded(model, None, {"x": X}))
            assert isinstance(answer, Answer), answer
        for core in self.cores.values():
            core.status_board.sample(close=True)  # one history point, no waiting

    def close(self) -> None:
        for core in self.cores.values():
            core.close()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(cluster_status, "STATUS_TIMEOUT", 0.3)
    made = Cluster(tmp_path)
    yield made
    made.close()


def test_every_replica_and_where_each_version_lives(cluster: Cluster) -> None:
    async def scenario() -> None:
        await cluster.traffic()
        status = cluster.status(cache_seconds=60.0)
        gateway = cluster.gateway
        first, again = await asyncio.gather(status.overview(gateway), status.overview(gateway))
        assert again is first  # one read of the replicas, one merge, served both
        await status.overview(gateway)  # and a later one, while it is cached
        assert cluster.asked == Counter({(r, "status_report"): 1 for r in ("r1", "r2", "r3", "r4")})
        assert sorted(cluster.observed) == ["r1", "r2"]  # fresher snapshots for the router

        rows = {r.replica: r for r in first.replicas}
        assert [rows[r].state for r in ("r1", "r2", "r3", "r4")] == ["up"] * 2 + ["unreachable"] * 2
        assert "ActorDiedError" in rows["r3"].message and "0.3 s" in rows["r4"].message
        assert rows["r1"].models == ["a:1"] and rows["r2"].models == ["b:1"]
        assert rows["r3"].models == ["a:1"]  # its last report, shown as such
        assert (rows["r2"].requests, rows["r2"].misses, rows["r2"].inflight) == (2, 1, 1)
        assert rows["r2"].requests_per_second == pytest.approx(2 / 5)
        assert rows["r1"].memory_budget_bytes == 64 * U and rows["r1"].node == "node-r1"

        models = {m.name: m for m in first.models}
        (a,) = models["a"].versions
        (b,) = models["b"].versions
        assert [p.replica for p in a.replicas] == ["r1", "r3"] and models["a"].replicas == [
            "r1",
            "r3",
        ]
        assert [(p.replica, p.state) for p in b.replicas] == [("r2", "AVAILABLE")]
        assert a.state == b.state == "AVAILABLE"
        assert a.memory_bytes is not None and a.memory_bytes >= U  # r1's and r3's, summed
        assert b.requests_per_second == pytest.approx(2 / 5) and b.p50_ms is not None
        assert models["b"].labels == {"stable": 1}
        assert [(arm.arm, arm.version) for arm in models["b"].arms] == [("stable", 1)]
        assert models["b"].arms[0].requests_per_second == b.requests_per_second
        assert first.memory_budget_bytes is None  # r4 never reported its budget
        assert first.memory_used_bytes >= U
        validate(first, "Status")

        messages = [e.message for e in first.events]
        assert any(m.startswith("replica r1: version 1 loaded") for m in messages), messages
        assert "replica r3 is unreachable: replica r3 is unavailable" in " ".join(messages)
        assert any(m == "replica r2 is up (node node-r2)" for m in messages)

        report = await status.history(gateway, ["a"], 5)
        assert report.busiest == ["b", "a"]
        assert report.overall["requests_per_second"][-1] == pytest.approx(3 / 5)
        assert report.models["b"]["requests_per_second"][-1] == pytest.approx(2 / 5)
        validate(report, "History")
        assert cluster.asked[("r1", "history_report")] == 1
        assert cluster.asked[("r3", "history_report")] == 0

    asyncio.run(scenario())


def test_replicas_come_and_go_and_traffic_moves_are_events(cluster: Cluster) -> None:
    async def scenario() -> list[str]:
        status = cluster.status(cache_seconds=0.0)
        gateway = cluster.gateway
        await status.overview(gateway)
        cluster.live = ["r1", "r2"]  # r3 and r4 were removed
        overview = await status.overview(gateway)
        assert [r.replica for r in overview.replicas] == ["r1", "r2"]
        cluster.live = ["r1", "r2", "r4"]
        cluster.hanging.clear()  # r4 is back, and answers
        await status.overview(gateway)
        status.traffic_changed(
            "b", Routing({"stable": 1}), Routing({"stable": 2}, Split({"stable": 1.0}))
        )
        events = await status.events_after(0)
        for event in events:
            validate(event, "Event")
        return [e.message for e in events]

    messages = asyncio.run(scenario())
    assert "replica r3 left the cluster" in messages and "replica r4 left the cluster" in messages
    assert "replica r4 is up (node node-r4)" in messages
    assert "label stable moved from version 1 to 2" in messages
    assert any(m.startswith("split none") for m in messages)


def test_stopping_cancels_the_reads_in_flight(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_status, "STATUS_TIMEOUT", 30.0)

    async def scenario() -> None:
        status = cluster.status()
        reading = asyncio.ensure_future(status.readings())  # r4 hangs: the read waits
        while not cluster.asked[("r4", "status_report")]:
            await asyncio.sleep(0.01)
        await status.stop()  # the gateway stops: the read is not left running
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_merged_history_adds_rates_and_keeps_the_worst_p99() -> None:
    def report(rate: float, p99: float | None, memory: float) -> HistoryReport:
        series: dict[str, list[float | None]] = {
            "requests_per_second": [None, rate],
            "error_rate": [None, 0.0],
            "p50_ms": [None, 1.0 * rate],
            "p99_ms": [None, p99],
            "mean_batch_size": [None, rate],
            "queue_depth": [None, 1.0],
        }
        overall: dict[str, list[float | None]] = {
            "requests_per_second": [None, rate],
            "memory_used_bytes": [memory, memory],
        }
        return HistoryReport(5.0, 2, 10.0, ["m"], overall, {"m": series})

    merged = merge_history([report(1.0, 3.0, 10.0), report(3.0, None, 5.0)], ["m"])
    m = merged.models["m"]
    assert merged.overall["memory_used_bytes"] == [15.0, 15.0]
    assert merged.overall["requests_per_second"] == [None, 4.0]
    assert m["requests_per_second"] == [None, 4.0] and m["queue_depth"] == [None, 2.0]
    assert m["p50_ms"] == [None, pytest.approx((1 * 1 + 3 * 3) / 4)]  # weighted by rate
    assert m["p99_ms"] == [None, 3.0] and m["error_rate"] == [None, 0.0]
    assert merge_history([], []).models == {}
