"""Line charts as inline SVG: the training curves of a review page, drawn without a plotting library.

A chart is a pure function of its series; the page embeds the SVG text as is, so the HTML file needs
no script and no network to show it. Each chart carries ``data-chart`` (its title) and
``data-series`` (how many lines it draws), which tests and reviewers' tools can check.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

__all__ = ["PALETTE", "Series", "line_chart", "nice_ticks"]

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
"""Colour of the ``i``-th line of a chart that does not choose its own."""

_W, _H = 560, 280  # pixels of one chart
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 150, 26, 36  # margins: the legend sits in the right one
_MARKERS_UP_TO = 40  # points per line drawn as dots as well (few points: a dot shows where they are)
_MAX_POINTS = 1200  # per line: a long run's every step would make the page megabytes of SVG for ~400 pixels


@dataclass(frozen=True)
class Series:
    """One line of a chart.

    Args:
        name: legend text.
        points: (x, y) pairs, x ascending; non-finite values are left out.
        dashed: a reference line (a baseline) rather than the run's own curve.
        color: CSS colour; None takes the next of :data:`PALETTE`.
    """

    name: str
    points: tuple[tuple[float, float], ...]
    dashed: bool = False
    color: str | None = None

    def finite(self) -> list[tuple[float, float]]:
        """The finite points, at most :data:`_MAX_POINTS` of them (evenly spaced, the last always kept)."""
        pts = [(float(x), float(y)) for x, y in self.points if math.isfinite(x) and math.isfinite(y)]
        if len(pts) <= _MAX_POINTS:
            return pts
        every = math.ceil(len(pts) / _MAX_POINTS)
        return pts[::every] + ([pts[-1]] if (len(pts) - 1) % every else [])


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"ticks need finite bounds, got {low}, {high}")
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, t = [], first
    while t <= high + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _span(values: list[float]) -> tuple[float, float]:
    """Axis bounds: the values' range, or one value in the middle of a small range around it."""
    low, high = min(values), max(values)
    if high > low:
        return low, high
    pad = max(abs(low) * 0.1, 1.0)
    return low - pad, high + pad


def line_chart(title: str, series: list[Series], *, y_label: str = "", x_label: str = "step") -> str | None:
    """An SVG line chart of ``series`` (None when no series has a finite point: nothing to draw).

    Axes span the points of every series; the legend lists each line with its last value.
    """
    lines = [(s, s.finite()) for s in series]
    lines = [(s, pts) for s, pts in lines if pts]
    if not lines:
        return None
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    x_ticks, y_ticks = nice_ticks(*_span(xs)), nice_ticks(*_span(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / ((x1 - x0) or 1.0) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - (y - y0) / ((y1 - y0) or 1.0) * plot_h

    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        f'data-chart="{esc(title)}" data-series="{len(lines)}" role="img" aria-label="{esc(title)}">',
        f'<text x="{_LEFT}" y="16" class="chart-title">{esc(title)}</text>',
    ]
    for t in y_ticks:
        y = py(t)
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_label(t)}</text>')
    for t in x_ticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{_TOP + plot_h + 14}" class="tick" text-anchor="middle">{_label(t)}</text>'
        )
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    out.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 4}" class="axis" text-anchor="middle">{esc(x_label)}</text>'
    )
    if y_label:
        out.append(
            f'<text transform="translate(12 {_TOP + plot_h / 2:.1f}) rotate(-90)" class="axis" text-anchor="middle">{esc(y_label)}</text>'
        )
    for i, (s, pts) in enumerate(lines):
        color = s.color or PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="{1.5 if s.dashed else 2}"{dash}><title>{esc(s.name)}</title></polyline>'
        )
        if len(pts) <= _MARKERS_UP_TO:
            out += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"><title>{esc(s.name)}: step {_label(x)}, {_label(y)}</title></circle>'
                for x, y in pts
            ]
        ly = _TOP + 6 + 16 * i
        lx = _LEFT + plot_w + 10
        out.append(
            f'<line x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>'
        )
        out.append(
            f'<text x="{lx + 22}" y="{ly + 4}" class="legend">{esc(s.name)} {_label(pts[-1][1])}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
