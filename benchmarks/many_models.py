"""Many models on one machine: loads, eviction and metrics against TensorFlow's loader and LRU.

Setup (issue 13): ``--names`` model names (default 1,000), each a lazy SavedModel of ~4 MiB
(one float32 variable of 1024x1024, ten distinct weight sets), a memory budget for ~7% of them,
requests drawn Zipf(``--exponent``, default 1.1) over the names from ``--clients`` (8) REST
clients for ``--seconds`` per configuration. Two farms:

- ``shared``: every name is the same export with one of the ten weight sets (per-customer
  fine-tunes of one architecture);
- ``distinct``: every name has a graph of its own (an unconnected constant added), so nothing
  can be shared.

Configurations, each in a fresh ``tfmux serve``: the baseline (``--no-share-graphs``:
TensorFlow's v1 loader for every load, ``--eviction-policy lru``) and tfmux's defaults
(shared graphs, TinyLFU). Reported: requests/s, hit rate (1 - loads/requests) against offline
replays of the issued sequence (LRU, TinyLFU, Belady's optimum), hit and miss latency (one
client checks the model's state before each request), loads/s, peak RSS above the empty
server against the budget, the /metrics size; plus load times in one process, alternating,
by model size: TensorFlow's v1 loader, tfmux distinct graph, tfmux shared graph (each to
the first answer).

    python benchmarks/many_models.py [--names 1000] [--seconds 20] [--farm shared,distinct]

Writes benchmarks/results/many-models-latest.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.memory_tools import (  # noqa: E402
    ROOT,
    build_weights_model,
    percentile_ms,
    server_env,
    tfmux_server,
    zipf_probabilities,
)
from tfmux.core.eviction import optimal_replay, replay  # noqa: E402

MiB = 1024 * 1024
SIDE = 1024  # 4 MiB of float32
WEIGHT_SETS = 10
RESULT = ROOT / "benchmarks" / "results" / "many-models-latest.json"
ROW = [[1.0]]


# -- the farm ------------------------------------------------------------------------------


def build_base(work: Path, side: int) -> tuple[Path, list[Path]]:
    """One export of the weights model and WEIGHT_SETS variable directories for it."""
    base = work / f"base-{side}"
    marker = base / ".built"
    if not marker.is_file():
        shutil.rmtree(base, ignore_errors=True)
        build_weights_model(base / "export", side)
        import tensorflow as tf

        for k in range(WEIGHT_SETS):
            values = np.full((side, side), (k + 1) / side**2, np.float32)
            checkpoint = tf.train.Checkpoint(w=tf.Variable(values))
            checkpoint.write(str(base / f"weights{k}" / "variables" / "variables"))
        marker.touch()
    return base / "export", [base / f"weights{k}" for k in range(WEIGHT_SETS)]


def build_farm(work: Path, kind: str, names: int, side: int = SIDE) -> Path:
    """``work/farm-KIND-N/<name>/1``: saved_model.pb (shared: the export's; distinct: the
    export's plus an unconnected constant naming the model) and variables/ linking to one of
    the weight sets."""
    farm = work / f"farm-{kind}-{names}-{side}"
    if (farm / ".built").is_file():
        return farm
    shutil.rmtree(farm, ignore_errors=True)
    export, weights = build_base(work, side)
    from tensorflow.core.protobuf import saved_model_pb2

    original = (export / "saved_model.pb").read_bytes()
    for i in range(names):
        version = farm / f"m{i:04d}" / "1"
        version.mkdir(parents=True)
        if kind == "shared":
            (version / "saved_model.pb").write_bytes(original)
        else:
            saved = saved_model_pb2.SavedModel.FromString(original)
            node = saved.meta_graphs[0].graph_def.node.add()
            node.name, node.op = f"bench_unique_{i}", "NoOp"
            (version / "saved_model.pb").write_bytes(saved.SerializeToString())
        (version / "variables").symlink_to(weights[i % WEIGHT_SETS] / "variables")
    (farm / ".built").touch()
    return farm


# -- load times, in one process --------------------------------------------------------------


def load_times(work: Path, repeats: int) -> dict[str, Any]:
    """Run ``--worker loads`` in a fresh process (oneDNN off, as the server)."""
    command = [sys.executable, str(Path(__file__)), "--worker", "loads", "--work", str(work)]
    command += ["--repeats", str(repeats)]
    out = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=server_env(False), check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def loads_worker(work: Path, repeats: int) -> dict[str, Any]:
    """Per size: TensorFlow's v1 loader (graph, session, restore, init) then one call; tfmux's
    session runtime on a distinct graph; tfmux on a graph another loaded version shares.
    Alternating, medians and p90 in ms."""
    import gc

    from tfmux.demo import import_tensorflow
    from tfmux.runtimes.tf1 import TF1Runtime

    tf = import_tensorflow()
    gc.collect()
    gc.freeze()
    x = np.asarray(ROW, np.float32)
    results: dict[str, Any] = {}
    for side in (100, 1024, 2048):
        size = f"{side * side * 4 / MiB:.2f} MiB"
        shared_farm = build_farm(work, "shared", 2 * repeats + 1, side)
        distinct_farm = build_farm(work, "distinct", repeats + 1, side)
        keep = TF1Runtime().load(shared_farm / "m0000" / "1")  # the graph stays in use
        times: dict[str, list[float]] = {"tensorflow": [], "tfmux_distinct": [], "tfmux_shared": []}
        for i in range(1, repeats + 1):
            started = time.perf_counter()
            graph = tf.Graph()
            session = tf.compat.v1.Session(graph=graph)
            with graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(
                    session, ["serve"], str(shared_farm / f"m{repeats + i:04d}" / "1")
                )
            signature = meta.signature_def["serving_default"]
            session.run(signature.outputs["y"].name, {signature.inputs["x"].name: x})
            times["tensorflow"].append(time.perf_counter() - started)
            session.close()
            for kind, farm in (("tfmux_distinct", distinct_farm), ("tfmux_shared", shared_farm)):
                started = time.perf_counter()
                model = TF1Runtime().load(farm / f"m{i:04d}" / "1")
                model.run("serving_default", {"x": x})
                times[kind].append(time.perf_counter() - started)
                model.close()
        keep.close()
        results[size] = {
            kind: {"p50_ms": percentile_ms(t, 50), "p90_ms": percentile_ms(t, 90)}
            for kind, t in times.items()
        }
    return results


# -- traffic ---------------------------------------------------------------------------------


def traffic(
    farm: Path, work: Path, config: str, args: argparse.Namespace, budget: int
) -> dict[str, Any]:
    names = sorted(p.name for p in farm.iterdir() if p.is_dir())
    probabilities = zipf_probabilities(len(names), args.exponent)
    rng = np.random.default_rng(args.seed)
    options = ["--model-repository", str(farm), "--load", "lazy"]
    options += ["--memory-budget", str(budget), "--max-batch-size", "1"]
    if config == "baseline":
        options += ["--no-share-graphs", "--eviction-policy", "lru"]
    else:
        options += ["--share-graphs", "--eviction-policy", "tinylfu"]
    issued: list[tuple[float, str]] = []
    latencies: list[float] = []
    hits: list[float] = []
    misses: list[float] = []
    errors = 0
    lock = threading.Lock()
    with tfmux_server(options, work / f"serve-{farm.name}-{config}.log") as server:
        empty = server.rss()
        peak = empty
        stop = time.monotonic() + args.seconds
        loads_before = _loads(server)

        def client(index: int) -> None:
            nonlocal errors
            picks = np.random.default_rng(args.seed * 100 + index).choice(
                len(names), 1_000_000, p=probabilities
            )
            with httpx.Client(base_url=server.client.base_url, timeout=120) as http:
                for pick in picks:
                    if time.monotonic() > stop:
                        return
                    name = names[pick]
                    hit = None
                    if index == 0:  # the probing client
                        body = http.get(f"/v1/models/{name}").json()
                        hit = body["model_version_status"][0]["state"] == "AVAILABLE"
                    started = time.perf_counter()
                    response = http.post(f"/v1/models/{name}:predict", json={"instances": ROW})
                    seconds = time.perf_counter() - started
                    with lock:
                        issued.append((started, name))
                        latencies.append(seconds)
                        errors += response.status_code != 200
                        if hit is not None:
                            (hits if hit else misses).append(seconds)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, server.rss())
            time.sleep(0.05)
        loads = _loads(server) - loads_before
        scrape = len(server.client.get("/metrics").content)
        used = sum(server.metric("tfmux_memory_used_bytes").values())
        resident = len(server.client.post("/v2/repository/index", json={"ready": True}).json())
    del rng
    sequence = [name for _, name in sorted(issued)]
    unit = {name: 1 for name in names}
    fits = int(budget / args.model_cost)
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "requests_per_s": n / args.seconds,
        "hit_rate": 1 - loads / n if n else 0.0,
        "replay_lru": replay("lru", sequence, unit, fits),
        "replay_tinylfu": replay("tinylfu", sequence, unit, fits),
        "replay_optimal": optimal_replay(sequence, unit, fits),
        "loads": int(loads),
        "loads_per_s": loads / args.seconds,
        "latency_ms": {p: percentile_ms(latencies, p) for p in (50, 90, 99)},
        "hit_ms": {"n": len(hits), "p50": percentile_ms(hits, 50), "p99": percentile_ms(hits, 99)},
        "miss_ms": {
            "n": len(misses),
            "p50": percentile_ms(misses, 50),
            "p99": percentile_ms(misses, 99),
        },
        "budget_mib": budget / MiB,
        "used_mib": used / MiB,
        "resident_models": resident,
        "empty_rss_mib": empty / MiB,
        "peak_rss_above_empty_mib": (peak - empty) / MiB,
        "peak_over_budget": (peak - empty) / budget,
        "scrape_kib": scrape / 1024,
    }


def offline(names: int, fits: int, exponent: float, requests: int, seed: int) -> dict[str, Any]:
    """Hit rates of LRU, TinyLFU (the server's victim choice) and Belady's optimum replaying
    one long Zipf sequence (independent of the machine), and the best static choice (the
    ``fits`` most popular models always loaded)."""
    probabilities = zipf_probabilities(names, exponent)
    picks = np.random.default_rng(seed).choice(names, requests, p=probabilities)
    sequence = [f"m{i:04d}" for i in picks]
    unit = {f"m{i:04d}": 1 for i in range(names)}
    return {
        "names": names,
        "fits": fits,
        "requests": requests,
        "lru": replay("lru", sequence, unit, fits),
        "tinylfu": replay("tinylfu", sequence, unit, fits),
        "optimal": optimal_replay(sequence, unit, fits),
        "known_popularity": known_popularity_replay([int(i) for i in picks], fits),
        "static_top": float(probabilities[:fits].sum()),
        "unlimited": 1 - len(set(sequence)) / requests,
    }


def known_popularity_replay(ranks: list[int], fits: int) -> float:
    """Hit rate of the best online policy for independent requests (Aho, Denning and Ullman's
    A0): it knows each model's true popularity (rank 0 most popular) and, on a miss, evicts
    the least popular resident. No policy that learns popularity from the requests does
    better in expectation; the gap from it to Belady's optimum is the price of not knowing
    the future, not of the policy."""
    resident: set[int] = set()
    hits = 0
    for rank in ranks:
        if rank in resident:
            hits += 1
            continue
        if len(resident) >= fits:
            resident.remove(max(resident))
        resident.add(rank)
    return hits / len(ranks) if ranks else 0.0


def _loads(server: Any) -> float:
    return float(sum(server.metric("tfmux_model_loads_total").values()))


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "loadavg": str(os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1000, help="model names")
    parser.add_argument("--seconds", type=float, default=20.0, help="traffic per configuration")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--exponent", type=float, default=1.1)
    parser.add_argument("--budget-fraction", type=float, default=0.07)
    parser.add_argument("--model-cost", type=int, default=int(4.5 * MiB), help="bytes/model")
    parser.add_argument("--farm", default="shared,distinct")
    parser.add_argument("--replay-requests", type=int, default=100_000, help="offline replay")
    parser.add_argument("--config", default="baseline,tfmux")
    parser.add_argument("--repeats", type=int, default=8, help="load-time samples per kind")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tfmux-many-models"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker == "loads":
        print(json.dumps(loads_worker(args.work, args.repeats)))
        return
    budget = int(max(1, round(args.names * args.budget_fraction)) * args.model_cost)
    report: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine(), "args": {}}
    report["args"] = {k: str(v) for k, v in vars(args).items() if k != "worker"}
    fits = int(max(1, round(args.names * args.budget_fraction)))
    print("offline replays ...", flush=True)
    report["replays"] = offline(args.names, fits, args.exponent, args.replay_requests, args.seed)
    print(json.dumps(report["replays"], indent=1), flush=True)
    print("load times ...", flush=True)
    report["loads"] = load_times(args.work, args.repeats)
    print(json.dumps(report["loads"], indent=1), flush=True)
    for kind in args.farm.split(","):
        farm = build_farm(args.work, kind, args.names)
        for config in args.config.split(","):
            print(f"traffic: {kind} farm, {config} ...", flush=True)
            result = traffic(farm, args.work, config, args, budget)
            report[f"{kind}/{config}"] = result
            print(json.dumps(result, indent=1), flush=True)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
