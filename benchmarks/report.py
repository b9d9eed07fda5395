"""Targets, their ratios and PASS/FAIL, and the Markdown report of a run."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DISTURBED,
    DOC,
    DOC_END,
    DOC_START,
    LOAD_CORE,
    MODELS,
    PROTOCOL_NAMES,
    PROTOCOLS,
    RESULTS,
    ROOT,
    SERVER_CORE,
)
from benchmarks.loadgen import LoadResult


def others_cpu(result: LoadResult | dict[str, Any]) -> str:
    """Other processes' CPU on the server core / on the generator core."""
    if isinstance(result, dict):
        busy, server, generator = result["core_busy"], result["server_cpu"], result["generator_cpu"]
    else:
        busy, server, generator = result.core_busy, result.server_cpu, result.generator_cpu
    on_server = max(0.0, busy[SERVER_CORE] - server)
    on_generator = max(0.0, busy[LOAD_CORE] - generator)
    return f"{on_server:.2f} / {on_generator:.2f}"


# -- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    protocol: str
    measured: str
    value: float | None
    goal: str
    passed: bool | None
    # The same ratio per core of CPU each side actually got (req/s ÷ its CPU share): what the
    # ratio would be had other processes not taken CPU from either side. None: no such ratio.
    per_core: float | None = None
    disturbed: bool = False  # a measurement it uses was disturbed: trust ``per_core`` more

    def to_json(self) -> dict[str, Any]:
        return vars(self)


def per_core(result: LoadResult) -> float:
    """Requests per second per core of server CPU (meaningful for a saturated server)."""
    return result.requests_per_s / max(result.server_cpu, 1e-3)


def _disturbed(result: LoadResult | None) -> bool:
    return result is not None and result.disturbance(SERVER_CORE) > DISTURBED


ONE_ROW_CALLS = ("tf2_batch1", "tf1_batch1", "runtime_batch1")


def fastest_row_call(calls: dict[str, Any]) -> dict[str, Any]:
    """The fastest in-process one-row call measured for a model: the baseline tfmux must beat
    (the TF2 signature, a TF1 session, or tfmux's own runtime called directly)."""
    measured = [calls[name] for name in ONE_ROW_CALLS if name in calls]
    return max(measured, key=lambda call: call["rows_per_s"])


def evaluate(inprocess: dict[str, Any], results: dict[str, LoadResult]) -> list[Target]:
    """Every target, from the error-free measurements by key (``server/protocol/model/cN``)."""

    def result(key: str) -> LoadResult | None:
        return results.get(key)

    targets: list[Target] = []

    def ratio(name: str, protocol: str, top: str, bottom: str, goal: float, what: str) -> None:
        a, b = result(top), result(bottom)
        value = a.requests_per_s / b.requests_per_s if a and b else None
        passed = None if value is None else value >= goal
        measured = f"{a.requests_per_s:,.0f} / {b.requests_per_s:,.0f} {what}" if a and b else "-"
        normal = per_core(a) / per_core(b) if a and b else None
        shaken = _disturbed(a) or _disturbed(b)
        targets.append(
            Target(name, protocol, measured, value, f"≥ {goal:g}x", passed, normal, shaken)
        )

    mlp_inproc = fastest_row_call(inprocess["mlp"])
    for p in PROTOCOLS:
        on, off = f"tfmux/{p}/mlp/c32", f"tfmux-nobatch/{p}/mlp/c32"
        ratio("MLP, 32 conns: tfmux vs naive server", p, on, f"naive/{p}/mlp/c32", 5, "req/s")
        r = result(on)
        value = r.requests_per_s / mlp_inproc["rows_per_s"] if r else None
        targets.append(
            Target(
                "MLP, 32 conns: tfmux rows/s vs in-process one row at a time",
                p,
                f"{r.requests_per_s:,.0f} / {mlp_inproc['rows_per_s']:,.0f} rows/s" if r else "-",
                value,
                "≥ 2x",
                None if value is None else value >= 2,
                per_core(r) / (mlp_inproc["rows_per_s"] / mlp_inproc["cpu"]) if r else None,
                _disturbed(r) or mlp_inproc["cpu"] < 1 - DISTURBED,
            )
        )
        targets.append(
            Target(
                "MLP, 32 conns: tfmux p99 latency",
                p,
                f"{r.p99_ms:.2f} ms" if r else "-",
                r.p99_ms if r else None,
                "≤ 15 ms",
                None if r is None else r.p99_ms <= 15,
                disturbed=_disturbed(r),
            )
        )
        ratio(
            "tiny, 32 conns: tfmux vs its HTTP stack without a model",
            p,
            f"tfmux/{p}/tiny/c32",
            f"nomodel/{p}/tiny/c32",
            0.6,
            "req/s",
        )
        for model in MODELS:
            r = result(f"tfmux/{p}/{model}/c1")
            base = fastest_row_call(inprocess[model])["median_ms"]
            targets.append(
                Target(
                    f"{model}, 1 sequential client: tfmux median vs in-process call + 1 ms",
                    p,
                    f"{r.p50_ms:.3f} ms vs {base:.3f} + 1 ms" if r else "-",
                    r.p50_ms - base if r else None,
                    "≤ +1 ms",
                    None if r is None else r.p50_ms <= base + 1,
                    disturbed=_disturbed(r),
                )
            )
        ratio(
            "MLP, 32 conns, batching off: tfmux vs naive server",
            p,
            off,
            f"naive/{p}/mlp/c32",
            0.9,
            "req/s",
        )
    return targets


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except OSError:
            return "missing"
        return (out.stdout + out.stderr).strip().splitlines()[0]

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    import tensorflow as tf

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "src") else ""
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "wrk": version(["wrk", "--version"]).split(" [")[0],
        "h2load": version(["h2load", "--version"]),
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
    }


def _fmt_ratio(target: Target) -> str:
    if target.value is None:
        return "-"
    if "ms" in target.goal:
        return f"{target.value:+.3f} ms" if "+" in target.goal else f"{target.value:.2f} ms"
    return f"{target.value:.2f}x"


def _verdict(passed: bool | None, disturbed: bool) -> str:
    verdict = "n/a" if passed is None else ("PASS" if passed else "**FAIL**")
    return f"{verdict} (disturbed)" if disturbed and passed is not None else verdict


def render(report: dict[str, Any]) -> str:
    records: list[dict[str, Any]] = report["records"]
    targets: list[dict[str, Any]] = report["targets"]
    lines = [
        f"Run {report['date']} on {report['machine']['cpu']} (commit {report['machine']['commit']};"
        f" TensorFlow {report['machine']['tensorflow']}, Python {report['machine']['python']},"
        f" {report['machine']['wrk']}, {report['machine']['h2load']}).",
        f"tfmux served from `{report['tfmux_src']}`.",
        f"Command: `{report['command']}` — servers on core {SERVER_CORE}, generators on core "
        f"{LOAD_CORE} ({report['priority']}), {report['duration']:g} s per measurement after "
        f"{report['warmup']:g} s of warmup; a measurement in which the server was kept from "
        f"more than {DISTURBED} of its core is measured again (at most {report['retries']} "
        "more time(s)) and the least disturbed attempt kept.",
        "",
        "### Targets",
        "",
        "| target | protocol | measured | ratio | goal | result | per core |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        t_obj = Target(**t)
        lines.append(
            f"| {t['name']} | {PROTOCOL_NAMES[t['protocol']]} | {t['measured']} | "
            f"{_fmt_ratio(t_obj)} | {t['goal']} | {_verdict(t['passed'], t['disturbed'])} | "
            + (f"{t['per_core']:.2f}x |" if t.get("per_core") is not None else "|")
        )
    lines += [
        "",
        "*per core*: the same ratio computed from each side's requests per second of the CPU it "
        "actually got (server CPU for servers, process CPU for the in-process call): what the "
        "ratio would be had nothing kept either side from its core. *(disturbed)*: a "
        f"measurement the target uses got less than {1 - DISTURBED:g} of its core even after "
        "a retry; trust *per core* there.",
        "",
        "### Every measurement",
        "",
        "CPU columns are in cores: the server process, the load generator, and what other "
        "processes took meanwhile on core 0 (the server's) and core 1 (the generator's); other "
        "load on core 0 makes a figure low.",
        "",
        "| server | protocol | model | conns | req/s | p50 ms | p99 ms | errors | server CPU "
        "| generator CPU | other CPU, core 0 / 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        res = r["result"]
        head = f"| {r['server']} | {PROTOCOL_NAMES[r['protocol']]} | {r['model']} | " + str(
            r["connections"]
        )
        if res is None:
            lines.append(f"{head} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"{head} | {res['requests_per_s']:,.0f} | {res['p50_ms']:.2f} | {res['p99_ms']:.2f} "
            f"| {res['errors']} | {res['server_cpu']:.2f} | {res['generator_cpu']:.2f} "
            f"| {others_cpu(res)} |"
        )
    lines += [
        "",
        "### Load generator ceilings",
        "",
        "Each generator against the endpoints that do no model work; *bound* is the rate it "
        "could drive with a whole core (req/s ÷ its CPU share), a lower bound on its ceiling.",
        "",
        "| generator | endpoint | req/s | generator CPU | bound |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        res = r["result"]
        if r["server"] not in ("ceiling", "nomodel") or res is None:
            continue
        endpoint = (
            "raw httptools server, fixed answer"
            if r["server"] == "ceiling"
            else f"tfmux {PROTOCOL_NAMES[r['protocol']]} stack, no model ({r['model']} body)"
        )
        bound = res["requests_per_s"] / max(res["generator_cpu"], 1e-3)
        lines.append(
            f"| {res['tool']} | {endpoint} | {res['requests_per_s']:,.0f} "
            f"| {res['generator_cpu']:.2f} | ≥ {bound:,.0f} |"
        )
    lines += [
        "",
        "### In-process baselines (core 0, no server)",
        "",
        "| model | call | rows/s | median ms | p99 ms | CPU |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "tf2_batch1": "TF2 signature, 1 row",
        "tf1_batch1": "TF1 session (make_callable), 1 row",
        "runtime_batch1": "tfmux runtime (Session callable), 1 row",
        "tf2_batch32": "TF2 signature, 32 rows",
    }
    for model, calls in report["inprocess"].items():
        for call, label in names.items():
            if call not in calls:
                continue
            f = calls[call]
            lines.append(
                f"| {model} | {label} | {f['rows_per_s']:,.0f} | {f['median_ms']:.3f} "
                f"| {f['p99_ms']:.3f} | {f.get('cpu', 0):.2f} |"
            )
    noisy = [
        r["key"]
        for r in records
        if r["server"] != "ceiling" and (r.get("disturbance") or 0) > DISTURBED
    ]
    if noisy:
        lines += [
            "",
            f"Note: the server was kept from more than {DISTURBED} of its core during "
            f"{len(noisy)} measurement(s) ({', '.join(noisy)}); those figures are low.",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output: Path, doc: bool) -> str:
    """``latest.json`` and ``latest.md`` in ``output``, and the table into the docs page."""
    table = render(report)
    output.mkdir(parents=True, exist_ok=True)
    (output / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "latest.md").write_text("# tfmux benchmark: latest results\n\n" + table)
    if doc:
        update_doc(table)
    return table


def main() -> None:
    """Render ``latest.md`` (and the docs table) again from a run's ``latest.json``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path, nargs="?", default=RESULTS / "latest.json")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()
    write_report(json.loads(args.json.read_text()), args.json.parent, not args.no_doc)


def update_doc(table: str) -> None:
    if not DOC.is_file():
        return
    text = DOC.read_text()
    start, end = text.find(DOC_START), text.find(DOC_END)
    if start < 0 or end < start:
        return
    DOC.write_text(text[: start + len(DOC_START)] + "\n" + table + text[end:])


if __name__ == "__main__":
    main()
