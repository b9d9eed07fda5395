"""Memory under a budget, with real TensorFlow in a real ``python -m tfmux serve`` process.

Six lazy models of about 50 MB of weights each and a budget that fits three: cycling requests
over all six succeeds every time while the server's resident memory stays within the budget
plus the empty server's own (+10%); a model loaded and unloaded 30 times gives its memory back
each time; a model bigger than the budget gets 429 while the others keep serving. The server
runs as users start it (the CLI turns oneDNN off before TensorFlow is imported), so the
resident memory read from /proc is the server's own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tfmux.config import ServerConfig, load_yaml_config
from tfmux.core.memory import format_bytes, size_on_disk

pytestmark = pytest.mark.tf

SIDE = 3600  # one float32 variable of SIDE x SIDE: 51.8 MB of weights
HUGE_SIDE = 7500  # 225 MB: more than the whole budget
CYCLED = [f"m{i}" for i in range(6)]
ROUNDS = 3
LOAD_CYCLES = 30
MARGIN = 1.10


def build_model(path: Path, side: int) -> None:
    """TF2 SavedModel: ``x`` float32 [None, 1] -> ``y`` = x * sum(w), with w summing to 1."""
    import numpy as np

    from tfmux.demo import import_tensorflow

    tf = import_tensorflow()
    module = tf.Module()
    module.w = tf.Variable(np.full((side, side), 1.0 / side**2, np.float32), name="w")

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(x: Any) -> dict[str, Any]:
        return {"y": x * tf.reduce_sum(module.w)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """m0..m5 and ``cycled`` (copies of one ~50 MB model) and ``huge`` (~225 MB)."""
    root = tmp_path_factory.mktemp("memory-models")
    build_model(root / "m0" / "1", SIDE)
    for name in [*CYCLED[1:], "cycled"]:
        shutil.copytree(root / "m0", root / name)
    build_model(root / "huge" / "1", HUGE_SIDE)
    return root


@dataclass
class ServerProcess:
    """A ``tfmux serve`` subprocess: its REST client, memory budget and resident memory."""

    proc: subprocess.Popen[bytes]
    client: httpx.Client
    budget: int
    empty_rss: int  # after startup, before any model was loaded

    def rss(self) -> int:
        """The server's resident memory in bytes (VmRSS of /proc/<pid>/status)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match is not None, status
        return int(match[1]) * 1024

    def predict(self, name: str, value: float = 2.0) -> httpx.Response:
        return self.client.post(f"/v1/models/{name}:predict", json={"instances": [[value]]})

    def metric(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of one metric: sorted labels -> value."""
        families = text_string_to_metric_families(self.client.get("/metrics").text)
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in families
            for s in family.samples
            if s.name == name
        }

    def loads(self) -> float:
        return sum(self.metric("tfmux_model_loads_total").values())

    def available(self) -> set[str]:
        index = self.client.post("/v2/repository/index", json={"ready": True}).json()
        return {entry["name"] for entry in index}


def start_server(repository: Path, budget: int, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m tfmux serve`` with lazy loads; output goes to ``log``."""
    command = [
        *(sys.executable, "-m", "tfmux", "serve"),
        *("--model-repository", str(repository)),
        *("--http-port", "0", "--grpc-port", "0"),
        *("--memory-budget", str(budget), "--load", "lazy"),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def wait_for_port(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The REST port from the startup banner (the line ``tfmux listening on http://...``)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return int(match[1])
        time.sleep(0.05)
    proc.kill()
    pytest.fail("server did not start:\n" + log.read_text())


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    budget = int(3.5 * size_on_disk(repository / "m0" / "1"))  # fits three models, not four
    log = tmp_path_factory.mktemp("memory-server") / "server.log"
    proc = start_server(repository, budget, log)
    try:
        port = wait_for_port(proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            running = ServerProcess(proc, client, budget, 0)
            running.empty_rss = running.rss()
            yield running
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cycling_six_models_under_a_budget_of_three(server: ServerProcess) -> None:
    loads_before = server.loads()
    ceiling = (server.budget + server.empty_rss) * MARGIN
    for _ in range(ROUNDS):
        for name in CYCLED:
            response = server.predict(name)
            assert response.status_code == 200, response.text
            assert response.json()["predictions"] == [[pytest.approx(2.0, rel=1e-3)]]
            rss = server.rss()
            assert rss <= ceiling, (
                f"RSS {format_bytes(rss)} after {name} exceeds budget "
                f"{format_bytes(server.budget)} + empty server {format_bytes(server.empty_rss)}"
                " + 10%"
            )
    # every round had to reload the models evicted in the round before
    assert server.loads() - loads_before >= ROUNDS * len(CYCLED)
    assert server.available() == set(CYCLED[-3:])
    for name in CYCLED[:3]:
        (status,) = server.client.get(f"/v1/models/{name}").json()["model_version_status"]
        assert status["state"] == "END" and status["status"]["error_code"] == "OK"
    memory = server.metric("tfmux_model_memory_bytes")
    shown = {dict(labels)["model"]: value for labels, value in memory.items()}
    assert set(shown) == set(CYCLED[-3:])
    assert all(dict(labels)["measured"] == "true" for labels in memory)  # loads ran alone
    weights = SIDE * SIDE * 4
    assert all(0.9 * weights <= value <= 1.5 * weights for value in shown.values()), shown
    for name in CYCLED[-3:]:  # the TF Serving status keeps exactly TF Serving's fields
        (status,) = server.client.get(f"/v1/models/{name}").json()["model_version_status"]
        assert "memory_bytes" not in status
    index = server.client.post("/v2/repository/index", json={"ready": True}).json()
    assert {e["name"]: (e["memory_bytes"], e["memory_measured"]) for e in index} == {
        name: (shown[name], True) for name in CYCLED[-3:]
    }
    (used,) = server.metric("tfmux_memory_used_bytes").values()
    assert used == sum(shown.values()) <= server.budget
    assert server.metric("tfmux_memory_budget_bytes") == {(): server.budget}


def test_load_unload_cycles_give_memory_back(server: ServerProcess) -> None:
    after_unload: list[int] = []
    for _ in range(LOAD_CYCLES):
        load = server.client.post("/v2/repository/models/cycled/load")
        assert load.status_code == 200, load.text
        loaded = server.rss()
        unload = server.client.post("/v2/repository/models/cycled/unload")
        assert unload.status_code == 200, unload.text
        after_unload.append(server.rss())
        # the unload handed about the weights' size back to the operating system
        assert loaded - after_unload[-1] >= 0.8 * SIDE * SIDE * 4
    first = after_unload[0]
    drift = [rss for rss in after_unload if abs(rss - first) > 0.1 * first]
    assert not drift, [format_bytes(rss) for rss in after_unload]
    assert server.predict("m0").status_code == 200


def test_model_bigger_than_the_budget_is_refused(server: ServerProcess) -> None:
    assert server.predict("m1").status_code == 200
    serving = server.available()
    response = server.predict("huge")
    assert response.status_code == 429, response.text
    message = response.json()["error"]
    assert re.search(r"model huge version 1 needs about \d+\.\d MiB", message), message
    assert f"the memory budget is {format_bytes(server.budget)}" in message
    v2 = server.client.post(
        "/v2/models/huge/infer",
        json={"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]},
    )
    assert v2.status_code == 429 and "memory budget" in v2.json()["error"], v2.text
    assert server.available() == serving  # nothing was evicted for a model that cannot fit
    for name in serving:
        assert server.predict(name).status_code == 200


def test_docs_example_parses(tmp_path: Path) -> None:
    """The configuration example of docs/memory.md is read by the real parser."""
    page = Path(__file__).resolve().parent.parent / "docs" / "memory.md"
    (example,) = re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)
    path = tmp_path / "tfmux.yaml"
    path.write_text(example)
    server, models = load_yaml_config(path, "eager")
    config = ServerConfig(**server, models=models)
    assert config.memory_budget_bytes == 4 * 2**30
    assert config.eviction_policy == "tinylfu"
    fraud, churn = config.models
    assert fraud.pinned and not churn.pinned and churn.load == "lazy"
