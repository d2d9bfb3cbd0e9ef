"""Charts of numeric observations over time, laid out on the server as inline SVG numbers.

No JavaScript and no charting library: the template draws polylines and circles from the
coordinates computed here. Each chart also carries its data as a table for screen readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 32
COLOURS = ("#0b5cad", "#a4161a", "#0f6b2f")


@dataclass(frozen=True)
class Point:
    """One measurement: time (ms since the epoch) and value."""

    time: int
    value: float


@dataclass(frozen=True)
class Series:
    """Measurements of one coded quantity."""

    name: str
    unit: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Chart:
    """A chart ready for the template: series with SVG coordinates, and axis ticks."""

    title: str
    unit: str
    series: tuple[tuple[Series, str, tuple[tuple[float, float, Point], ...]], ...]
    y_ticks: tuple[tuple[float, float], ...]
    x_ticks: tuple[tuple[float, int], ...]
    width: int = WIDTH
    height: int = HEIGHT


def _time(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        return None


def _quantity(q: Any) -> tuple[float, str] | None:
    if isinstance(q, Mapping) and isinstance(q.get("value"), int | float):
        return float(q["value"]), str(q.get("unit") or q.get("code") or "")
    return None


def _concept(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return "?"
    coding = (concept.get("coding") or [{}])[0]
    return str(concept.get("text") or coding.get("display") or coding.get("code") or "?")


def collect(observations: Iterable[Mapping[str, Any]]) -> dict[str, list[Series]]:
    """Group numeric Observations by their code: {chart title: [series...]}."""
    grouped: dict[str, dict[str, tuple[str, list[Point]]]] = {}
    for obs in observations:
        when = _time(obs.get("effectiveDateTime"))
        if when is None:
            continue
        title = _concept(obs.get("code"))
        parts = [(title, obs.get("valueQuantity"))]
        parts += [
            (_concept(c.get("code")), c.get("valueQuantity")) for c in obs.get("component") or []
        ]
        for name, raw in parts:
            quantity = _quantity(raw)
            if quantity is None:
                continue
            value, unit = quantity
            series = grouped.setdefault(title, {}).setdefault(name, (unit, []))
            series[1].append(Point(when, value))
    return {
        title: [
            Series(name, unit, tuple(sorted(points, key=lambda p: p.time)))
            for name, (unit, points) in sorted(by_name.items())
        ]
        for title, by_name in sorted(grouped.items())
    }


def _nice_range(low: float, high: float) -> tuple[float, float]:
    if high - low < 1e-9:
        return low - 1, high + 1
    pad = (high - low) * 0.1
    return low - pad, high + pad


def layout(title: str, series: list[Series]) -> Chart:
    """Scale the series into the SVG box, with four value ticks and first/last time ticks."""
    points = [p for s in series for p in s.points]
    t0, t1 = min(p.time for p in points), max(p.time for p in points)
    v0, v1 = _nice_range(min(p.value for p in points), max(p.value for p in points))
    span_t = max(t1 - t0, 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: int) -> float:
        return round(LEFT + (inner_w * (t - t0) / span_t if t1 > t0 else inner_w / 2), 1)

    def y(v: float) -> float:
        return round(TOP + inner_h * (1 - (v - v0) / (v1 - v0)), 1)

    laid = tuple(
        (s, COLOURS[i % len(COLOURS)], tuple((x(p.time), y(p.value), p) for p in s.points))
        for i, s in enumerate(series)
    )
    y_ticks = tuple((y(v0 + (v1 - v0) * k / 3), round(v0 + (v1 - v0) * k / 3, 1)) for k in range(4))
    x_ticks = ((x(t0), t0),) if t0 == t1 else ((x(t0), t0), (x(t1), t1))
    return Chart(title, series[0].unit, laid, y_ticks, x_ticks)
