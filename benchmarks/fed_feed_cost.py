"""What feeding a version's weights costs per call (runtimes/fed.py), against a session variable.

One 4 MiB float32 weight (the many-models farm's export, ``y = x * reduce_sum(w)``), one process:
the same version called through a fed graph (weights aligned, fed without a copy), through a
fed graph with its weight deliberately misaligned (TensorFlow copies it on every call), and
through its own session with the weight in a variable (``share_graphs`` without feeding).
Medians of alternating rounds, microseconds per call.

    python benchmarks/fed_feed_cost.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script

import numpy as np  # noqa: E402

from benchmarks.many_models import build_farm  # noqa: E402


def misaligned(array: np.ndarray) -> np.ndarray:
    buffer = np.empty(array.nbytes + 64, dtype=np.uint8)
    start = (-buffer.ctypes.data % 64) + 4  # 4 bytes past a 64-byte boundary
    copy = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tfmux-many-models"))
    args = parser.parse_args()
    from tfmux.demo import import_tensorflow

    import_tensorflow()
    from tfmux.runtimes.fed import FedModel
    from tfmux.runtimes.graph_cache import GRAPHS
    from tfmux.runtimes.tf1 import TF1Runtime

    farm = build_farm(args.work, "shared", 3, 1024)
    fed = TF1Runtime().load(farm / "m0000" / "1")
    skewed = TF1Runtime().load(farm / "m0001" / "1")
    assert isinstance(fed, FedModel) and isinstance(skewed, FedModel)
    skewed._weights = [misaligned(w) for w in skewed._weights or ()]
    GRAPHS.feed_variables = False
    GRAPHS.clear_idle()
    variable = TF1Runtime().load(farm / "m0002" / "1")
    x = {"x": np.ones((1, 1), np.float32)}
    kinds = {"fed, aligned": fed, "fed, misaligned": skewed, "session variable": variable}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind, model in kinds.items():
            model.run("serving_default", x)
            started = time.perf_counter()
            for _ in range(args.calls):
                model.run("serving_default", x)
            times[kind].append((time.perf_counter() - started) / args.calls * 1e6)
    result = {kind: round(statistics.median(t), 1) for kind, t in times.items()}
    base = result["session variable"]
    print(
        json.dumps(
            {
                "us_per_call": result,
                "vs_variable": {k: round(v / base, 2) for k, v in result.items()},
            }
        )
    )
    for model in kinds.values():
        model.close()


if __name__ == "__main__":
    main()
