"""Inline SVG charts (fsdtrain/review/charts.py)."""

import math
import xml.etree.ElementTree as ET

from fsdtrain.review.charts import Series, line_chart, nice_ticks


def test_ticks_are_round_and_cover_the_range():
    assert (
        nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        or nice_ticks(0.0, 1.0)[-1] >= 1.0
    )
    for low, high in [(0.0, 1.0), (0.37, 12.9), (-3.0, 0.5), (1e-5, 3e-4), (5.0, 5.0), (1200.0, 98000.0)]:
        ticks = nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 12
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
        assert len(steps) == 1
        mantissa = steps.pop() / 10 ** math.floor(math.log10(ticks[1] - ticks[0]))
        assert round(mantissa, 6) in (1.0, 2.0, 5.0)


def test_a_chart_draws_each_series_with_finite_points_and_nothing_without():
    svg = line_chart(
        "val L2 <3 s> & more",
        [
            Series("model", ((0, 2.0), (10, 1.0), (20, float("nan")))),
            Series("cv", ((0, 3.0), (20, 3.0)), dashed=True),
            Series("empty", ()),
        ],
        y_label="metres",
    )
    root = ET.fromstring(svg)  # well-formed XML: the title is escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("data-chart") == "val L2 <3 s> & more" and root.get("data-series") == "2"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 2 and len(lines[0].get("points").split()) == 2 and lines[1].get("stroke-dasharray")
    assert line_chart("nothing", [Series("a", ((0, float("inf")),))]) is None


def test_a_long_run_is_drawn_with_a_bounded_number_of_points():
    series = Series("loss", tuple((float(i), 1.0 / (i + 1)) for i in range(100_001)))
    pts = series.finite()
    assert 1000 <= len(pts) <= 1200 and pts[0] == (0.0, 1.0) and pts[-1] == (100_000.0, 1.0 / 100_001)
    svg = line_chart("loss", [series])
    assert len(svg) < 60_000


def test_a_single_point_sits_inside_its_axes():
    root = ET.fromstring(line_chart("lr", [Series("train/lr", ((4.0, 0.002),))]))
    (dot,) = root.findall("{http://www.w3.org/2000/svg}circle")
    (frame,) = [r for r in root.findall("{http://www.w3.org/2000/svg}rect") if r.get("class") == "frame"]
    left, width = float(frame.get("x")), float(frame.get("width"))
    assert left + 0.2 * width < float(dot.get("cx")) < left + 0.8 * width
