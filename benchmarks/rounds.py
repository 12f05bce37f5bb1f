"""Ratios measured in alternating rounds: the median over rounds and its spread (docs/contributing.md).

A ratio of two timings taken minutes apart on a shared machine moves with whatever else runs. The
benchmarks here run every side once per round, reversing the order every other round, so load that
comes and goes hits each side alike, and report each ratio as the median of its per-round values with
the min and max: when that spread is wider than the median's distance to the goal, the run cannot
tell whether the goal is met, and says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping

__all__ = ["alternate", "ratio_summary"]


def alternate(sides: Mapping[str, Callable[[], float]], rounds: int, log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Calls every side once per round (in the given order on even rounds, reversed on odd ones) and
    returns each side's values in round order."""
    values: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            values[name].append(sides[name]())
            log(f"round {r + 1} {name}: {values[name][-1]:.4g}")
    return values


def ratio_summary(num: list[float], den: list[float], *, goal: float | None = None, at_least: bool = True) -> dict:
    """The per-round ratios ``num[r] / den[r]``: median, min and max; with a ``goal`` (a floor when
    ``at_least``, else a ceiling), whether the median meets it and whether the spread (half of max - min)
    is wider than the median's distance to it (``undecided``)."""
    ratios = [n / d for n, d in zip(num, den, strict=True)]
    median = statistics.median(ratios)
    out = {"median": round(median, 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3), "rounds": len(ratios)}
    if goal is not None:
        half_spread = (max(ratios) - min(ratios)) / 2
        out.update(
            goal=goal,
            meets=median >= goal if at_least else median <= goal,
            undecided=half_spread > abs(median - goal),
        )
    return out
