"""The client side of ``tfmux traffic``: read, and change, a model's labels, split and shadow
through the traffic API (``/v2/repository/models/NAME/traffic``), and show them beside the
per-arm figures of the server's ``/metrics``: requests, errors and latency per version, routed
requests per arm, and how far the shadow agrees with the primary.

Talking to the server (errors, exit codes, the token) is ``admin_client``'s; ``cli`` only
declares the command.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, RenderableType
from rich.table import Table

from tfmux.admin_client import AdminClient, AdminError, Command

Json = dict[str, Any]
QUANTILES = (0.5, 0.99)


# -- figures read from /metrics ------------------------------------------------------------------


@dataclass
class VersionFigures:
    """Requests a model version answered (by any route), errors, and latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))

    def quantile(self, q: float) -> float | None:
        """Seconds below which ``q`` of the answers fell, interpolated within its bucket as
        Prometheus' ``histogram_quantile`` does (the highest finite bound past the last)."""
        bounds = sorted(self.buckets.items())
        if not bounds or bounds[-1][1] <= 0:
            return None
        rank = q * bounds[-1][1]
        lower, below = 0.0, 0.0
        for bound, count in bounds:
            if count >= rank:
                if math.isinf(bound):
                    return lower
                share = (rank - below) / (count - below) if count > below else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, count
        return lower


@dataclass
class ShadowFigures:
    """Mirrors of the requests one primary version answered."""

    outcomes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    shadow_versions: set[str] = field(default_factory=set)
    diffs: dict[str, list[float]] = field(default_factory=dict)  # output -> [sum, count]

    def agreement(self) -> float | None:
        """Share of compared answers that agreed (errors and dropped mirrors are not)."""
        compared = self.outcomes["agree"] + self.outcomes["disagree"]
        return self.outcomes["agree"] / compared if compared else None


@dataclass
class Figures:
    """What /metrics says about one model (or the models behind an alias)."""

    versions: dict[tuple[str, str], VersionFigures] = field(default_factory=dict)
    routed: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # by arm
    shadows: dict[tuple[str, str], ShadowFigures] = field(default_factory=dict)


def read_figures(text: str, name: str, models: set[str]) -> Figures:
    """The figures of the Prometheus text ``text`` for ``name`` (routed requests) and
    ``models`` (the versions that serve it)."""
    figures = Figures()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == "tfmux_routed_requests_total" and labels["model"] == name:
                figures.routed[labels["arm"]] += value
            elif labels.get("model") in models and labels.get("version"):
                _add(figures, sample.name, labels, value)
    return figures


def _add(figures: Figures, sample: str, labels: dict[str, str], value: float) -> None:
    key = (labels["model"], labels["version"])
    if sample == "tfmux_requests_total":
        version = figures.versions.setdefault(key, VersionFigures())
        version.requests += value
        version.errors += value if labels["code"] != "OK" else 0.0
    elif sample == "tfmux_request_latency_seconds_bucket":
        figures.versions.setdefault(key, VersionFigures()).buckets[float(labels["le"])] += value
    elif sample == "tfmux_shadow_requests_total":
        shadow = figures.shadows.setdefault(key, ShadowFigures())
        shadow.outcomes[labels["outcome"]] += value
        if labels["shadow_version"]:
            shadow.shadow_versions.add(labels["shadow_version"])
    elif sample in ("tfmux_shadow_mean_abs_diff_sum", "tfmux_shadow_mean_abs_diff_count"):
        diff = figures.shadows.setdefault(key, ShadowFigures()).diffs
        diff.setdefault(labels["output"], [0.0, 0.0])[sample.endswith("_count")] += value


# -- rendering -------------------------------------------------------------------------------------


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _mean(sum_and_count: list[float] | None) -> str:
    if not sum_and_count or not sum_and_count[1]:
        return "-"
    return f"{sum_and_count[0] / sum_and_count[1]:.4g}"


def _count(value: float) -> str:
    return f"{value:.0f}"


def render(name: str, traffic: Json, figures: Figures) -> Iterator[RenderableType]:
    """The state, then the split, versions and shadow tables."""
    labels: dict[str, int] = traffic.get("labels") or {}
    split: dict[str, float] = traffic.get("split") or {}
    kind = "alias" if traffic.get("alias") else "model"
    named = ", ".join(f"{label} → v{version}" for label, version in sorted(labels.items()))
    yield f"[bold]{kind} {name}[/]" + (f"   labels: {named}" if named else "")
    if split:
        yield _split_table(split, labels, figures, kind == "alias")
    else:
        yield "no split: requests that name only the model go to its latest version"
    if figures.versions:
        yield _versions_table(labels, figures, kind == "alias")
    shadow = traffic.get("shadow")
    if shadow:
        target = f"v{shadow['target']}" if shadow["target"].isdigit() else shadow["target"]
        yield f"shadow: {shadow['percent']:g}% of the requests are mirrored to {target}"
    if figures.shadows:
        yield _shadow_table(figures)


def _split_table(
    split: dict[str, float], labels: dict[str, int], figures: Figures, alias: bool
) -> Table:
    total, routed = sum(split.values()), sum(figures.routed.values())
    table = Table("arm", "weight", "share", "serves", "routed", "routed share", title="split")
    for arm, weight in split.items():
        serves = "model" if alias else f"v{labels[arm]}" if arm in labels else f"v{arm}"
        count = figures.routed.get(arm, 0.0)
        table.add_row(
            arm, f"{weight:g}", _share(weight, total), serves, _count(count), _share(count, routed)
        )
    return table


def _versions_table(labels: dict[str, int], figures: Figures, alias: bool) -> Table:
    p50, p99 = (f"p{round(q * 100)}" for q in QUANTILES)
    title = "versions (requests by any route)"
    table = Table("version", "labels", "requests", "errors", "error rate", p50, p99, title=title)
    for (model, version), v in sorted(figures.versions.items()):
        names = ", ".join(sorted(k for k, n in labels.items() if str(n) == version))
        table.add_row(
            f"{model} v{version}" if alias else f"v{version}",
            names,
            _count(v.requests),
            _count(v.errors),
            _share(v.errors, v.requests),
            *(seconds_text(v.quantile(q)) for q in QUANTILES),
        )
    return table


def _shadow_table(figures: Figures) -> Table:
    outputs = sorted({out for s in figures.shadows.values() for out in s.diffs})
    columns = ["primary", "shadow", "mirrored", "agree", "disagree", "errors", "dropped"]
    table = Table(*columns, "agreement", *(f"mean |diff| {o}" for o in outputs), title="shadow")
    for (model, version), s in sorted(figures.shadows.items()):
        agreement = s.agreement()
        counts = [s.outcomes[k] for k in ("agree", "disagree", "error", "dropped")]
        table.add_row(
            f"{model} v{version}",
            ", ".join(f"v{v}" for v in sorted(s.shadow_versions)),
            _count(sum(counts)),
            *(_count(c) for c in counts),
            "-" if agreement is None else f"{100 * agreement:.1f}%",
            *(_mean(s.diffs.get(output)) for output in outputs),
        )
    return table


# -- talking to the server -------------------------------------------------------------------------


def traffic_path(name: str) -> str:
    return f"/v2/repository/models/{quote(name, safe='')}/traffic"


async def show(client: AdminClient, console: Console, name: str, change: Json | None) -> None:
    """Apply ``change`` (a traffic API body), if any; then print the state and the figures."""
    if change is not None:
        await client.request("POST", traffic_path(name), json=change)
        console.print(f"changed the traffic of {name}")
    traffic = (await client.request("GET", traffic_path(name))).json()
    metrics = (await client.request("GET", "/metrics")).text
    if not isinstance(traffic, dict):
        raise AdminError(f"{client.url} does not answer like a tfmux server")
    models = set(traffic.get("split") or {}) if traffic.get("alias") else {name}
    for part in render(name, traffic, read_figures(metrics, name, models)):
        console.print(part)


def command(
    name: str,
    split: dict[str, float] | None,
    labels: dict[str, int],
    shadow: Json | None,
    no_shadow: bool,
    allow_unavailable: bool,
) -> Command:
    """The ``tfmux traffic`` run: the change the options ask for, if any, then the figures."""
    if shadow is not None and no_shadow:
        raise click.UsageError("--shadow and --no-shadow exclude each other")
    change: Json = {"labels": labels} if labels else {}
    if split is not None:
        change["split"] = split
    if shadow is not None or no_shadow:
        change["shadow"] = shadow
    if change and allow_unavailable:
        change["allow_unavailable"] = True

    async def run(client: AdminClient, console: Console) -> None:
        await show(client, console, name, change or None)

    return run


# -- options ---------------------------------------------------------------------------------------


def _pairs(text: str, separator: str, option: str) -> Iterator[tuple[str, str]]:
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition(separator)
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r} is not KEY{separator}VALUE", param_hint=option)
        yield key, value


def _number(text: str, option: str, kind: Callable[[str], Any] = float) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number", param_hint=option) from None


def parse_split(ctx: click.Context, param: click.Parameter, text: str | None) -> Json | None:
    """``stable=90,canary=10`` -> weights by arm (a label or a version number)."""
    if text is None:
        return None
    return {arm: _number(w, "--split") for arm, w in _pairs(text, "=", "--split")}


def parse_labels(
    ctx: click.Context, param: click.Parameter, texts: tuple[str, ...]
) -> dict[str, int]:
    """``canary=3`` (repeatable) -> versions by label."""
    pairs = [pair for text in texts for pair in _pairs(text, "=", "--label")]
    return {label: _number(version, "--label", int) for label, version in pairs}


def parse_shadow(ctx: click.Context, param: click.Parameter, text: str | None) -> Json | None:
    """``canary:100`` (or ``canary``, for 100%) -> the shadow's target and percent."""
    if text is None:
        return None
    target, _, percent = text.partition(":")
    if not target:
        raise click.BadParameter(f"{text!r} is not TARGET[:PERCENT]", param_hint="--shadow")
    return {"target": target, "percent": _number(percent or "100", "--shadow")}


def change_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of ``tfmux traffic`` that change the traffic."""
    options = [
        click.option(
            "--split",
            callback=parse_split,
            metavar="ARM=WEIGHT,...",
            help="Replace the split: arms are labels or versions.",
        ),
        click.option(
            "--label",
            "labels",
            multiple=True,
            callback=parse_labels,
            metavar="LABEL=VERSION",
            help="Point a label at a version (repeatable).",
        ),
        click.option(
            "--shadow",
            callback=parse_shadow,
            metavar="TARGET[:PERCENT]",
            help="Mirror PERCENT (default 100) of the requests to TARGET.",
        ),
        click.option("--no-shadow", is_flag=True, help="Stop mirroring."),
        click.option(
            "--allow-unavailable",
            is_flag=True,
            help="Let a label point at a version that is not AVAILABLE.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
