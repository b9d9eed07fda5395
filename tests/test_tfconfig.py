"""Process-wide TensorFlow settings (threads, GPU memory), checked in a fresh process each."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.tf

SCRIPT = """
import tensorflow as tf
from tfmux.runtimes.tfconfig import TensorFlowOptions, configure_tensorflow
print(configure_tensorflow(TensorFlowOptions({args})))
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def run(args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(args=args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()


def test_thread_counts_are_applied_and_reported() -> None:
    report, counts = run("intra_op_threads=1, inter_op_threads=2")
    assert counts == "1 2"
    assert "intra-op threads 1, inter-op threads 2" in report


def test_gpu_settings_are_accepted_and_reported_without_a_gpu() -> None:
    import tensorflow as tf

    report, _ = run("gpu_memory_limit_mb=2048")
    assert "memory limit 2048 MiB per GPU" in report
    if not tf.config.list_physical_devices("GPU"):
        assert "no GPU found, GPU settings unused" in report
    report, _ = run("gpu_memory_growth=False")
    assert "memory growth off" in report
