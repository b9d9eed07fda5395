"""The benchmark's server processes (pinned to the server core) and how to talk to them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, SERVER_CORE
from benchmarks.loadgen import priority
from benchmarks.payloads import V2_HEADER_LENGTH, Payload


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process pinned to the server core, stopped with SIGTERM."""

    name: str
    command: list[str]
    http_port: int | None
    grpc_port: int | None
    ready: Callable[[Server], bool]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @contextlib.contextmanager
    def running(self, timeout: float = 180) -> Iterator[Server]:
        command = [*priority(), "taskset", "-c", str(SERVER_CORE), *self.command]
        with self.log_file.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=server_env()
            )
        try:
            deadline = time.monotonic() + timeout
            while not self._is_ready():
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self._log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready in {timeout:.0f}s")
                time.sleep(0.2)
            yield self
        finally:
            self.stop()

    def _is_ready(self) -> bool:
        try:
            return self.ready(self)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:]


TFMUX_SRC = [ROOT / "src"]  # where servers import tfmux from (--tfmux-src)


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(TFMUX_SRC[0]), env.get("PYTHONPATH", "")) if p
    )
    return env


def http_ok(path: str) -> Callable[[Server], bool]:
    def check(server: Server) -> bool:
        with urllib.request.urlopen(server.url + path, timeout=2) as response:
            return int(response.status) == 200

    return check


def grpc_port_open(server: Server) -> bool:
    with socket.create_connection(("127.0.0.1", server.grpc_port or 0), timeout=1):
        return True


def http_port_open(server: Server) -> bool:
    with socket.create_connection(("127.0.0.1", server.http_port or 0), timeout=1):
        return True


# -- sample requests: every server answers correctly before it is measured ------------------


def sample_outputs(server: Server, protocol: str, payload: Payload) -> np.ndarray:
    """Send the payload once with an ordinary client and return the model's output."""
    if protocol == "grpc":
        return _grpc_sample(server, payload)
    request = urllib.request.Request(
        server.url + payload.path, data=payload.body(), headers=payload.headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        header_length = response.headers.get(V2_HEADER_LENGTH)
    if protocol == "rest":
        return np.asarray(json.loads(body)["predictions"], dtype=np.float32)
    size = int(header_length)
    header = json.loads(body[:size])
    (output,) = header["outputs"]
    return np.frombuffer(body[size:], dtype="<f4").reshape(output["shape"])


def _grpc_sample(server: Server, payload: Payload) -> np.ndarray:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest.FromString(payload.body()[5:])
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)
    (tensor,) = response.outputs.values()
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)
    return np.asarray(tensor.float_val, dtype=np.float32).reshape(shape)


def tfmux_counts(server: Server) -> dict[str, float]:
    """tfmux's request counters by outcome code (OK or the error kind)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for match in re.finditer(r"^tfmux_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        code = re.search(r'code="([^"]*)"', match[1])
        key = code[1] if code else "?"
        counts[key] = counts.get(key, 0.0) + float(match[2])
    return counts
