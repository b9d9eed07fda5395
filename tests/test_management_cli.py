"""``tfmux models``, ``tfmux load`` and ``tfmux unload`` as real subprocesses against a real
server, and the examples of docs/management.md run against one."""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tfmux.config import ModelConfig
from tfmux.server import saved_model_loader

from .harness import BackgroundServer
from .test_management import BEARER, TOKEN, index, predicts, server_config

pytestmark = pytest.mark.tf

CLI = [sys.executable, "-m", "tfmux"]
DOC = Path(__file__).resolve().parent.parent / "docs" / "management.md"
SLOW = "twin_b"  # loads of this model wait for the gate


@pytest.fixture(scope="module")
def gate() -> threading.Event:
    return threading.Event()


@pytest.fixture(scope="module")
def server(model_root: Path, gate: threading.Event) -> Iterator[BackgroundServer]:
    """Token-protected; loads of SLOW wait until ``gate`` is set."""
    config = server_config(model_root, admin_token=TOKEN)
    real = saved_model_loader(config)

    def loader(model: ModelConfig, path: Path) -> object:
        if model.name == SLOW:
            assert gate.wait(120), "the test never opened the gate"
        return real(model, path)

    with BackgroundServer(config, loader=loader) as running:
        try:
            yield running
        finally:
            gate.set()  # never leave a load waiting while the server stops


def cli_env(token: str | None, url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("TFMUX_ADMIN_TOKEN", None)
    env.pop("TFMUX_URL", None)
    env.update({"TFMUX_ADMIN_TOKEN": token} if token else {})
    env.update({"TFMUX_URL": url} if url else {})
    return env


def tfmux(url: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--url", url],
        capture_output=True,
        text=True,
        env=cli_env(token),
        timeout=120,
    )


def test_models_prints_a_table(server) -> None:
    out = tfmux(server.url, "models", token=None)
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if "model" in line)
    assert re.search(r"model\W+version\W+state\W+memory\W+reason", header)
    # a version on a graph the process already holds is charged its weights: maybe bytes
    assert re.search(r"binary\W+1\W+READY\W+[\d.]+ (?:[KM]i)?B", out.stdout), out.stdout


class Lines:
    """A process's output lines, read by a thread, so a test never blocks on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line)

    def next(self, timeout: float) -> str:
        return self._lines.get(timeout=timeout)

    def rest(self) -> str:
        """Every line not yet read, once the process has closed its output."""
        self._reader.join(60)
        return "".join(self._lines.get() for _ in range(self._lines.qsize()))


def test_load_shows_progress_then_the_final_state(server, gate) -> None:
    command = [*CLI, "load", SLOW, "--url", server.url]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(TOKEN)
    ) as proc:
        lines = Lines(proc)
        try:
            assert f"{SLOW} v1 LOADING" in lines.next(timeout=60)
            with httpx.Client(base_url=server.url, timeout=60) as http:
                assert index(http)[SLOW]["state"] == "LOADING"
                assert predicts(http)  # a slow load does not hold up the others
        finally:
            gate.set()
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    rest = lines.rest()
    assert re.search(rf"{SLOW} v1 READY [\d.]+ [KM]iB", rest), rest
    assert f"loaded {SLOW} in" in rest


def test_unload_then_load(server) -> None:
    out = tfmux(server.url, "unload", "binary")
    assert out.returncode == 0, out.stderr
    assert "binary v1 UNAVAILABLE (unloaded)" in out.stdout and "unloaded binary" in out.stdout
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert not predicts(http)
        out = tfmux(server.url, "load", "binary")
        assert out.returncode == 0, out.stderr
        # measured (no "~"): a fed version is charged at least its weights, a few hundred bytes
        assert re.search(r"binary v1 READY [\d.]+ (?:[KM]i)?B", out.stdout), out.stdout
        assert predicts(http)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_errors_are_explained_with_exit_codes(server, model_root) -> None:
    url = server.url
    cases = [
        (("load", "binary"), None, 4, "needs an admin token"),
        (("unload", "binary"), "wrong", 4, "admin token was refused"),
        (("load", "nope"), TOKEN, 1, "model nope is not configured and not in any repository"),
        (("load", "corrupt"), TOKEN, 1, "failed to load model corrupt"),
        (("load", "../x"), TOKEN, 2, "'../x' is not a model name"),
    ]
    with httpx.Client(base_url=url, timeout=60) as http:
        for args, token, code, needle in cases:
            out = tfmux(url, *args, token=token)
            assert (out.returncode, needle in out.stderr) == (code, True), out.stderr
            assert predicts(http)
    out = tfmux(f"http://127.0.0.1:{free_port()}", "models")
    assert out.returncode == 3 and "cannot reach a tfmux server" in out.stderr
    with BackgroundServer(server_config(model_root, management=False)) as closed:
        out = tfmux(closed.url, "unload", "binary")
        assert out.returncode == 4 and "management is disabled" in out.stderr
    assert tfmux(url, "load", "binary").returncode == 0


# -- docs/management.md ------------------------------------------------------------------------


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_doc_shell_examples_work(server) -> None:
    """Every curl and tfmux line of the doc's ```bash blocks, against a token-protected server."""
    port = server.server.http_port
    lines = [
        line
        for block in doc_blocks("bash")
        for line in block.splitlines()
        if line.startswith(("curl ", "tfmux "))
    ]
    assert any("/load" in line for line in lines) and any(" models" in line for line in lines)
    env = cli_env(TOKEN, server.url)
    for line in lines:
        line = line.replace("localhost:8501", f"127.0.0.1:{port}")
        line = re.sub(r"^curl ", "curl -sS --fail-with-body --max-time 60 ", line)
        line = re.sub(r"^tfmux ", f"{sys.executable} -m tfmux ", line)
        out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env)
        assert out.returncode == 0, f"{line}\n{out.stdout}{out.stderr}"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert predicts(http)


def test_doc_python_examples_work(server, model_root, monkeypatch) -> None:
    """Each Python example, pointed at the server (and at the test models' directory)."""
    import contextlib
    import io

    monkeypatch.setenv("TFMUX_ADMIN_TOKEN", TOKEN)
    examples = doc_blocks("python")
    assert len(examples) == 2 and BEARER.split()[0] in "".join(examples)
    for example in examples:
        code = example.replace("localhost:8500", f"127.0.0.1:{server.server.grpc_port}")
        code = code.replace("/models/", f"{model_root}/")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {})
        assert out.getvalue().split() == ["True"], out.getvalue()
