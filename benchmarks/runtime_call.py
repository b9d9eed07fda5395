"""What one ``model.run`` and one load cost in each tfmux runtime, in process, no server.

Why: the Python work around a model call bounds batched throughput on small models, and it is
what chose the session runtime (``tf1``) as the default for TF2 SavedModels too
(docs/architecture.md). For each benchmark model (benchmarks/models.py) and runtime it reports
the median microseconds of ``LoadedModel.run`` at 1 and 32 rows, and the median seconds of
``load_model`` + ``close`` (also for ``auto``, which adds a check of the restored variables).
Runtimes and row counts are interleaved round by round, so load from other processes on the
core affects them alike; compare numbers within one run. Pin it to one core. Prints JSON.

    taskset -c 0 python -m benchmarks.runtime_call --model-repository DIR [--rounds 7]

DIR is built (or reused) with benchmarks.models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as the server runs

from benchmarks.models import build_all, sample_row
from tfmux.runtimes import load_model

RUNTIMES = ("tf1", "tf2")
ROWS = (1, 32)
CALLS = {"tiny": 2000, "mlp": 300}  # calls per timed round


def per_call_us(call: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def load_seconds(path: Path, kind: str) -> float:
    started = time.perf_counter()
    load_model(path, kind).close()
    return time.perf_counter() - started


def measure(path: Path, name: str, rounds: int) -> dict[str, Any]:
    models = {kind: load_model(path, kind) for kind in RUNTIMES}
    row = np.asarray([sample_row(name)], dtype=np.float32)
    batches = {rows: {"x": np.repeat(row, rows, axis=0)} for rows in ROWS}
    calls = CALLS.get(name, 300)
    samples: dict[str, list[float]] = {}
    for model in models.values():  # warm up: first calls build caches and kernels
        for batch in batches.values():
            for _ in range(calls // 10):
                model.run("serving_default", batch)
    for _ in range(rounds):
        for kind, model in models.items():
            for rows, batch in batches.items():
                us = per_call_us(lambda m=model, b=batch: m.run("serving_default", b), calls)
                samples.setdefault(f"{kind}_rows{rows}_us", []).append(us)
    outputs = [model.run("serving_default", batches[1]) for model in models.values()]
    for model in models.values():
        model.close()
    for _ in range(rounds):
        for kind in ("auto", *RUNTIMES):  # auto: tf1 plus its check of restored variables
            samples.setdefault(f"{kind}_load_s", []).append(load_seconds(path, kind))
    result: dict[str, Any] = {
        key: round(statistics.median(values), 4 if key.endswith("_s") else 1)
        for key, values in samples.items()
    }
    first, second = (next(iter(out.values())) for out in outputs)
    result["same_answer"] = bool(np.array_equal(first, second))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    models = build_all(args.model_repository)
    print(json.dumps({name: measure(path, name, args.rounds) for name, path in models.items()}))


if __name__ == "__main__":
    main()
