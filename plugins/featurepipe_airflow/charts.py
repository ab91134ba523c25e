"""Geometry of the monitoring page's inline SVG charts: numbers only, the template draws the elements.

A chart is a fixed-size plot of windows (x, oldest left) against one scale (y). Everything here is
coordinates, labels and flags; text from the database reaches the page only through the template,
which escapes it, and no HTML or SVG is built in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from feature_store import MaterializationJob
from feature_store.monitoring.freshness import GroupFreshness
from feature_store.monitoring.statistics import DRIFT_THRESHOLD, FeatureStatistics

WIDTH, HEIGHT = 360, 130
"""Size of one chart in SVG user units (the page scales it to its column)."""

LEFT, RIGHT, TOP, BOTTOM = 44, 8, 14, 22
"""Plot margins: room for the y labels on the left and the window labels below."""


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    label: str


@dataclass
class Chart:
    title: str
    y_labels: list[tuple[float, str]] = field(default_factory=list)
    """(y, text) of the scale's ticks."""
    x_labels: list[tuple[float, str, str]] = field(default_factory=list)
    """(x, text, text-anchor) of the first and last window's label."""
    lines: list[tuple[str, str]] = field(default_factory=list)
    """(css class, SVG points "x,y x,y ...") of each series."""
    bands: list[tuple[str, str]] = field(default_factory=list)
    """(css class, polygon points) of shaded ranges (percentile bands)."""
    bars: list[tuple[str, float, float, float, float]] = field(default_factory=list)
    """(css class, x, y, width, height)."""
    threshold: tuple[float, str] | None = None
    markers: list[Marker] = field(default_factory=list)
    """Windows worth a look (quarantined rows, drift): a dot and a tooltip."""
    empty: bool = False


@dataclass
class FeatureCharts:
    feature_name: str
    value_type: str
    latest: FeatureStatistics
    charts: list[Chart]


@dataclass
class Timeline:
    """One (tenant, group)'s jobs over time, coloured by status, with its freshness."""

    freshness: GroupFreshness
    spans: list[tuple[str, float, float, str]]
    """(status, x, width, tooltip) of each job window."""
    x_labels: list[tuple[float, str, str]]


PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM

TIMELINE_W = 1000
"""Width of a freshness timeline in SVG user units (it spans the page, so its text stays small)."""


def feature_charts(stats: list[FeatureStatistics]) -> list[FeatureCharts]:
    """Per feature (alphabetically), its charts over the windows in `stats` (any order)."""
    by_feature: dict[str, list[FeatureStatistics]] = {}
    for s in sorted(stats, key=lambda s: (s.window_end, s.window_start)):
        by_feature.setdefault(s.feature_name, []).append(s)
    result = []
    for name in sorted(by_feature):
        series = by_feature[name]
        latest = series[-1]
        numeric = latest.value_type in ("int64", "float64")
        charts = [_values(series) if numeric else _top_share(series), _rates(series), _drift(series)]
        result.append(FeatureCharts(name, latest.value_type, latest, charts))
    return result


def timelines(groups: list[GroupFreshness], jobs: list[MaterializationJob]) -> list[Timeline]:
    """One timeline per (tenant, group), over the span of the jobs shown (one shared time axis)."""
    if not jobs:
        return [Timeline(g, [], []) for g in groups]
    start = min(j.start_time for j in jobs)
    end = max(j.end_time for j in jobs)
    span = (end - start).total_seconds() or 1.0

    def x(t: datetime) -> float:
        return 2 + (TIMELINE_W - 4) * (t - start).total_seconds() / span

    result = []
    for g in groups:
        mine = [j for j in jobs if (j.tenant_id, j.feature_group_id) == (g.tenant_id, g.feature_group_id)]
        spans = [
            (
                j.status.value,
                round(x(j.start_time), 2),
                round(max(x(j.end_time) - x(j.start_time), 1.5), 2),
                f"job {j.id} {j.status.value} ({_time(j.start_time)}, {_time(j.end_time)}]",
            )
            for j in sorted(mine, key=lambda j: (j.start_time, j.id))
        ]
        result.append(Timeline(g, spans, [(2, _time(start), "start"), (TIMELINE_W - 2, _time(end), "end")]))
    return result


# -- charts ------------------------------------------------------------------------------------------


def _values(series: list[FeatureStatistics]) -> Chart:
    """Median and mean over time, with the 5-95 and 25-75 percentile bands."""
    chart = Chart("value: median, mean, p5-p95 and p25-p75")
    with_values = [(i, s) for i, s in enumerate(series) if s.percentiles]
    if not with_values:
        chart.empty = True
        return chart
    lows = [s.percentiles["p5"] for _, s in with_values if s.percentiles]
    highs = [s.percentiles["p95"] for _, s in with_values if s.percentiles]
    low, high = _nice_range(min(lows), max(highs))
    y = _scale(low, high)
    x = _xs(len(series))
    chart.y_labels = _ticks(low, high)
    chart.x_labels = _window_labels(series)
    for css, lo, hi in (("band-outer", "p5", "p95"), ("band-inner", "p25", "p75")):
        upper = [f"{x(i)},{y(s.percentiles[hi])}" for i, s in with_values if s.percentiles]
        lower = [f"{x(i)},{y(s.percentiles[lo])}" for i, s in reversed(with_values) if s.percentiles]
        chart.bands.append((css, " ".join(upper + lower)))
    chart.lines.append(
        ("median", " ".join(f"{x(i)},{y(s.percentiles['p50'])}" for i, s in with_values if s.percentiles))
    )
    chart.lines.append(
        ("mean", " ".join(f"{x(i)},{y(s.mean_value)}" for i, s in with_values if s.mean_value is not None))
    )
    chart.markers = _drift_markers(series, x, lambda s: y(s.percentiles["p50"]) if s.percentiles else None)
    return chart


def _top_share(series: list[FeatureStatistics]) -> Chart:
    """Share of the most frequent value, and distinct values, for a string or bool feature."""
    chart = Chart("most frequent value's share (line), distinct values (bars)")
    if not any(s.rows_valid for s in series):
        chart.empty = True
        return chart
    x = _xs(len(series))
    y = _scale(0.0, 1.0)
    chart.y_labels = [(y(v), f"{v:.0%}") for v in (0.0, 0.5, 1.0)]
    chart.x_labels = _window_labels(series)
    most = max(s.distinct_count for s in series) or 1
    width = max(PLOT_W / len(series) * 0.5, 1.5)
    for i, s in enumerate(series):
        h = PLOT_H * s.distinct_count / most
        chart.bars.append(
            ("distinct", round(x(i) - width / 2, 2), round(TOP + PLOT_H - h, 2), round(width, 2), round(h, 2))
        )
    shares = [
        (i, s.top_values[0]["count"] / s.rows_valid) for i, s in enumerate(series) if s.top_values and s.rows_valid
    ]
    chart.lines.append(("median", " ".join(f"{x(i)},{y(v)}" for i, v in shares)))
    chart.markers = _drift_markers(
        series, x, lambda s: y(s.top_values[0]["count"] / s.rows_valid) if s.top_values and s.rows_valid else None
    )
    return chart


def _rates(series: list[FeatureStatistics]) -> Chart:
    """Null and quarantine rates (0-100%), a marker on every window with quarantined rows."""
    chart = Chart("null rate (grey) and quarantine rate (red)")
    top = _nice_range(0.0, max([s.quarantine_rate for s in series] + [s.null_rate for s in series] + [0.05]))[1]
    y = _scale(0.0, top)
    x = _xs(len(series))
    chart.y_labels = [(y(v), f"{v:.0%}") for v in (0.0, top / 2, top)]
    chart.x_labels = _window_labels(series)
    chart.lines.append(("null-rate", " ".join(f"{x(i)},{y(s.null_rate)}" for i, s in enumerate(series))))
    chart.lines.append(("quarantine-rate", " ".join(f"{x(i)},{y(s.quarantine_rate)}" for i, s in enumerate(series))))
    chart.markers = [
        Marker(
            x(i),
            y(s.quarantine_rate),
            f"{_time(s.window_end)}: {s.rows_quarantined} of {s.rows_total} rows quarantined",
        )
        for i, s in enumerate(series)
        if s.rows_quarantined
    ]
    return chart


def _drift(series: list[FeatureStatistics]) -> Chart:
    """PSI against the baseline per window, the drift threshold as a line; drifted windows in red."""
    chart = Chart(f"drift (PSI against the trailing windows; over {DRIFT_THRESHOLD:g} is drift)")
    scores = [s.drift_psi for s in series if s.drift_psi is not None]
    if not scores:
        chart.empty = True
        return chart
    top = _nice_range(0.0, max([*scores, DRIFT_THRESHOLD * 1.5]))[1]
    y = _scale(0.0, top)
    x = _xs(len(series))
    chart.y_labels = [(y(v), f"{v:.2g}") for v in (0.0, top / 2, top)]
    chart.x_labels = _window_labels(series)
    chart.threshold = (y(DRIFT_THRESHOLD), f"{DRIFT_THRESHOLD:g}")
    width = max(PLOT_W / len(series) * 0.6, 1.5)
    for i, s in enumerate(series):
        if s.drift_psi is None:
            continue
        css = "drifted" if s.drifted else "stable"
        chart.bars.append(
            (css, round(x(i) - width / 2, 2), y(s.drift_psi), round(width, 2), round(TOP + PLOT_H - y(s.drift_psi), 2))
        )
    return chart


# -- helpers -----------------------------------------------------------------------------------------


def _drift_markers(
    series: list[FeatureStatistics], x: Callable[[int], float], y_of: Callable[[FeatureStatistics], float | None]
) -> list[Marker]:
    markers = []
    for i, s in enumerate(series):
        y = y_of(s)
        if s.drifted and y is not None:
            markers.append(Marker(x(i), y, f"{_time(s.window_end)}: drift, PSI {s.drift_psi:.2f}"))
    return markers


def _xs(n: int) -> Callable[[int], float]:
    """x of window i of n: spread over the plot, a single window in its middle."""

    def x(i: int) -> float:
        return round(LEFT + (PLOT_W * (i + 0.5) / n), 2)

    return x


def _scale(low: float, high: float) -> Callable[[float], float]:
    span = (high - low) or 1.0

    def y(v: float) -> float:
        return round(TOP + PLOT_H * (1 - (v - low) / span), 2)

    return y


def _nice_range(low: float, high: float) -> tuple[float, float]:
    if low == high:
        return (low - 1, high + 1) if low else (0.0, 1.0)
    pad = (high - low) * 0.05
    return (0.0 if low >= 0 and low - pad < 0 else low - pad, high + pad)


def _ticks(low: float, high: float) -> list[tuple[float, str]]:
    y = _scale(low, high)
    return [(y(v), _short(v)) for v in (low, (low + high) / 2, high)]


def _short(v: float) -> str:
    """A tick label that fits the margin: 1.29k, 3.4M, 0.25."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}"


def _window_labels(series: list[FeatureStatistics]) -> list[tuple[float, str, str]]:
    if len(series) == 1:
        return [(LEFT + PLOT_W / 2, _time(series[0].window_end), "middle")]
    return [(LEFT, _time(series[0].window_end), "start"), (LEFT + PLOT_W, _time(series[-1].window_end), "end")]


def _time(t: datetime) -> str:
    return t.strftime("%m-%d %H:%M")
