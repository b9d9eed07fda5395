"""The oneDNN trade-off, measured: memory given back after unloading (through a real tfmux
server) and the MLP's in-process speed (one core), each with oneDNN on and off.

Used by memory_bench.py; ``speed_worker`` runs in a child process started with
``TF_ENABLE_ONEDNN_OPTS`` already set, since TensorFlow reads it once, at import.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.memory_tools import ROOT, server_env, tfmux_server
from benchmarks.models import OUTPUTS, sample_row

SCRIPT = Path(__file__).with_name("memory_bench.py")
SPEED_CORE = "1"
WEIGHT_MODELS = [f"w{i}" for i in range(6)]
ONE_ROW = [[1.0]]


def unload_memory(repository: Path, work: Path, onednn: bool) -> dict[str, Any]:
    """Six ~50 MB models: load and call each, unload all, then six more load/call/unload
    cycles. Resident memory at each step, and what the server measured a load and a reload
    to cost."""
    args = ["--model-repository", str(repository), "--load", "lazy"]
    log = work / f"onednn-{'on' if onednn else 'off'}.log"
    with tfmux_server(args, log, onednn=onednn) as server:
        empty = server.rss()
        for name in WEIGHT_MODELS:
            server.control(name, "load")
            server.predict(name, ONE_ROW).raise_for_status()
        loaded = server.rss()
        first_cost = server.model_memory(WEIGHT_MODELS[0])
        for name in WEIGHT_MODELS:
            server.control(name, "unload")
        unloaded = server.rss()
        reload_costs = []
        for name in WEIGHT_MODELS:
            server.control(name, "load")
            server.predict(name, ONE_ROW).raise_for_status()
            reload_costs.append(server.model_memory(name))
            server.control(name, "unload")
        cycled = server.rss()
    return {
        "empty": empty,
        "loaded": loaded,
        "unloaded": unloaded,
        "cycled": cycled,
        "first_cost": first_cost,
        "reload_costs": reload_costs,
    }


def speed(mlp_dir: Path, seconds: float, repeats: int) -> dict[str, dict[str, list[float]]]:
    """The MLP's TF2 signature at batch 1 and 32 on one core, oneDNN on and off: ``repeats``
    runs of each, alternating, each a fresh process. Per setting and batch, the calls per
    second of CPU time the process used (``<batch>``) and of wall time (``<batch>_wall``)."""
    runs: dict[str, dict[str, list[float]]] = {setting: {} for setting in ("off", "on")}
    for _ in range(repeats):
        for setting, results in runs.items():
            for key, value in _speed_run(mlp_dir, seconds, setting == "on").items():
                results.setdefault(key, []).append(value)
    return runs


def _speed_run(mlp_dir: Path, seconds: float, onednn: bool) -> dict[str, float]:
    command = ["taskset", "-c", SPEED_CORE, sys.executable, str(SCRIPT)]
    command += ["--worker", "speed", str(mlp_dir), str(seconds)]
    out = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=server_env(onednn), check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def speed_worker(mlp_dir: Path, seconds: float) -> dict[str, float]:
    """In this process (oneDNN as the environment set it): the MLP's signature at batch 1
    and 32 (called as benchmarks/inprocess.py does), back to back for ``seconds`` each."""
    from benchmarks.inprocess import tf2_call

    row = np.asarray([sample_row("mlp")], dtype=np.float32)
    output = OUTPUTS["mlp"]
    result = {}
    for rows in (1, 32):
        call = tf2_call(mlp_dir, np.repeat(row, rows, axis=0), output)
        per_cpu, per_wall = _calls_per_second(call, seconds)
        result[f"batch{rows}"], result[f"batch{rows}_wall"] = per_cpu, per_wall
    return result


def _calls_per_second(call: Callable[[], Any], seconds: float) -> tuple[float, float]:
    """(calls per CPU second of this process, calls per wall second), after a warmup. CPU
    time is what the calls cost on a core of their own, even when other work shares it."""
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        call()
    calls = 0
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        call()
        calls += 1
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    return calls / cpu, calls / wall


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
