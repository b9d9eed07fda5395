"""What the dashboard's cluster view costs: how long the gateway's ``GET /status`` takes on a
local two-node Ray cluster (a read asks every replica; answers are shared for 1 s), read
fresh and read while shared, and how many status calls reach the replicas while many pages
poll at once. Prints JSON.

    python -m benchmarks.cluster_status --model-repository /tmp/bench-models [--models 24]
    python -m benchmarks.cluster_status --merge-only   # merging 1,000 models, no cluster

The models are copies of benchmarks.models' ``tiny`` model (as in benchmarks.cluster), each
placed on a replica by one request before measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every raylet on 127.0.0.1

import httpx
from tests.cluster_harness import BackgroundGateway, start_cluster, stop_cluster

from benchmarks.cluster import small_models, touch_all
from benchmarks.models import build_all
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ServerConfig

MiB = 1024 * 1024


def milliseconds(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def timed_get(client: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    client.get(url).raise_for_status()
    return time.perf_counter() - started


def measure(gw: BackgroundGateway, pages: int, seconds: float) -> dict[str, Any]:
    status = gw.server.service.cluster_status  # type: ignore[attr-defined]
    asked: Counter[str] = Counter()
    ask = status._ask

    async def counting(replica: str, method: str, *args: Any) -> Any:
        asked[method] += 1
        return await ask(replica, method, *args)

    status._ask = counting
    url = f"{gw.url}/status"
    with httpx.Client(timeout=30) as client:
        size = len(client.get(url).content)
        fresh = []
        for _ in range(10):
            time.sleep(1.1)  # past the shared answer
            fresh.append(timed_get(client, url))
        shared = [timed_get(client, url) for _ in range(50)]
    asked.clear()
    stop = threading.Event()

    def page() -> None:  # a dashboard polls /status every 2 s; these poll every 0.5 s
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                client.get(url).raise_for_status()
                stop.wait(0.5)

    threads = [threading.Thread(target=page) for _ in range(pages)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started
    replicas = len(gw.server.service.router.replica_ids())
    return {
        "status_bytes": size,
        "fresh_read": milliseconds(fresh),
        "shared_read": milliseconds(shared),
        "pages_polling": pages,
        "page_reads_per_s": round(pages * 2 * seconds / elapsed, 1),
        "status_calls_per_replica_per_s": round(asked["status_report"] / replicas / elapsed, 2),
    }


def merge_cost(models: int, replicas: int) -> dict[str, Any]:
    """The gateway's event-loop time to merge one read: ``replicas`` overviews listing
    ``models`` models each (every replica lists every model; each holds an equal share)."""
    from tfmux.cluster.overview import Gateway, Reading, merge_overview
    from tfmux.cluster.placement import ReplicaSnapshot
    from tfmux.core.status import ModelRow, Overview, VersionRow

    def version(state: str) -> VersionRow:
        return VersionRow(
            1, state, "OK", "", False, MiB, True, 1.0, 0.1, 0, 2.0, 0.0, 1.0, 2.0, 1.0
        )

    readings = []
    for r in range(replicas):
        rows = [
            ModelRow(f"m{i}", False, "lazy", False, None, {}, [], None,
                     [version("AVAILABLE" if i % replicas == r else "START")])
            for i in range(models)
        ]  # fmt: skip
        overview = Overview(0.0, 60.0, MiB, None, True, False, rows, [])
        readings.append(Reading(ReplicaSnapshot(f"r{r}", f"n{r}"), overview))
    gateway = Gateway([], {}, {}, {}, True, False)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        merge_overview(readings, gateway, [], 0.0)
        runs.append(time.perf_counter() - started)
    return {"models": models, "replicas": replicas, "merge": milliseconds(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument(
        "--merge-only", action="store_true", help="only the merge's cost, at 1,000 models"
    )
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.merge_only or args.model_repository is None:
        print(json.dumps([merge_cost(1000, n) for n in (2, 4, 8)], indent=2))
        return
    built = build_all(args.model_repository)
    models = small_models(args.model_repository / "cluster", built["tiny"], args.models)
    config = ServerConfig(
        models=models, memory_budget_bytes=64 * MiB, inference_threads=2, log_level="warning"
    )
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "models": args.models,
        "replicas": 2,
    }
    cluster = start_cluster(nodes=2)
    try:
        settings = ClusterConfig(replicas=2, replica_cpus=0.6, app_name="bench-status")
        with BackgroundGateway(config, settings) as gw:
            touch_all(gw, [m.name for m in models])
            report |= measure(gw, args.pages, args.seconds)
    finally:
        stop_cluster(cluster)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
