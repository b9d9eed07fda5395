"""``tfmux serve --ray local`` end to end, as docs/cluster.md shows it: a subprocess starts a
one-node Ray cluster of its own, deploys the replicas, serves through its gateway, and on
SIGTERM removes what it deployed and stops the cluster it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray", reason="the cluster needs Ray: pip install -e '.[ray]'")

READY = "replicas on Ray Serve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


@pytest.mark.tf
def test_serve_ray_local_serves_then_stops_its_own_cluster(tmp_path: Path) -> None:
    from . import savedmodels as sm

    root = tmp_path / "models"
    sm.binary(root)
    http, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    log = (tmp_path / "serve.log").open("w+")
    command = [sys.executable, "-m", "tfmux", "serve", "--ray", "local", "--replicas", "1",
               "--model-repository", str(root), "--host", "127.0.0.1",
               "--http-port", str(http), "--grpc-port", str(grpc)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while READY not in Path(log.name).read_text():
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        answer = httpx.post(
            f"http://127.0.0.1:{http}/v1/models/binary:predict",
            content=json.dumps({"instances": [[1.0, 2.0, 3.0]]}),
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 1
        assert answer.headers["x-tfmux-replica"]  # answered by a replica on Ray Serve
        below = descendants(process.pid)
        assert below, "Ray's processes run below the one tfmux started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, Path(log.name).read_text()[-3000:]
        deadline = time.monotonic() + 30  # the cluster it started goes with it
        while (left := {pid for pid in below if Path(f"/proc/{pid}").exists()}) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert not left, f"processes left by --ray local: {sorted(left)}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        log.close()
