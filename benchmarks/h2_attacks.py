"""Each HTTP/2 attack of ``benchmarks/attacks_h2.py`` against a fresh tfmux gRPC server (own
HTTP/2 implementation, an echo service, the default 256 MiB message limit, uvloop as
``tfmux serve`` runs it), measuring what it costs everyone else:

- loop stall: the longest PING round trip seen by a probe connection that pings every 10 ms
  during the attack and for 2 s after it (the server's event loop answers it; the attack runs
  in another process);
- RSS growth: the server process's peak resident memory during the attack minus before it;
- whether the server closed the attacking connection, and a grpcio call right after.

``--src DIR`` runs the server from another source tree (e.g. ``git archive`` of an older
commit) to compare before/after in the same run::

    python -m benchmarks.h2_attacks --duration 10
    mkdir -p /tmp/before && git archive OLD src | tar -x -C /tmp/before
    python -m benchmarks.h2_attacks --duration 10 --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import attacks_h2 as attacks

MiB = 1024 * 1024


def serve() -> None:
    """The server process: an echo gRPC service on a free port, printed on stdout."""
    import grpc
    import uvloop

    from tfmux.transports.grpc_server import start_grpc_server

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    def register(server: Any) -> None:
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Test", {"echo": handler}),)
        )

    async def main() -> None:
        _, port = await start_grpc_server("127.0.0.1", 0, 256 * MiB, [register], "tfmux")
        print(port, flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Probe(threading.Thread):
    """PINGs the server every 10 ms on its own connection; records round trips and RSS."""

    def __init__(self, port: int, pid: int) -> None:
        super().__init__(daemon=True)
        self.conn = attacks.Conn("127.0.0.1", port)
        self.pid = pid
        self.stop = threading.Event()
        self.worst = 0.0
        self.peak_rss = rss(pid)

    def run(self) -> None:
        conn = self.conn
        conn.pump(0.2)
        while not self.stop.is_set():
            sent = time.monotonic()
            conn.send(attacks.frame(attacks.PING, 0, 0, b"probe!!!"))
            while not self.stop.is_set():  # wait for the PING ACK
                conn.pump(0.05)
                if conn.acks:
                    conn.acks = 0
                    break
            self.worst = max(self.worst, time.monotonic() - sent)
            time.sleep(0.01)

    def sample_memory(self) -> None:
        """RSS every 20 ms, in a thread of its own (a stalled server delays the PINGs)."""
        while not self.stop.is_set():
            self.peak_rss = max(self.peak_rss, rss(self.pid))
            time.sleep(0.02)


def good_call(port: int) -> str:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary("/t.Test/echo")(b"hello", timeout=10)
        except grpc.RpcError as exc:
            return f"failed: {exc.code().name}"
    return "ok"


def run_one(name: str, duration: float, src: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, root) if p)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.h2_attacks", "--serve"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        good_call(port)  # warm: the baseline includes one served call
        time.sleep(0.3)
        before = rss(server.pid)
        probe = Probe(port, server.pid)
        # The attack runs in a process of its own so that it cannot hold up the probe (GIL).
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(attacks.prepare, (name,))
            probe.start()
            threading.Thread(target=probe.sample_memory, daemon=True).start()
            result = pool.apply(attacks.ATTACKS[name], ("127.0.0.1", port, duration))
        time.sleep(2.0)
        probe.stop.set()
        probe.join(30)
        call = good_call(port)
        return {
            "attack": name,
            "sent": result.sent,
            "attack_seconds": round(result.seconds, 2),
            "closed_by_server": result.closed_by_server,
            "goaway_code": result.goaway_code,
            "notes": result.notes,
            "loop_stall_ms": round(probe.worst * 1000, 1),
            "rss_growth_mib": round((probe.peak_rss - before) / MiB, 1),
            "good_call_after": call,
        }
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per attack")
    parser.add_argument("--attacks", default=",".join(attacks.ATTACKS))
    parser.add_argument("--src", help="run the server from this source tree")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    rows = [run_one(name, args.duration, args.src) for name in args.attacks.split(",")]
    report = {"machine": platform.processor() or platform.machine(), "src": args.src, "rows": rows}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
