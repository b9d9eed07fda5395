"""In-process baselines: the model's signature called directly, no server, one call at a time.

For each model: the TF2 ``serving_default`` call with one row (numpy in, numpy out, as a server
would do it), the same model loaded the TF1 way (graph + session ``make_callable``), tfmux's own
runtime called directly (a graph + Session through TensorFlow's compiled callables: the fastest
one-row call known here), and the TF2 call with 32 rows (what batching can reach). The targets
compare against the fastest one-row call. Run it pinned to the server's core. Prints JSON.

    taskset -c 0 python -m benchmarks.inprocess --model-repository DIR --seconds 3
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

from benchmarks.models import OUTPUTS, sample_row

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

Call = Callable[[], Any]


def measure(call: Call, seconds: float, rows: int) -> dict[str, float]:
    """Calls ``call`` back to back for ``seconds`` (after a short warmup)."""
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        call()
    times: list[int] = []
    cpu_start = time.process_time()
    start = time.perf_counter_ns()
    stop = start + int(seconds * 1e9)
    now = start
    while now < stop:
        call()
        after = time.perf_counter_ns()
        times.append(after - now)
        now = after
    elapsed = (now - start) / 1e9
    cpu = (time.process_time() - cpu_start) / elapsed
    times.sort()
    return {
        "calls_per_s": len(times) / elapsed,
        "rows_per_s": len(times) * rows / elapsed,
        "median_ms": statistics.median(times) / 1e6,
        "p99_ms": times[int(len(times) * 0.99)] / 1e6,
        "calls": len(times),
        "cpu": cpu,  # cores this process used meanwhile (other work on the core lowers it)
    }


def tf2_call(path: Path, batch: np.ndarray, output: str) -> Call:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]

    def call() -> Any:
        return signature(x=tf.constant(batch))[output].numpy()

    return call


def tf1_call(path: Path, batch: np.ndarray, output: str) -> Call:
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    signature = meta.signature_def["serving_default"]
    runner = session.make_callable([signature.outputs[output].name], [signature.inputs["x"].name])

    def call() -> Any:
        return runner(batch)[0]

    return call


def runtime_call(path: Path, batch: np.ndarray, output: str) -> Call:
    from tfmux.runtimes import load_model

    model = load_model(path)

    def call() -> Any:
        return model.run("serving_default", {"x": batch}, (output,))[output]

    return call


def run(repository: Path, seconds: float) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for model in ("mlp", "tiny"):
        path = repository / model / "1"
        row = np.asarray([sample_row(model)], dtype=np.float32)
        batch32 = np.repeat(row, 32, axis=0)
        output = OUTPUTS[model]
        results[model] = {
            "tf2_batch1": measure(tf2_call(path, row, output), seconds, 1),
            "tf1_batch1": measure(tf1_call(path, row, output), seconds, 1),
            "runtime_batch1": measure(runtime_call(path, row, output), seconds, 1),
            "tf2_batch32": measure(tf2_call(path, batch32, output), seconds, 32),
            "output": tf2_call(path, row, output)().tolist(),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="In-process single-row baselines.")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(run(args.model_repository, args.seconds)))


if __name__ == "__main__":
    main()
