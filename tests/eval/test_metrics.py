import math

import numpy as np
import pytest
import torch

from fsdtrain.eval.metrics import METRIC_KEYS, MetricTable, sample_errors, stable_key


def test_both_l2_conventions_and_mode_metrics_by_hand():
    # 6 points at 2 Hz (0.5 s .. 3 s); target at rest, mode 0 off by 1 m laterally growing, mode 1 off by 10 m
    target = torch.zeros(1, 6, 3)
    mode0 = torch.zeros(6, 3)
    mode0[:, 1] = torch.arange(1, 7, dtype=torch.float32)  # errors 1..6 m
    mode1 = torch.zeros(6, 3)
    mode1[:, 0] = 0.5  # errors 0.5 m everywhere
    traj = torch.stack([mode0, mode1])[None]
    logits = torch.tensor([[2.0, 0.0]])  # the model believes mode 0
    row = dict(zip(METRIC_KEYS, sample_errors(traj, logits, target, future_hz=2.0)[0]))
    assert row["ade"] == pytest.approx(3.5)
    assert row["fde"] == pytest.approx(6.0)
    assert row["l2_1s"] == pytest.approx(2.0)  # at t = 1 s: point 2
    assert row["l2_2s"] == pytest.approx(4.0)
    assert row["l2_3s"] == pytest.approx(6.0)
    assert row["l2_avg_1s"] == pytest.approx(1.5)  # mean of points up to 1 s
    assert row["l2_avg_2s"] == pytest.approx(2.5)
    assert row["l2_avg_3s"] == pytest.approx(3.5)
    assert row["min_ade_k"] == pytest.approx(0.5)
    assert row["min_fde_k"] == pytest.approx(0.5)
    assert row["miss_rate"] == 1.0


def test_times_beyond_the_horizon_are_nan_and_reported_as_none():
    errs = sample_errors(torch.zeros(2, 1, 2, 3), torch.zeros(2, 1), torch.ones(2, 2, 3), future_hz=2.0)
    row = dict(zip(METRIC_KEYS, errs[0]))
    assert math.isnan(row["l2_2s"]) and not math.isnan(row["l2_1s"])
    table = MetricTable()
    table.add(["US", "US"], "model", errs)
    assert table.summary("US", "model")["l2_3s"] is None


def test_table_means_are_per_sample_whatever_the_batching():
    rng = np.random.default_rng(0)
    rows = rng.random((10, len(METRIC_KEYS)))
    countries = ["CN"] * 4 + ["US"] * 6
    one, split = MetricTable(), MetricTable()
    one.add(countries, "model", rows)
    split.add(countries[:3], "model", rows[:3])
    split.add(countries[3:], "model", rows[3:])
    assert one.summary(None, "model") == split.summary(None, "model")
    assert one.summary("CN", "model")["ade"] == pytest.approx(round(rows[:4, 0].mean(), 4))
    assert one.count("US", "model") == 6


def test_full_precision_summary_and_stable_keys():
    rows = np.random.default_rng(1).random((7, len(METRIC_KEYS)))
    table = MetricTable()
    table.add(["DE"] * 7, "model", rows)
    assert table.summary("DE", "model", digits=None)["fde"] == rows[:, 1].mean()
    # the same in every process (Python's hash() of a str is not): gathered rows are sorted by it
    assert stable_key("synth_us_s0_train_000000-000000@10") == 4268568010508405077
