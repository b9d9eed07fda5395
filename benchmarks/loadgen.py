"""The load generators, driven from Python: ``wrk`` (HTTP/1.1) and ``h2load`` (gRPC over h2c).

Each run is one process pinned to the generator's core. Besides the figures the tools report,
a run records the CPU the generator itself used (from ``wait4``), the CPU of the server process
and of both cores (from ``/proc``), so a report can show that the generator was not the limit
and how much other load the machine carried.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.payloads import Payload

LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NICE = -10


def priority() -> list[str]:
    """For servers: ``nice -n -10`` when allowed (root), so other work on the machine takes
    CPU from the benchmark far less often; empty otherwise."""
    return ["nice", "-n", str(NICE)] if os.geteuid() == 0 else []


def generator_priority() -> list[str]:
    """For generators: the same as servers. (Real-time priority was tried: a wrk whose server
    went away kept spinning past its duration, which a real-time task must never do.)"""
    return priority()


@dataclass
class LoadResult:
    """One measured run. Latencies in milliseconds; CPU as a fraction of one core."""

    tool: str
    connections: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    generator_cpu: float
    server_cpu: float
    core_busy: list[float]

    @property
    def other_cpu(self) -> float:
        """CPU (in cores) used by neither the server nor the generator during the run."""
        return max(0.0, sum(self.core_busy) - self.server_cpu - self.generator_cpu)

    def other_on(self, core: int, own: float) -> float:
        """CPU of ``core`` used by other processes, given what ours used on it."""
        return max(0.0, self.core_busy[core] - own) if core < len(self.core_busy) else 0.0

    def disturbance(self, server_core: int) -> float:
        """The share of its core the server was kept from. Under many connections a server
        should use its whole core, whatever took it (other processes on the server's core, or
        a generator they delayed); with one connection it idles between requests, so only
        other processes on its core count."""
        if self.connections > 1:
            return max(0.0, 1.0 - self.server_cpu)
        return self.other_on(server_core, self.server_cpu)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "other_cpu": self.other_cpu}


class CpuProbe:
    """CPU used between ``start`` and ``stop`` by one process and by each core."""

    def __init__(self, pid: int | None) -> None:
        self._pid = pid
        self._proc = 0.0
        self._cores: list[tuple[int, int]] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._proc = _process_seconds(self._pid)
        self._cores = _core_ticks()
        self._t0 = time.monotonic()

    def stop(self) -> tuple[float, list[float]]:
        """(process CPU in cores, busy fraction of each core)."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        proc = (_process_seconds(self._pid) - self._proc) / elapsed
        busy = []
        for (busy0, total0), (busy1, total1) in zip(self._cores, _core_ticks(), strict=False):
            busy.append((busy1 - busy0) / max(total1 - total0, 1))
        return proc, busy


def _process_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _core_ticks() -> list[tuple[int, int]]:
    """(busy, total) jiffies per core."""
    cores = []
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            cores.append((sum(values[:8]) - idle, sum(values[:8])))
    return cores


def _run(
    command: list[str], server_pid: int | None, seconds: float
) -> tuple[str, float, float, list[float]]:
    """Run a generator; (stdout, its CPU in cores, server CPU in cores, busy of each core).

    A generator still running 30 s past its duration is killed (and the run fails), as is one
    whose caller is interrupted.
    """
    probe = CpuProbe(server_pid)
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        probe.start()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        watchdog = threading.Timer(seconds + 30, process.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        server_cpu, busy = probe.stop()
        elapsed = time.monotonic() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    if process.returncode != 0:
        tool = next((c for c in command if c in ("wrk", "h2load")), command[0])
        raise RuntimeError(f"{tool} failed ({process.returncode}):\n{text[-2000:]}")
    return text, (usage.ru_utime + usage.ru_stime) / elapsed, server_cpu, busy


def wrk(
    url: str,
    payload: Payload,
    connections: int,
    seconds: float,
    core: int,
    server_pid: int | None = None,
) -> LoadResult:
    """POST ``payload`` with wrk (one thread) for ``seconds``."""
    headers = [f"{name}: {value}" for name, value in payload.headers.items()]
    command = [
        *generator_priority(),
        *["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{_whole(seconds)}s"],
        *["--timeout", "10s", "--latency", "-s", str(LUA_SCRIPT), url + payload.path],
        *["--", str(payload.body_file), *headers],
    ]
    text, cpu, server_cpu, busy = _run(command, server_pid, seconds)
    match = re.search(r"^WRK_JSON (\{.*\})$", text, re.M)
    if match is None:
        raise RuntimeError(f"no results in wrk's output:\n{text[-2000:]}")
    r = json.loads(match[1])
    duration = r["duration_us"] / 1e6
    errors = sum(r[k] for k in r if k.startswith("errors_"))
    return LoadResult(
        tool="wrk",
        connections=connections,
        seconds=duration,
        requests=r["requests"],
        errors=errors,
        requests_per_s=r["requests"] / duration,
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        generator_cpu=cpu,
        server_cpu=server_cpu,
        core_busy=busy,
    )


def h2load(
    url: str,
    payload: Payload,
    connections: int,
    seconds: float,
    core: int,
    server_pid: int | None = None,
) -> LoadResult:
    """POST ``payload`` over h2c with h2load (one thread, one stream per connection).

    h2load counts HTTP statuses only; a gRPC error still answers 200 with ``grpc-status`` in
    the trailers. Callers verify a sample call's trailers separately (``nghttp``) and, for
    tfmux, the server's own error counters.
    """
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        command = [
            *generator_priority(),
            *["taskset", "-c", str(core), "h2load", f"-c{connections}", "-m1", "-t1"],
            *["-D", str(_whole(seconds)), "-d", str(payload.body_file), "--log-file", log.name],
            *[f"-H{name}: {value}" for name, value in payload.headers.items()],
            url + payload.path,
        ]
        text, cpu, server_cpu, busy = _run(command, server_pid, seconds)
        entries = [line.split("\t") for line in Path(log.name).read_text().splitlines()]
    match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", text)
    if match is None:
        raise RuntimeError(f"no results in h2load's output:\n{text[-2000:]}")
    done, succeeded = int(match[2]), int(match[3])
    latencies = sorted(int(e[2]) / 1000 for e in entries if len(e) == 3 and e[1] == "200")
    bad = sum(1 for e in entries if len(e) == 3 and e[1] != "200")
    return LoadResult(
        tool="h2load",
        connections=connections,
        seconds=_whole(seconds),
        requests=succeeded,
        errors=done - succeeded + bad,
        requests_per_s=succeeded / _whole(seconds),
        p50_ms=_percentile(latencies, 50),
        p90_ms=_percentile(latencies, 90),
        p99_ms=_percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else 0.0,
        generator_cpu=cpu,
        server_cpu=server_cpu,
        core_busy=busy,
    )


def _whole(seconds: float) -> int:
    """The generators take whole seconds."""
    return max(1, round(seconds))


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def grpc_trailers_ok(url: str, payload: Payload) -> str:
    """Send the body once with ``nghttp``; returns the grpc-status line (must be 0)."""
    command = ["nghttp", "-v", "-d", str(payload.body_file)]
    command += [f"-H{name}: {value}" for name, value in payload.headers.items()]
    text = subprocess.run(
        [*command, url + payload.path], capture_output=True, text=True, errors="replace"
    ).stdout
    statuses = re.findall(r"grpc-status: (\d+)", text)
    if statuses != ["0"]:
        message = re.findall(r"grpc-message: (.*)", text)
        raise RuntimeError(f"gRPC call through nghttp failed: status {statuses} {message}")
    return "grpc-status: 0"
