"""tfmux on a local Ray cluster (several raylets on this machine) against one process.

Measures, in one run: models servable at once by one replica and by two (each with the same
memory budget; the most one replica holds when two share the models), the residency hit rate
under Zipf traffic, loads per model during a burst of first requests, the latency the cluster
path adds over single-process tfmux (same model, same client, sequential REST requests), and
the throughput of a CPU-heavy model (MLP, 32 rows) with
1 and 2 replicas. Keep it short on a shared machine; prints JSON.

    python -m benchmarks.cluster --model-repository /tmp/bench-models [--budget-mib 24]

The repository is built (or reused) with benchmarks.models; the many small models are copies
of its ``tiny`` model under other names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every raylet on 127.0.0.1

import httpx
import numpy as np
from tests.cluster_harness import BackgroundGateway, start_cluster, stop_cluster
from tests.harness import BackgroundServer

from benchmarks.models import build_all, sample_row
from tfmux.cluster.run import deploy
from tfmux.cluster.settings import ClusterConfig
from tfmux.config import ModelConfig, ServerConfig

MiB = 1024 * 1024


def small_models(root: Path, tiny: Path, count: int) -> list[ModelConfig]:
    models = []
    for i in range(count):
        target = root / f"small_{i:02d}" / "1"
        if not target.exists():
            shutil.copytree(tiny, target)
        models.append(ModelConfig(name=f"small_{i:02d}", base_path=target.parent, load="lazy"))
    return models


def body(model: str, rows: int = 1) -> bytes:
    row = sample_row("mlp" if model == "mlp" else "tiny")
    return json.dumps({"instances": [row] * rows}).encode()


def resident(gw: BackgroundGateway, prefix: str) -> int:
    return len(ready(gw, prefix))


def ready(gw: BackgroundGateway, prefix: str) -> list[dict[str, Any]]:
    index = httpx.post(f"{gw.url}/v2/repository/index", timeout=60).json()
    return [e for e in index if e["name"].startswith(prefix) and e["state"] == "READY"]


def touch_all(gw: BackgroundGateway, names: list[str]) -> None:
    with httpx.Client(timeout=120) as client:
        for name in names:
            r = client.post(f"{gw.url}/v1/models/{name}:predict", content=body(name))
            r.raise_for_status()


def unload(gw: BackgroundGateway, name: str) -> None:
    httpx.post(f"{gw.url}/v2/repository/models/{name}/unload", timeout=120).raise_for_status()


def throughput(url: str, model: str, seconds: float, clients: int = 8) -> float:
    async def run() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=120) as client:

            async def worker() -> None:
                nonlocal done
                payload = body(model, 32)
                while time.monotonic() < deadline:
                    r = await client.post(f"{url}/v1/models/{model}:predict", content=payload)
                    r.raise_for_status()
                    done += 1

            await asyncio.gather(*(worker() for _ in range(clients)))
        return done

    return asyncio.run(run()) / seconds


def latencies(url: str, model: str, count: int) -> list[float]:
    out = []
    with httpx.Client(timeout=60) as client:
        payload = body(model)
        for _ in range(count):
            started = time.perf_counter()
            client.post(f"{url}/v1/models/{model}:predict", content=payload).raise_for_status()
            out.append(time.perf_counter() - started)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def hit_rate(gw: BackgroundGateway, names: list[str], requests: int, seed: int = 11) -> float:
    rng = np.random.default_rng(seed)
    weights = np.array([1 / (i + 1) ** 1.1 for i in range(len(names))])
    before = dict(gw.server.service.served)
    with httpx.Client(timeout=120) as client:
        for name in rng.choice(names, size=requests, p=weights / weights.sum()):
            r = client.post(f"{gw.url}/v1/models/{name}:predict", content=body(str(name)))
            r.raise_for_status()
    after = gw.server.service.served
    hits = sum(n - before.get(k, 0) for k, n in after.items() if k[1])
    return hits / requests


def burst_loads(gw: BackgroundGateway, name: str, clients: int = 32) -> dict[str, Any]:
    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=120) as client:
            url = f"{gw.url}/v1/models/{name}:predict"
            answers = await asyncio.gather(
                *(client.post(url, content=body(name)) for _ in range(clients))
            )
        return [a.headers["x-tfmux-replica"] for a in answers if a.status_code == 200]

    served = asyncio.run(run())
    holders = [s.replica for s in gw.server.service.snapshots() if s.holds(name)]
    return {"requests": clients, "answered": len(served), "replicas_loaded": len(holders)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--budget-mib", type=int, default=24)
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    built = build_all(args.model_repository)
    models = small_models(args.model_repository / "cluster", built["tiny"], args.models)
    names = [m.name for m in models]
    mlp = ModelConfig(name="mlp", base_path=built["mlp"].parent, load="lazy")
    tiny = ModelConfig(name="tiny", base_path=built["tiny"].parent, load="lazy")
    config = ServerConfig(
        models=[*models, mlp, tiny],
        memory_budget_bytes=args.budget_mib * MiB,
        inference_threads=2,
        log_level="warning",
    )
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "budget_per_replica_mib": args.budget_mib,
        "small_models": args.models,
    }
    started = time.monotonic()
    cluster = start_cluster(nodes=2)
    report["cluster_start_s"] = round(time.monotonic() - started, 1)
    settings = ClusterConfig(
        replicas=1, replica_cpus=0.6, app_name="bench", hot_inflight=2, spread_after_s=0.5
    )
    try:
        started = time.monotonic()
        with BackgroundGateway(config, settings) as gw:
            report["deploy_s"] = round(time.monotonic() - started, 1)
            touch_all(gw, ["mlp"])
            mlp_one = throughput(gw.url, "mlp", args.seconds)
            deploy(gw.config, settings.model_copy(update={"replicas": 2}))
            while len(gw.server.service.router.replica_ids()) < 2:
                time.sleep(0.5)
            time.sleep(2)  # its first snapshot
            throughput(gw.url, "mlp", 3)  # the hot model spreads to the second replica
            mlp_two = throughput(gw.url, "mlp", args.seconds)
            mlp_holders = len([s for s in gw.server.service.snapshots() if s.holds("mlp")])
            report["mlp_32rows_req_per_s"] = {
                "1_replica": round(mlp_one, 1),
                "2_replicas": round(mlp_two, 1),
                "ratio": round(mlp_two / mlp_one, 2),
                "replicas_holding_mlp": mlp_holders,
            }
            unload(gw, "mlp")
            touch_all(gw, names)
            touch_all(gw, names)
            per_replica = [
                sum(1 for m in names if s.available(m)) for s in gw.server.service.snapshots()
            ]
            sizes = [e["memory_bytes"] for e in ready(gw, "small_") if e.get("memory_bytes")]
            report["small_model_mib"] = round(statistics.median(sizes) / MiB, 1) if sizes else None
            report["models_servable"] = {
                "1_replica": max(per_replica),
                "2_replicas": resident(gw, "small_"),
                "per_replica": per_replica,
            }
            report["zipf_hit_rate_2_replicas"] = round(hit_rate(gw, names, 400), 3)
            report["burst_first_requests"] = burst_loads(gw, "tiny")
            cluster_lat = latencies(gw.url, "tiny", 300)
        single_config = ServerConfig(models=[tiny], inference_threads=2, log_level="warning")
        with BackgroundServer(single_config) as single:
            latencies(single.url, "tiny", 30)
            single_lat = latencies(single.url, "tiny", 300)
        report["tiny_rest_latency_ms"] = {
            "single_process": {
                "p50": round(percentile(single_lat, 50), 2),
                "p99": round(percentile(single_lat, 99), 2),
            },
            "cluster": {
                "p50": round(percentile(cluster_lat, 50), 2),
                "p99": round(percentile(cluster_lat, 99), 2),
            },
            "added_p50": round(percentile(cluster_lat, 50) - percentile(single_lat, 50), 2),
            "mean_ratio": round(statistics.mean(cluster_lat) / statistics.mean(single_lat), 1),
        }
    finally:
        stop_cluster(cluster)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
