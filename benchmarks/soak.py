"""Soak: a live ``tfmux serve`` under each attack while a well-behaved client keeps sending.

The server (the demo models, default settings, pinned to one core) runs in its own process;
the well-behaved client in another, pinned to the other core (REST predict over one keep-alive
connection, then a TF Serving gRPC Predict, in turn, each with a 10 s timeout); each attack in a
third, idle-scheduled on the server's core (``--attacker-cores``), so the client's figures
measure the server and not a starved client. Phases: a baseline with no attack, each attack
for ``--seconds``, a closing baseline. For each phase: the client's p50/p99 per protocol and
its errors, the p99 ratio against the faster of the two baselines (goal <= 2x), the server's
RSS growth (peak during the phase, and 3 s after it, against its start), the size of
/metrics, and how hard the attack pushed (connections or requests per second).

    python -m benchmarks.soak --seconds 60                    # every attack (docs/security.md)
    python -m benchmarks.soak --seconds 5 --attacks slowloris # one, quickly

REST attacks come from ``benchmarks/attacks_rest.py``, HTTP/2 ones (on the gRPC port) from
``benchmarks/attacks_h2.py`` when present. Loopback only.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks import attacks_rest, servers
from benchmarks.common import (
    LOAD_CORE,
    RESULTS,
    ROWS,
    SERVER_CORE,
    binary_predict_request,
    log,
    percentile,
)
from benchmarks.servers import Server, free_port, http_ok

try:
    from benchmarks import attacks_h2
except ImportError:  # not merged yet, or hpack missing
    attacks_h2 = None  # type: ignore[assignment]

Attack = Callable[[str, int, int, float], dict[str, Any]]


def attacks() -> dict[str, Attack]:
    """Every attack by name: ``attack(host, http_port, grpc_port, seconds) -> summary``."""
    table: dict[str, Attack] = {}
    for name, fn in attacks_rest.ATTACKS.items():
        table[f"rest_{name}"] = _rest(fn)
    if attacks_h2 is not None:
        for name, fn in attacks_h2.ATTACKS.items():
            if name == "rapid_reset":  # complete calls of a real method: handlers to start
                request = attacks_h2.predict_request("binary", ROWS)
                fn = functools.partial(fn, path=attacks_h2.PREDICT, message=request)
            if name != "no_attack":
                table[f"h2_{name}"] = _h2(name, fn)
    return table


def _rest(fn: Callable[..., Any]) -> Attack:
    return lambda host, http, grpc, seconds: asdict(fn(host, http, seconds))


def _h2(name: str, fn: Callable[..., Any]) -> Attack:
    def run(host: str, http: int, grpc: int, seconds: float) -> dict[str, Any]:
        """The attack again and again (each ends when done or closed) until time is up."""
        if hasattr(attacks_h2, "prepare"):
            attacks_h2.prepare(name)
        stop = time.monotonic() + seconds
        rounds, closed, goaways, sent = 0, 0, set(), 0
        while (left := stop - time.monotonic()) > 0.2:
            try:
                result = fn(host, grpc, left)
            except OSError as exc:  # refused at connect, e.g. past the connection limit
                result = None
                goaways.add(f"connect: {type(exc).__name__}")
                time.sleep(0.05)
            if result is not None:
                sent += result.sent
                closed += int(result.closed_by_server)
                if result.goaway_code is not None:
                    goaways.add(result.goaway_code)
            rounds += 1
        return {"name": name, "rounds": rounds, "sent": sent, "closed_by_server": closed,
                "goaway_codes": sorted(map(str, goaways))}  # fmt: skip

    return run


# -- the processes ------------------------------------------------------------------------------


def client(conn: Connection, http_port: int, grpc_port: int) -> None:
    """The well-behaved client: on each ("run", seconds), alternates REST and gRPC predicts
    for that long and answers with latencies (ms) and errors."""
    os.sched_setaffinity(0, {LOAD_CORE})
    import grpc
    import httpx
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = binary_predict_request()
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    conn.send("ready")
    while (command := conn.recv()) != "stop":
        seconds = float(command[1])
        rest: list[float] = []
        grpc_ms: list[float] = []
        errors: list[str] = []
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                r = http.post("/v1/models/binary:predict", json={"instances": ROWS})
                if r.status_code != 200:
                    errors.append(f"REST {r.status_code}: {r.text[:100]}")
                rest.append((time.perf_counter() - t0) * 1000)
            except httpx.HTTPError as exc:
                errors.append(f"REST {type(exc).__name__}: {exc}")
            t0 = time.perf_counter()
            try:
                predict(request, timeout=10)
                grpc_ms.append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as exc:
                errors.append(f"gRPC {exc.code()}: {exc.details()}")
        conn.send(
            {
                "rest_count": len(rest),
                "rest_p50": percentile(rest, 0.5),
                "rest_p99": percentile(rest, 0.99),
                "grpc_count": len(grpc_ms),
                "grpc_p50": percentile(grpc_ms, 0.5),
                "grpc_p99": percentile(grpc_ms, 0.99),
                "errors": len(errors),
                "error_samples": sorted(set(errors))[:5],
            }
        )
    http.close()
    channel.close()


PLACEMENTS = {"server": {SERVER_CORE}, "client": {LOAD_CORE}, "any": {SERVER_CORE, LOAD_CORE}}


def attacker(
    conn: Connection, name: str, ports: tuple[int, int], seconds: float, placement: str
) -> None:
    """The attack at the lowest priority there is (SCHED_IDLE: it runs only on CPU time
    nobody else wants, and a waking server or client preempts it at once), on the cores of
    ``placement``. On a two-core machine the default, ``server``, keeps the attack off the
    client's core: sharing it, even idle-scheduled, the attack slowed the client's own
    process (36% fewer requests with the server's core not saturated), which is not what
    this measures (docs/security.md)."""
    os.sched_setaffinity(0, PLACEMENTS[placement])
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    conn.send(attacks()[name]("127.0.0.1", *ports, seconds))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_bytes(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as r:
        return len(r.read())


# -- the run ------------------------------------------------------------------------------------


def phase(
    server: Server, worker: Connection, name: str | None, seconds: float, placement: str = "server"
) -> dict[str, Any]:
    """One phase: the client for ``seconds``, with attack ``name`` alongside (None: none)."""
    pid = server.pid or 0
    assert server.http_port is not None and server.grpc_port is not None
    start_rss, start_metrics = rss(pid), metrics_bytes(server.http_port)
    start_cpu, started = cpu_seconds(pid), time.monotonic()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attack_result: dict[str, Any] = {}
    process = None
    if name is not None:
        ours, theirs = multiprocessing.Pipe()
        args = (theirs, name, (server.http_port, server.grpc_port), seconds, placement)
        process = multiprocessing.get_context("spawn").Process(target=attacker, args=args)
        process.start()
    worker.send(("run", seconds))
    figures: dict[str, Any] = worker.recv()
    if process is not None:
        if ours.poll(seconds + 60):
            attack_result = ours.recv()
        process.join(10)
        if process.is_alive():
            process.kill()
    cpu = (cpu_seconds(pid) - start_cpu) / (time.monotonic() - started)
    time.sleep(3)  # what stays after the attack
    done.set()
    sampler.join()
    figures.update(
        phase=name or "baseline",
        seconds=seconds,
        attacker_cores=placement,
        server_cpu=cpu,
        rss_start_mib=start_rss / 2**20,
        rss_peak_growth_mib=(peak[0] - start_rss) / 2**20,
        rss_after_growth_mib=(rss(pid) - start_rss) / 2**20,
        metrics_kib_before=start_metrics / 1024,
        metrics_kib_after=metrics_bytes(server.http_port) / 1024,
        attack=attack_result,
    )
    return figures


def table(rows: list[dict[str, Any]]) -> str:
    baselines = [row for row in rows if row["phase"] == "baseline"]
    base = {  # the faster of the opening and closing baselines: ratios never flattered
        key: min(row[key] for row in baselines) for key in ("rest_p99", "grpc_p99")
    }
    lines = [
        "| phase | REST p99 ms (x base) | gRPC p99 ms (x base) | client requests | errors "
        "| RSS peak / after +MiB | /metrics KiB | server CPU | attack rounds/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rest_ratio = row["rest_p99"] / base["rest_p99"]
        grpc_ratio = row["grpc_p99"] / base["grpc_p99"]
        lines.append(
            f"| {row['phase']} | {row['rest_p99']:.1f} ({rest_ratio:.2f}x) "
            f"| {row['grpc_p99']:.1f} ({grpc_ratio:.2f}x) "
            f"| {row['rest_count'] + row['grpc_count']} | {row['errors']} "
            f"| {row['rss_peak_growth_mib']:+.0f} / {row['rss_after_growth_mib']:+.0f} "
            f"| {row['metrics_kib_before']:.0f} → {row['metrics_kib_after']:.0f} "
            f"| {row['server_cpu']:.0%} | {_attack_rate(row)} |"
        )
    return "\n".join(lines)


def _attack_rate(row: dict[str, Any]) -> str:
    """Connections (HTTP/2 rounds) or requests (REST) the attack made per second."""
    attack = row.get("attack") or {}
    count = attack.get("rounds", attack.get("sent"))
    return "" if count is None else f"{count / row['seconds']:.0f}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase")
    parser.add_argument("--attacks", default="", help="comma-separated names (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak-latest.json")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve option")
    parser.add_argument("--src", type=Path, help="run the server from this source tree's tfmux")
    parser.add_argument(
        "--attacker-cores",
        choices=sorted(PLACEMENTS),
        default="server",
        help="where the (idle-scheduled) attack runs: with the server (default), the client, "
        "or anywhere",
    )
    args = parser.parse_args(argv)
    if args.src is not None:
        servers.TFMUX_SRC[0] = args.src.resolve()
    available = attacks()
    chosen = [a for a in args.attacks.split(",") if a] or list(available)
    unknown = set(chosen) - set(available)
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; available: {sorted(available)}")
    work = Path(tempfile.mkdtemp(prefix="tfmux-soak-"))
    server = Server(
        "tfmux-soak",
        [sys.executable, "-m", "tfmux", "serve", "--log-level", "warning", *args.serve_arg],
        free_port(),
        free_port(),
        http_ok("/v1/models/binary"),
        work,
    )  # fmt: skip
    server.command += ["--http-port", str(server.http_port), "--grpc-port", str(server.grpc_port)]
    rows: list[dict[str, Any]] = []
    with server.running():
        ours, theirs = multiprocessing.Pipe()
        context = multiprocessing.get_context("spawn")
        worker = context.Process(target=client, args=(theirs, server.http_port, server.grpc_port))
        worker.start()
        assert ours.recv() == "ready"
        ours.send(("run", min(5.0, args.seconds)))  # warm-up, not reported
        ours.recv()
        for name in [None, *chosen, None]:
            log(f"phase {name or 'baseline'} for {args.seconds:.0f} s")
            row = phase(server, ours, name, args.seconds, args.attacker_cores)
            log(f"  {json.dumps({k: v for k, v in row.items() if k != 'attack'}, default=str)}")
            rows.append(row)
        ours.send("stop")
        worker.join(30)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "seconds": args.seconds,
                                       "phases": rows}, indent=2, default=str))  # fmt: skip
    print(f"\nmachine: {machine}; {args.seconds:.0f} s per phase\n\n{table(rows)}")
    return rows


if __name__ == "__main__":
    main()
