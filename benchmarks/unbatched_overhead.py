"""The serving core's cost per request with batching off, no TensorFlow: a model that returns
its input, ``--concurrency`` requests in flight on one event loop, for ``--seconds``. Measures
what the queue, in-flight limit and deadline machinery cost against going straight to the pool
(run it against two source trees with PYTHONPATH to compare). Prints JSON.

    taskset -c 0 python -m benchmarks.unbatched_overhead --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tfmux.config import BatchingConfig, ModelConfig
from tfmux.core.manager import ModelManager
from tfmux.core.service import ServingService
from tfmux.types import ModelRef, SignatureSpec, TensorSpec

SPEC = SignatureSpec(
    "serving_default",
    {"x": TensorSpec("x", "float32", (None, 3), "x:0")},
    {"y": TensorSpec("y", "float32", (None, 3), "y:0")},
    "tensorflow/serving/predict",
)


class Echo:
    signatures = {"serving_default": SPEC}

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}

    def close(self) -> None:
        pass


async def measure(service: ServingService, seconds: float, concurrency: int) -> tuple[float, float]:
    """(requests per second, requests per CPU-second of this process)."""
    x = {"x": np.ones((1, 3), np.float32)}
    ref = ModelRef("echo")
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await service.infer(ref, x)
            done += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batching", action="store_true", help="batching on instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "echo" / "1").mkdir(parents=True)
        manager = ModelManager(lambda config, path: Echo())
        manager.add_model(ModelConfig(name="echo", base_path=Path(root) / "echo"))
        manager.wait_for_loads()
        service = ServingService(manager, batching=BatchingConfig(enabled=args.batching))

        async def run() -> tuple[float, float]:
            await measure(service, 0.5, args.concurrency)  # warm up
            return await measure(service, args.seconds, args.concurrency)

        rate, per_cpu = asyncio.run(run())
        service.close()
    result = {"requests_per_s": round(rate), "requests_per_cpu_s": round(per_cpu)}
    print(json.dumps({**result, "concurrency": args.concurrency, "batching": args.batching}))


if __name__ == "__main__":
    main()
