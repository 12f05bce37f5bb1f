import json

import numpy as np

from fsdtrain.eval.metrics import METRIC_KEYS, MetricTable
from fsdtrain.eval.report import build_report, format_table, write_report

DESIGN_KEYS = {"ade", "fde", "l2_1s", "l2_2s", "l2_3s", "l2_avg_1s", "l2_avg_2s", "l2_avg_3s", "min_ade_k", "min_fde_k", "miss_rate"}


def test_report_has_the_design_layout(tmp_path):
    table = MetricTable()
    rows = np.ones((3, len(METRIC_KEYS)))
    for p in ("model", "constant_velocity", "ego_mlp"):
        table.add(["CN", "US", "US"], p, rows)
    table.add(["CN", "US", "US"], "global_head", rows, mask=np.array([True, False, False]))
    report = build_report(table, {"CN": {"a"}, "US": {"b", "c"}}, checkpoint="w.safetensors", data=["s3://x"])
    assert report["metric_version"] == 1
    assert set(report["per_country"]["CN"]) >= {"clips", "model", "constant_velocity", "ego_mlp", "global_head"}
    assert "global_head" not in report["per_country"]["US"]
    assert set(report["per_country"]["US"]["model"]) == DESIGN_KEYS
    assert report["overall"]["clips"] == 3
    path = tmp_path / "r" / "report.json"
    write_report(report, path)
    assert json.loads(path.read_text()) == report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    text = format_table(report)
    assert "global_head" in text and "overall" in text


def test_a_report_of_the_baselines_alone_has_no_model_and_counts_their_windows():
    # fsdtrain eval --baselines: no model, no ego MLP; every predictor that ran appears, in PREDICTORS order
    table = MetricTable()
    rows = np.ones((3, len(METRIC_KEYS)))
    for p in ("ctra", "constant_velocity"):
        table.add(["CN", "US", "US"], p, rows)
    report = build_report(table, {"CN": {"a"}, "US": {"b"}}, checkpoint="", data=["s3://x"])
    assert report["checkpoint"] == ""
    assert list(report["per_country"]["US"]) == ["clips", "windows", "constant_velocity", "ctra"]
    assert report["per_country"]["US"]["windows"] == 2 and report["per_country"]["CN"]["windows"] == 1
    assert list(report["overall"]) == ["clips", "windows", "constant_velocity", "ctra"] and report["overall"]["windows"] == 3
    lines = format_table(report).splitlines()[2:]
    assert [line.split()[:2] for line in lines] == [[c, p] for c in ("CN", "US", "overall") for p in ("constant_velocity", "ctra")]


def test_a_model_report_lists_ctra_beside_the_other_baselines():
    table = MetricTable()
    rows = np.ones((2, len(METRIC_KEYS)))
    for p in ("model", "ego_mlp", "constant_velocity", "ctra"):
        table.add(["CN", "US"], p, rows)
    report = build_report(table, {"CN": {"a"}, "US": {"b"}}, checkpoint="w.safetensors", data=["s3://x"])
    assert list(report["overall"]) == ["clips", "windows", "model", "constant_velocity", "ctra", "ego_mlp"]
    assert report["overall"]["windows"] == 2 and report["per_country"]["CN"]["windows"] == 1
