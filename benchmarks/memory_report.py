"""The memory benchmark's report (benchmarks/results/memory-latest.md) from its figures."""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.memory_tools import mib


def render(report: dict[str, Any], machine: dict[str, str], command: str) -> str:
    """Markdown: the run's date, command and machine, then each section's figures."""
    lines = [
        "# tfmux memory benchmark",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}`",
        *(f"- {key}: {value}" for key, value in machine.items()),
        "",
        *_cold(report["cold"]),
        *_zipf(report["zipf"]),
        *_unload(report["unload"]),
        *_speed(report["speed"]),
    ]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def _cold(cold: dict[str, Any]) -> list[str]:
    tfmux, direct = statistics.median(cold["tfmux_s"]), statistics.median(cold["direct_s"])
    verdict = "PASS" if cold["passed"] else "FAIL"
    runs = len(cold["tfmux_s"])
    return [
        "## Cold start of a lazy model (MLP 256→1024→1024→10, 5 MB)",
        "",
        "| | median | runs |",
        "|---|---|---|",
        f"| tfmux: first request to a lazy model, fresh server (REST, load included) "
        f"| {_ms(tfmux)} | {', '.join(_ms(s) for s in cold['tfmux_s'])} |",
        f"| TensorFlow directly: `tf.saved_model.load` + one call, fresh process "
        f"| {_ms(direct)} | {', '.join(_ms(s) for s in cold['direct_s'])} |",
        f"| tfmux: first request to a second lazy model (TensorFlow already warm) "
        f"| {_ms(statistics.median(cold['second_model_s']))} "
        f"| {', '.join(_ms(s) for s in cold['second_model_s'])} |",
        "",
        f"Ratio tfmux / direct: **{cold['ratio']:.2f}x** (target: at most 1.2x + 50 ms = "
        f"{_ms(cold['allowed_s'])}): **{verdict}**. Medians of {runs} fresh processes each, "
        "alternating. TensorFlow's import is excluded on both sides (the server imports it "
        "at startup); the start of its runtime (first op) is included on both; both run with "
        "oneDNN off (the server's default).",
        "",
    ]


def _zipf(z: dict[str, Any]) -> list[str]:
    hits, misses = z["hits"], z["misses"]
    over = z["peak_rss"] - z["empty_rss"]
    ceiling = 1.1 * (z["budget"] + z["empty_rss"])
    return [
        f"## Zipf workload: {z['models']} models, a budget that fits 20",
        "",
        f"{z['models']} lazy copies of the MLP; budget {mib(z['budget'])} = 20.5 x "
        f"{z['model_cost'] / 2**20:.2f} MiB, the median cost tfmux measured for one of them "
        f"(loaded alone in a separate server); Zipf exponent {z['exponent']}; one REST "
        "client, sequential; "
        f"{z['warmup']} warm-up requests, then {z['requests']} measured. A request is a hit "
        "when its model was AVAILABLE just before it.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| failed requests | {z['errors']} |",
        f"| hit rate | {z['hit_rate']:.1%} (an oracle keeping the 20 most popular: "
        f"{z['ideal_hit_rate']:.1%}) |",
        f"| hits: p50 / p99 | {hits['p50_ms']:.1f} / {hits['p99_ms']:.1f} ms "
        f"({hits['n']} requests) |",
        f"| misses (load included): p50 / p99 | {misses['p50_ms']:.1f} / "
        f"{misses['p99_ms']:.1f} ms ({misses['n']} requests) |",
        f"| loads | {z['loads']} in {z['busy_s']:.1f} s of requests: "
        f"{z['loads_per_s']:.1f} loads/s |",
        f"| models resident at the end | {z['resident']}, charged {mib(z['used'])} of the "
        f"budget ({z['used'] / max(z['resident'], 1) / 2**20:.2f} MiB each on average) |",
        f"| server RSS: empty / peak during the run | {mib(z['empty_rss'])} / "
        f"{mib(z['peak_rss'])} |",
        f"| peak RSS above the empty server | {mib(over)} = {over / z['budget']:.2f} x the "
        "budget |",
        f"| peak RSS within (budget + empty server) x 1.1 = {mib(ceiling)} | "
        f"{'PASS' if z['peak_rss'] <= ceiling else 'FAIL'} |",
        f"| VmHWM (highest RSS since start) | {mib(z['hwm_rss'])} |",
        "",
    ]


def _unload(unload: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Memory after unloading: oneDNN off (default) vs on",
        "",
        "A tfmux server (`--load lazy`, no budget), six TF2 models of one 3600x3600 float32 "
        "variable (50 MB) each: load and call all six, unload all six (V2 repository API), "
        "then six more load/call/unload cycles. Server RSS:",
        "",
        "| oneDNN | empty | 6 loaded | all unloaded | after 6 more cycles | tfmux's measured "
        "cost: first load / reloads |",
        "|---|---|---|---|---|---|",
    ]
    for setting, m in unload.items():
        first = m["first_cost"][0] if m["first_cost"] else 0
        reloads = ", ".join(f"{c[0] / 2**20:.1f}" for c in m["reload_costs"] if c)
        lines.append(
            f"| {setting} | {mib(m['empty'])} | {mib(m['loaded'])} | {mib(m['unloaded'])} "
            f"| {mib(m['cycled'])} | {mib(first)} / {reloads} MiB |"
        )
    return [*lines, ""]


def _speed(speed: dict[str, dict[str, list[float]]]) -> list[str]:
    lines = [
        "## oneDNN's speed: MLP in-process, one core (`taskset -c 1`)",
        "",
        "The TF2 serving signature called back to back as benchmarks/inprocess.py calls it, "
        f"{len(speed['on']['batch1'])} alternating fresh processes per setting; medians. "
        "Calls per second of the CPU time the process used (what a core of its own gives, "
        "even when other work shares the core), and of wall time in brackets.",
        "",
        "| batch | oneDNN on | oneDNN off | off / on |",
        "|---|---|---|---|",
    ]
    for batch, rows in (("batch1", 1), ("batch32", 32)):
        on, off = statistics.median(speed["on"][batch]), statistics.median(speed["off"][batch])
        lines.append(
            f"| {rows} | {_rate(speed['on'], batch, rows)} | {_rate(speed['off'], batch, rows)} "
            f"| {off / on:.2f}x |"
        )
    return [*lines, ""]


def _rate(runs: dict[str, list[float]], batch: str, rows: int) -> str:
    cpu, wall = statistics.median(runs[batch]), statistics.median(runs[f"{batch}_wall"])
    return f"{cpu:,.0f} calls/s = {cpu * rows:,.0f} rows/s ({wall:,.0f} calls/s wall)"
