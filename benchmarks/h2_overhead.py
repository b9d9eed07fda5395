"""What the HTTP/2 hardening costs a well-behaved gRPC client: unary TF Serving Predict
against two ``tfmux serve`` processes in the same run, this tree's and another's (``--src``,
e.g. the tree before the hardening), each pinned to the server core, with a grpcio client
in its own process on the other core.

The servers run side by side (the demo models, default settings) and are measured in turn,
back to back in alternating order for ``--rounds`` rounds, so load changes on the machine fall
on both. Per server: calls one at a time (latency p50/p99, calls/s) and ``--concurrency`` calls
in flight on one channel (calls/s). Reported: medians over the rounds, and the median of each
round's ratio this tree / the other.

    git worktree add /tmp/h2-before <commit before the hardening>
    python -m benchmarks.h2_overhead --src /tmp/h2-before/src --seconds 4 --rounds 8

Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.common import (
    LOAD_CORE,
    RESULTS,
    ROOT,
    binary_predict_request,
    log,
    percentile,
)
from benchmarks.servers import Server, free_port, http_ok


def client(conn: Connection) -> None:
    """On ("run", port, seconds, concurrency): Predict calls for that long, answers figures."""
    os.sched_setaffinity(0, {LOAD_CORE})
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = binary_predict_request()
    channels: dict[int, Any] = {}
    conn.send("ready")
    while (command := conn.recv()) != "stop":
        _, port, seconds, concurrency = command
        if port not in channels:
            channels[port] = grpc.insecure_channel(f"127.0.0.1:{port}")
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channels[port]).Predict
        latencies: list[float] = []
        errors = 0
        samples: set[str] = set()
        calls = 0
        started = time.perf_counter()
        stop = started + seconds
        if concurrency == 1:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    predict(request, timeout=10)
                except grpc.RpcError as exc:
                    errors += 1
                    samples.add(f"{exc.code()}: {exc.details()}"[:200])
                latencies.append((time.perf_counter() - t0) * 1000)
            calls = len(latencies)
        else:
            pending = [predict.future(request, timeout=10) for _ in range(concurrency)]
            while time.perf_counter() < stop:
                done = pending.pop(0)
                if (failure := done.exception()) is not None:
                    errors += 1
                    samples.add(str(failure)[:200])
                calls += 1
                pending.append(predict.future(request, timeout=10))
            for future in pending:
                future.exception()
        elapsed = time.perf_counter() - started
        conn.send(
            {
                "calls_per_s": calls / elapsed,
                "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99),
                "errors": errors,
                "error_samples": sorted(samples)[:3],
            }
        )
    for channel in channels.values():
        channel.close()


def _server(name: str, work: Path) -> Server:
    server = Server(
        name,
        [sys.executable, "-m", "tfmux", "serve", "--log-level", "warning"],
        free_port(),
        free_port(),
        http_ok("/v1/models/binary"),
        work,
    )
    server.command += ["--http-port", str(server.http_port), "--grpc-port", str(server.grpc_port)]
    return server


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="the other tree's src/")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS / "h2-overhead.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tfmux-h2-overhead-"))
    trees = {"this": ROOT / "src", "other": args.src.resolve()}
    started: dict[str, Server] = {}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        tree: {"unary": [], "concurrent": []} for tree in trees
    }
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    worker = context.Process(target=client, args=(theirs,))
    with contextlib.ExitStack() as stack:
        for tree, src in trees.items():
            servers.TFMUX_SRC[0] = src
            started[tree] = stack.enter_context(_server(f"tfmux-{tree}", work).running())
        worker.start()
        assert ours.recv() == "ready"
        for server in started.values():  # warm-up, not reported
            ours.send(("run", server.grpc_port, 2.0, 1))
            ours.recv()
        for round_ in range(args.rounds):
            order = list(started) if round_ % 2 == 0 else list(reversed(started))
            for mode, concurrency in (("unary", 1), ("concurrent", args.concurrency)):
                for tree in order:  # back to back: the pair sees the same load
                    ours.send(("run", started[tree].grpc_port, args.seconds, concurrency))
                    row = ours.recv()
                    log(f"round {round_} {tree} {mode}: {json.dumps(row)}")
                    results[tree][mode].append(row)
        ours.send("stop")
        worker.join(30)
    summary = _summary(results)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    report = {"machine": machine, "other_src": str(args.src), "seconds": args.seconds,
              "rounds": args.rounds, "concurrency": args.concurrency, "summary": summary,
              "results": results}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nmachine: {machine}; load average {os.getloadavg()[0]:.1f}\n")
    for key, (this, other, ratio) in summary.items():
        print(f"{key:>22}: this {this:9.2f}  other {other:9.2f}  this/other (paired) {ratio:.3f}")
    return report


def _summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, list[float]]:
    """Per figure: the median over the rounds of this tree, of the other, and of the ratio
    this / other within each round (both measured back to back, so under the same load)."""
    out = {}
    for mode, key in (
        ("unary", "calls_per_s"),
        ("unary", "p50_ms"),
        ("unary", "p99_ms"),
        ("concurrent", "calls_per_s"),
    ):
        this = [row[key] for row in results["this"][mode]]
        other = [row[key] for row in results["other"][mode]]
        ratios = [a / b for a, b in zip(this, other, strict=True)]
        out[f"{mode} {key}"] = [
            statistics.median(this),
            statistics.median(other),
            statistics.median(ratios),
        ]
    return out


if __name__ == "__main__":
    main()
