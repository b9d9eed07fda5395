"""Helpers of the memory benchmark (memory_bench.py): models, a ``tfmux serve`` subprocess
whose resident memory is read from /proc, and small statistics.

TensorFlow is imported only by the model builders.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


# -- models --------------------------------------------------------------------------------


def build_weights_model(path: Path, side: int) -> None:
    """TF2 SavedModel with one float32 variable ``w`` of side x side (summing to 1):
    ``x`` float32 [None, 1] -> ``y`` = x * sum(w)."""
    from tfmux.demo import import_tensorflow

    tf = import_tensorflow()
    module = tf.Module()
    module.w = tf.Variable(np.full((side, side), 1.0 / side**2, np.float32), name="w")

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(x: Any) -> dict[str, Any]:
        return {"y": x * tf.reduce_sum(module.w)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def model_farm(root: Path, names: Sequence[str], build: Any, stamp: str) -> Path:
    """``root/<name>/1`` for every name: one model built with ``build(version_dir)`` and
    copied. Kept as is when ``root`` was built with the same ``stamp``."""
    marker = root / ".built"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    shutil.rmtree(root, ignore_errors=True)
    first = root / names[0]
    build(first / "1")
    for name in names[1:]:
        shutil.copytree(first, root / name)
    marker.write_text(stamp)
    return root


# -- a tfmux server process ----------------------------------------------------------------


def server_env(onednn: bool | None = None) -> dict[str, str]:
    """The environment of a child process: quiet TensorFlow, this checkout importable, and
    (when given) oneDNN on or off."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn else "0"
    return env


class TfmuxProcess:
    """A running ``python -m tfmux serve``: its REST client and its memory as the OS sees it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)

    def _status(self, field: str) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
        if match is None:
            raise RuntimeError(f"no {field} in /proc/{self.proc.pid}/status")
        return int(match[1]) * 1024

    def rss(self) -> int:
        """Resident memory now, in bytes (VmRSS)."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """The highest resident memory since the process started, in bytes (VmHWM)."""
        return self._status("VmHWM")

    def predict(self, name: str, instances: list[Any]) -> httpx.Response:
        return self.client.post(f"/v1/models/{name}:predict", json={"instances": instances})

    def state(self, name: str) -> str:
        """The state of the model's newest version (TF Serving's status)."""
        body = self.client.get(f"/v1/models/{name}").json()
        return str(body["model_version_status"][0]["state"])

    def control(self, name: str, action: str) -> None:
        """Load or unload through the V2 repository extension; raises on failure."""
        self.client.post(f"/v2/repository/models/{name}/{action}").raise_for_status()

    def metric(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of one metric: sorted labels -> value."""
        families = text_string_to_metric_families(self.client.get("/metrics").text)
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in families
            for s in family.samples
            if s.name == name
        }

    def model_memory(self, name: str) -> tuple[int, bool] | None:
        """(bytes, measured) the server shows for a loaded model, None when not loaded."""
        for labels, value in self.metric("tfmux_model_memory_bytes").items():
            found = dict(labels)
            if found["model"] == name:
                return int(value), found["measured"] == "true"
        return None


@contextmanager
def tfmux_server(args: Sequence[str], log: Path, onednn: bool = False) -> Iterator[TfmuxProcess]:
    """Start ``python -m tfmux serve ARGS`` on free ports; stop it with SIGTERM on exit."""
    command = [sys.executable, "-m", "tfmux", "serve", "--http-port", "0", "--grpc-port", "0"]
    command += [*args, "--onednn" if onednn else "--no-onednn"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=server_env()
        )
    server: TfmuxProcess | None = None
    try:
        server = TfmuxProcess(proc, _wait_for_port(proc, log))
        yield server
    finally:
        if server is not None:
            server.client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return int(match[1])
        time.sleep(0.05)
    raise RuntimeError(f"tfmux did not start:\n{log.read_text()[-3000:]}")


# -- statistics ----------------------------------------------------------------------------


def zipf_probabilities(n: int, exponent: float) -> np.ndarray:
    """P(rank k) proportional to k**-exponent for k = 1..n."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def percentile_ms(seconds: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) in milliseconds; NaN for no values."""
    if not seconds:
        return float("nan")
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def mib(size: float) -> str:
    return f"{size / MiB:.0f} MiB"
