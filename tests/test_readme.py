"""The README contract: `tfmux serve` with no model source serves the demo models, and every
curl line in the README (and in docs/) works against it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.tf


SERVE = [sys.executable, "-m", "tfmux", "serve"]
DOCS_WITH_CURL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_curl_lines() -> list[str]:
    """Every curl line in a ```sh block of the README and the docs."""
    lines = []
    for page in DOCS_WITH_CURL:
        blocks = re.findall(r"```sh\n(.*?)```", page.read_text(), re.S)
        lines += [
            line for block in blocks for line in block.splitlines() if line.startswith("curl ")
        ]
    return lines


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    proc = subprocess.Popen(
        [*SERVE, "--http-port", "0", "--grpc-port", "0", "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner: list[str] = []
    port = None
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line)
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match[1])
    if port is None:
        proc.kill()
        pytest.fail("server did not start:\n" + "".join(banner) + proc.stdout.read())
    # the lines after the addresses name the served models
    while not ("binary" in banner[-1] or "regression" in banner[-1]):
        banner.append(proc.stdout.readline())
    banner.append(proc.stdout.readline())
    yield proc, port, "".join(banner)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_startup_prints_address_and_models(demo_server) -> None:
    _, _, banner = demo_server
    assert "binary" in banner and "regression" in banner
    assert "v1 AVAILABLE" in banner


def test_readme_has_curl_examples_for_both_demo_models() -> None:
    lines = readme_curl_lines()
    assert any("/v1/models/binary:predict" in line for line in lines)
    assert any("/v1/models/regression:predict" in line for line in lines)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("line", readme_curl_lines())
def test_readme_curl_line_works(demo_server, line: str) -> None:
    _, port, _ = demo_server
    args = shlex.split(line.replace("localhost:8501", f"127.0.0.1:{port}"))
    args[1:1] = ["--fail-with-body", "--max-time", "60"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    if "-w" in args:
        assert out.stdout.strip() == "200"
        return
    body = json.loads(out.stdout)
    if ":predict" in line:
        key = "predictions" if "instances" in line else "outputs"
        values = body[key]
        assert isinstance(values, list) and values
        flat = [v for row in values for v in (row if isinstance(row, list) else [row])]
        assert all(isinstance(v, float) for v in flat)
    elif "/infer" in line:
        assert body["model_version"] == "1" and body.get("id", "1") == "1"
        (output,) = body["outputs"]
        assert output["datatype"] == "FP32" and all(isinstance(v, float) for v in output["data"])
    elif "/status" in line:  # docs/dashboard.md: the status API
        assert body.get("models") is not None or body.get("events") is not None
    elif line.rstrip().endswith("/metadata"):
        assert "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    else:
        assert body["model_version_status"][0]["state"] == "AVAILABLE"


def test_sigterm_shuts_down_cleanly(demo_server) -> None:
    proc, _, _ = demo_server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
