"""Ratios measured in alternating rounds: the median over rounds and how sure it is (docs/contributing.md).

A ratio of two timings taken minutes apart on a shared machine moves with whatever else runs. The
benchmarks here run every side once per round, reversing the order every other round, so load that
comes and goes hits each side alike, and report each ratio as the median of its per-round values,
with the min and max and a confidence interval for the median: the order statistics ``k``-th lowest
to ``k``-th highest per-round ratio, with ``k`` the largest that still covers the true median with at
least 95 % probability (a distribution-free interval: each round's ratio lies below the true median
with probability 1/2, so the count below it is binomial; nothing is assumed about the noise). With a
goal, the run is ``undecided`` while the goal lies inside that interval (and with fewer than 5 rounds,
whose min to max covers under 90 %). Five rounds give no 95 %
interval (min to max covers 94 %); more rounds narrow it, where the min-max spread only widens.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping

__all__ = ["CONFIDENCE", "alternate", "median_interval", "ratio_summary"]

CONFIDENCE = 0.95
"""The coverage sought for the median's interval; with too few rounds, min to max and its own coverage."""
DECIDING_COVERAGE = 0.9
"""An interval that covers less decides nothing (fewer than 5 rounds: 4 rounds' min to max covers 88 %)."""


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


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(low, high, coverage)``: the narrowest interval of order statistics ``[x(k), x(n+1-k)]`` that
    holds the true median with probability at least ``confidence``; when even min to max falls short
    (fewer than 6 values at 95 %), min to max with the coverage it has."""
    n = len(values)
    ordered = sorted(values)

    def coverage(k: int) -> float:  # P(x(k) <= median <= x(n+1-k)) = 1 - 2 P(Binomial(n, 1/2) < k)
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def ratio_summary(num: list[float], den: list[float], *, goal: float | None = None, at_least: bool = True) -> dict:
    """The per-round ratios ``num[r] / den[r]``: median, min, max and the median's interval
    (:func:`median_interval`); with a ``goal`` (a floor when ``at_least``, else a ceiling), whether the
    median meets it and whether the goal lies inside the interval, or the interval covers under
    :data:`DECIDING_COVERAGE` (``undecided``)."""
    ratios = [n / d for n, d in zip(num, den, strict=True)]
    median = statistics.median(ratios)
    low, high, coverage = median_interval(ratios)
    out = {
        "median": round(median, 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3), "rounds": len(ratios),
        "interval": [round(low, 3), round(high, 3)], "coverage": round(coverage, 3),
    }  # fmt: skip
    if goal is not None:
        out.update(goal=goal, meets=median >= goal if at_least else median <= goal, undecided=low <= goal <= high or coverage < DECIDING_COVERAGE)
    return out
