"""What the status board costs: the history's memory for 1,000 models, the sampler's CPU time
per point and per overview, and the per-request cost of feeding it, as a ratio against the
Prometheus observer alone measured in the same run.

Every model gets traffic in every interval and the window is run past its end (all rings
allocated, the event log full), so the figures are the ceiling, not an idle server's.

    python benchmarks/status_memory.py [--models 1000]

Writes benchmarks/results/status-latest.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import timeit
import tracemalloc
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script

from tfmux.config import ModelConfig  # noqa: E402
from tfmux.core.manager import ModelManager  # noqa: E402
from tfmux.core.observer import Observers  # noqa: E402
from tfmux.core.status import StatusBoard  # noqa: E402
from tfmux.metrics import Metrics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "status-latest.md"


class _Model:
    signatures: dict[str, Any] = {}

    def run(self, *args: Any) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _manager(root: Path, models: int) -> ModelManager:
    """``models`` configured lazy models (one version each; nothing loads)."""
    manager = ModelManager(lambda config, path: _Model())  # type: ignore[arg-type,return-value]
    for i in range(models):
        (root / f"m{i}" / "1").mkdir(parents=True)
        manager.add_model(ModelConfig(name=f"m{i}", base_path=root / f"m{i}", load="lazy"))
    return manager


def _feed(board: StatusBoard, models: int, tick: int) -> None:
    """One interval of traffic to every model, then the sampler's work."""
    for i in range(models):
        name = f"m{i}"
        board.request_done(name, "1", "predict", 0.001 * (1 + i % 7), None)
        board.batch_ran(name, "1", 4, 2, [0.0, 0.0])
    board.events.add(float(tick), "load", "m0", 1, "version 1 loaded in 0.10 s")


def measure(models: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        manager = _manager(Path(tmp), models)
        # Memory: every ring is allocated whole at a model's first point, so two points and a
        # full event log are the ceiling (tracemalloc slows code down: timed apart, below).
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        board = StatusBoard()
        board.watch(manager)
        for tick in range(2):
            _feed(board, models, tick)
            board.sample(close=True)
        for tick in range(600):
            board.events.add(float(tick), "load", "m0", 1, "version 1 loaded in 0.10 s")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        ticks = 20
        sampling = 0.0
        for tick in range(ticks):
            _feed(board, models, tick)
            start = time.thread_time()
            board.sample(close=True)
            sampling += time.thread_time() - start
        start = time.thread_time()
        overview = board.overview(True, False)
        overview_seconds = time.thread_time() - start
        start = time.thread_time()
        board.report(busiest=5)
        report_seconds = time.thread_time() - start
        assert len(overview.models) == models
        manager.close()
    return {
        "history_bytes": held,
        "per_model_bytes": held / models,
        "point_ms": sampling / ticks * 1000,
        "overview_ms": overview_seconds * 1000,
        "report_ms": report_seconds * 1000,
    }


def request_cost() -> tuple[float, float]:
    """µs per request_done: the metrics observer alone, then metrics and the status board."""
    metrics = Metrics()
    both = Observers(Metrics(), StatusBoard())
    call_alone = metrics.request_done
    call_both = both.request_done
    number = 200_000

    def alone() -> None:
        call_alone("m", "1", "predict", 0.001, None)

    def fed() -> None:
        call_both("m", "1", "predict", 0.001, None)

    # CPU time of this thread, interleaved, best of 9 each: the machine is shared.
    bases, feds = [], []
    for _ in range(9):
        bases.append(timeit.Timer(alone, timer=time.thread_time).timeit(number))
        feds.append(timeit.Timer(fed, timer=time.thread_time).timeit(number))
    return min(bases) / number * 1e6, min(feds) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    args = parser.parse_args()
    figures = measure(args.models)
    base, with_board = request_cost()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {load} (other work running)"
    )
    lines = [
        f"# Status board cost ({args.models} models, 15 min at 5 s)",
        "",
        f"Machine: {machine}.",
        f"Command: `python benchmarks/status_memory.py --models {args.models}`.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| history + events held (tracemalloc) | {figures['history_bytes'] / 2**20:.1f} MiB |",
        f"| per model | {figures['per_model_bytes'] / 1024:.1f} KiB |",
        f"| closing one point for every model (sampler) | {figures['point_ms']:.1f} ms |",
        f"| GET /status assembly (overview) | {figures['overview_ms']:.1f} ms |",
        f"| GET /status/history assembly (busiest 5) | {figures['report_ms']:.1f} ms |",
        f"| request_done, metrics alone (baseline) | {base:.2f} µs |",
        f"| request_done, metrics + status board | {with_board:.2f} µs "
        f"({with_board / base:.2f}x) |",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
