"""The cluster's history: the replicas' bounded series merged point by point (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from tfmux.core.status import HistoryReport


def merge_history(
    reports: Sequence[HistoryReport], top: list[str], resolution: float = 5.0, points: int = 180
) -> HistoryReport:
    """The replicas' series added point by point (aligned at each one's newest point): rates,
    memory, queues, loads and evictions summed; error rate, p50 and batch size weighted by
    rate; p99 the worst replica's."""
    if reports:
        resolution, points = reports[0].resolution_seconds, reports[0].points
    overall: dict[str, list[float | None]] = {}
    for report in reports:
        for key, values in report.overall.items():
            overall[key] = _add(overall.get(key), values)
    names = sorted({name for report in reports for name in report.models})
    models = {
        name: _model_series([r.models[name] for r in reports if name in r.models]) for name in names
    }
    ends = [r.end_time for r in reports if r.end_time is not None]
    return HistoryReport(
        resolution_seconds=resolution,
        points=points,
        end_time=max(ends) if ends else None,
        busiest=top,
        overall=overall,
        models=models,
    )


def _add(total: list[float | None] | None, values: list[float | None]) -> list[float | None]:
    if total is None:
        return list(values)
    return [
        b if a is None else a if b is None else a + b for a, b in zip(total, values, strict=True)
    ]


def _model_series(series: list[dict[str, list[float | None]]]) -> dict[str, list[float | None]]:
    if len(series) == 1:
        return series[0]
    rates = [s["requests_per_second"] for s in series]
    out: dict[str, list[float | None]] = {"requests_per_second": _sum_all(rates)}
    for key in ("error_rate", "p50_ms", "mean_batch_size"):
        out[key] = [
            _weighted_point([s[key][i] for s in series], [r[i] for r in rates])
            for i in range(len(rates[0]))
        ]
    out["p99_ms"] = [_max_point([s["p99_ms"][i] for s in series]) for i in range(len(rates[0]))]
    out["queue_depth"] = _sum_all([s["queue_depth"] for s in series])
    return out


def _sum_all(columns: list[list[float | None]]) -> list[float | None]:
    total: list[float | None] | None = None
    for values in columns:
        total = _add(total, values)
    return total or []


def _weighted_point(values: list[float | None], rates: list[float | None]) -> float | None:
    pairs = [(v, r or 0.0) for v, r in zip(values, rates, strict=True) if v is not None]
    if not pairs:
        return None
    weight = sum(r for _, r in pairs)
    if weight <= 0:
        return sum(v for v, _ in pairs) / len(pairs)
    return sum(v * r for v, r in pairs) / weight


def _max_point(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
