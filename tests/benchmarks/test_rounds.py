"""benchmarks/rounds.py: the median's distribution-free interval and the goal decision drawn from it."""

import random
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from rounds import alternate, median_interval, ratio_summary  # noqa: E402


def test_the_interval_covers_the_true_median_as_often_as_it_says():
    rng = random.Random(0)
    for n in (5, 9, 15, 25):
        hits = trials = 0
        for _ in range(4000):
            values = [rng.lognormvariate(0.0, 0.1) for _ in range(n)]  # true median 1.0
            low, high, coverage = median_interval(values)
            hits += low <= 1.0 <= high
            trials += 1
        assert hits / trials >= coverage - 0.02, (n, hits / trials, coverage)
        assert coverage >= 0.95 or n < 6


def test_five_rounds_give_min_to_max_and_more_rounds_a_narrower_interval():
    assert median_interval([3.0, 1.0, 5.0, 2.0, 4.0]) == (1.0, 5.0, pytest.approx(30 / 32))
    values = list(range(1, 26))  # 25 rounds: x(8) to x(18) is the narrowest with >= 95 %
    low, high, coverage = median_interval(values)
    assert (low, high) == (8, 18) and 0.95 <= coverage < 0.99
    assert median_interval(values, confidence=0.99)[:2] == (6, 20)  # 7 to 19 covers 98.5 %


def test_a_goal_inside_the_interval_is_undecided_and_outside_it_decided():
    noisy = [0.80, 0.95, 0.92, 0.88, 0.99, 0.91, 0.93, 0.86, 0.97, 0.90, 0.94]
    out = ratio_summary(noisy, [1.0] * len(noisy), goal=0.9)
    assert out["median"] == statistics.median(noisy) and out["meets"] and out["undecided"]
    assert out["interval"][0] <= 0.9 <= out["interval"][1]
    many = [0.93 + 0.02 * ((i * 7) % 11 - 5) / 5 for i in range(25)]  # 0.91-0.95, centred on 0.93
    decided = ratio_summary(many, [1.0] * 25, goal=0.9)
    assert decided["meets"] and not decided["undecided"] and decided["interval"][0] > 0.9
    below = ratio_summary(many, [1.0] * 25, goal=0.95)
    assert not below["meets"] and not below["undecided"]
    ceiling = ratio_summary(many, [1.0] * 25, goal=0.9, at_least=False)
    assert not ceiling["meets"] and not ceiling["undecided"]
    assert ratio_summary(many[:4], [1.0] * 4, goal=0.9)["undecided"]  # 4 rounds' min to max covers 88 %
    assert not ratio_summary(many[:5], [1.0] * 5, goal=0.9)["undecided"]


def test_sides_alternate_and_reverse_every_other_round():
    calls = []
    sides = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    values = alternate(sides, 3, log=lambda line: None)
    assert calls == list("abccbaabc")
    assert values == {"a": [1, 6, 7], "b": [2, 5, 8], "c": [3, 4, 9]}
