"""The memory benchmark: tfmux hosting more models than fit in its memory budget.

1. Cold start: the first request to a lazy model (load included) against loading the same
   SavedModel directly in TensorFlow in a fresh process and calling it once (TensorFlow's
   import excluded on both sides). Target: within 1.2x + 50 ms.
2. Zipf workload: 100 lazy MLP models (5 MB each), a budget that fits 20, requests from one
   REST client with model ranks drawn from a Zipf distribution. Hit rate (requests served
   without a load), p50/p99 of hits and misses, loads per second, peak resident memory.
3. oneDNN on vs off: resident memory after unloading six ~50 MB models, and the MLP's
   in-process speed at batch 1 and 32 on one core.

Writes benchmarks/results/memory-latest.md.

    python benchmarks/memory_bench.py [--requests 2000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script

import numpy as np  # noqa: E402

from benchmarks import memory_onednn  # noqa: E402
from benchmarks.memory_report import render  # noqa: E402
from benchmarks.memory_tools import (  # noqa: E402
    ROOT,
    TfmuxProcess,
    build_weights_model,
    model_farm,
    percentile_ms,
    server_env,
    tfmux_server,
    zipf_probabilities,
)
from benchmarks.models import build_mlp, sample_row  # noqa: E402

MODELS = 100
FITS = 20
CALIBRATION_LOADS = 9
WEIGHT_SIDE = 3600  # ~50 MB of float32 weights
RESULT = ROOT / "benchmarks" / "results" / "memory-latest.md"
ROW = [sample_row("mlp")]


def cold_start(mlp_root: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Median first-request latency of a lazy model in a fresh server (nothing loaded yet)
    against a fresh process that loads the SavedModel with TensorFlow and calls it once
    (alternating, so both see the same load on the machine)."""
    served, warm, direct = [], [], []
    for i in range(repeats):
        args = ["--model-repository", str(mlp_root), "--load", "lazy"]
        with tfmux_server(args, work / f"cold-{i}.log") as server:
            served.append(_timed_predict(server, "mlp"))
            warm.append(_timed_predict(server, "mlp_b"))  # a second model: TF warm
        direct.append(_direct_load(mlp_root / "mlp" / "1"))
    tfmux_s, direct_s = statistics.median(served), statistics.median(direct)
    return {
        "tfmux_s": served,
        "direct_s": direct,
        "second_model_s": warm,
        "ratio": tfmux_s / direct_s,
        "allowed_s": 1.2 * direct_s + 0.05,
        "passed": tfmux_s <= 1.2 * direct_s + 0.05,
    }


def calibrate(names: list[str], farm: Path, work: Path) -> int:
    """The median cost tfmux measures for one of the farm's models, loading them one at a
    time (the first, which carries the process's one-off load costs, is left out)."""
    costs = []
    args = ["--model-repository", str(farm), "--load", "lazy"]
    with tfmux_server(args, work / "calibrate.log") as server:
        for name in names[:CALIBRATION_LOADS]:
            server.predict(name, ROW).raise_for_status()
            costs.append(server.model_memory(name))
    return int(statistics.median(c[0] for c in costs[1:] if c is not None and c[1]))


def _timed_predict(server: TfmuxProcess, name: str) -> float:
    started = time.perf_counter()
    server.predict(name, ROW).raise_for_status()
    return time.perf_counter() - started


def _direct_load(path: Path) -> float:
    command = [sys.executable, str(Path(__file__)), "--worker", "direct", str(path)]
    out = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=server_env(False), check=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def direct_worker(path: Path) -> dict[str, float]:
    """In a fresh process: import TensorFlow (untimed), then load the SavedModel and call its
    serving signature once (timed; TensorFlow's runtime starts within, as it does within a
    server's first load)."""
    from tfmux.demo import import_tensorflow

    tf = import_tensorflow()
    row = np.asarray(ROW, dtype=np.float32)
    started = time.perf_counter()
    loaded = tf.saved_model.load(str(path))
    loaded.signatures["serving_default"](x=tf.constant(row))["probabilities"].numpy()
    return {"seconds": time.perf_counter() - started}


def zipf(
    farm: Path, work: Path, model_cost: int, requests: int, warmup: int, exponent: float, seed: int
) -> dict[str, Any]:
    """One REST client, requests drawn Zipf over the farm's models under a budget of 20.5
    models. A request is a hit when its model was AVAILABLE just before it (nothing else
    runs between requests)."""
    names = model_names(farm)
    budget = int((FITS + 0.5) * model_cost)
    probabilities = zipf_probabilities(len(names), exponent)
    picks = np.random.default_rng(seed).choice(len(names), warmup + requests, p=probabilities)
    args = ["--model-repository", str(farm), "--load", "lazy", "--memory-budget", str(budget)]
    with tfmux_server(args, work / "zipf.log") as server:
        empty = server.rss()
        for pick in picks[:warmup]:
            server.predict(names[pick], ROW).raise_for_status()
        loads_before = _loads(server)
        hits: list[float] = []
        misses: list[float] = []
        errors, peak = 0, 0
        for pick in picks[warmup:]:
            hit = server.state(names[pick]) == "AVAILABLE"
            started = time.perf_counter()
            ok = server.predict(names[pick], ROW).status_code == 200
            (hits if hit else misses).append(time.perf_counter() - started)
            errors += not ok
            peak = max(peak, server.rss())
        loads = _loads(server) - loads_before
        resident = len(server.client.post("/v2/repository/index", json={"ready": True}).json())
        (used,) = server.metric("tfmux_memory_used_bytes").values()
        hwm = server.peak_rss()
    busy = sum(hits) + sum(misses)
    return {
        "models": len(names),
        "exponent": exponent,
        "requests": requests,
        "warmup": warmup,
        "errors": errors,
        "hit_rate": len(hits) / requests,
        "ideal_hit_rate": float(probabilities[:FITS].sum()),
        "hits": {"n": len(hits), **_latency(hits)},
        "misses": {"n": len(misses), **_latency(misses)},
        "loads": int(loads),
        "busy_s": busy,
        "loads_per_s": loads / busy,
        "model_cost": model_cost,
        "budget": budget,
        "used": int(used),
        "resident": resident,
        "empty_rss": empty,
        "peak_rss": peak,
        "hwm_rss": hwm,
    }


def model_names(farm: Path) -> list[str]:
    return sorted(p.name for p in farm.iterdir() if p.is_dir())


def _loads(server: TfmuxProcess) -> float:
    return sum(server.metric("tfmux_model_loads_total").values())


def _latency(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile_ms(seconds, 50), "p99_ms": percentile_ms(seconds, 99)}


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    tf = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; print(tf.__version__)"],
        capture_output=True,
        text=True,
        env=server_env(),
    ).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "load average at the end (1, 5, 15 min)": f"{load} (other work shares the machine)",
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "tensorflow": tf,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    stamp = f"mlp-{MODELS}"
    farm = model_farm(work / "zipf", [f"m{i:03d}" for i in range(MODELS)], build_mlp, stamp)
    mlp_root = model_farm(work / "cold", ["mlp", "mlp_b"], build_mlp, "mlp")
    weights = model_farm(
        work / "weights",
        memory_onednn.WEIGHT_MODELS,
        lambda path: build_weights_model(path, WEIGHT_SIDE),
        f"weights-{WEIGHT_SIDE}",
    )
    print("cold start ...", flush=True)
    cold = cold_start(mlp_root, work, args.repeats)
    print("zipf workload ...", flush=True)
    cost = calibrate(model_names(farm), farm, work)
    workload = zipf(farm, work, cost, args.requests, args.warmup, args.exponent, args.seed)
    print("oneDNN: memory after unload ...", flush=True)
    unload = {
        setting: memory_onednn.unload_memory(weights, work, setting == "on")
        for setting in ("off", "on")
    }
    print("oneDNN: MLP speed on one core ...", flush=True)
    speed = memory_onednn.speed(mlp_root / "mlp" / "1", args.seconds, args.repeats)
    return {"cold": cold, "zipf": workload, "unload": unload, "speed": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=300, help="requests before measuring")
    parser.add_argument("--exponent", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="cold starts and speed runs")
    parser.add_argument("--seconds", type=float, default=2.0, help="per speed measurement")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tfmux-mem")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, path, *rest = args.worker
        if kind == "direct":
            print(json.dumps(direct_worker(Path(path))))
        else:
            print(json.dumps(memory_onednn.speed_worker(Path(path), float(rest[0]))))
        return
    command = "python benchmarks/memory_bench.py " + " ".join(sys.argv[1:])
    report = render(run(args), machine(), command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
