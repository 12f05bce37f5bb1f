"""Run folders read for a review page (fsdtrain/review/runs.py): each input file checked where it enters,
one line naming the file and the field, and the destination zone of a page."""

import json
from pathlib import Path

import pytest

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.review.page import config_differences, destination_zone
from fsdtrain.review.runs import Run, read_report_json, read_run
from fsdtrain.review.wandb_files import WandbRun


def one_line_error(capsys, *args: str) -> str:
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_folder_with_nothing_readable_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "run"
    (empty / "plots").mkdir(parents=True)
    (empty / "notes.txt").write_text("not a run file")
    out = tmp_path / "report.html"
    err = one_line_error(capsys, str(empty), "--out", str(out))
    assert err.startswith(
        f"fsdtrain: error: {empty}: holds no run files (val_metrics.json, report.json, model.safetensors"
    )
    assert "give a fit/finetune --workdir or the folder of an eval report.json" in err
    assert not out.exists() and not list(tmp_path.glob(".report.html*"))  # nothing half-written
    assert one_line_error(capsys, str(tmp_path / "missing"), "--out", str(out)) == (
        f"fsdtrain: error: {tmp_path / 'missing'}: no such run folder; give a fit/finetune --workdir or the folder of an eval report.json"
    )


def metrics(value: float = 1.0) -> dict:
    return {k: value for k in METRIC_KEYS} | {"l2_3s": None}


def report(**change) -> dict:
    entry = {"clips": 2, "windows": 16, "model": metrics(), "constant_velocity": metrics(2.0)}
    return {
        "metric_version": 1,
        "checkpoint": "w.safetensors",
        "data": ["file:///d/CN"],
        "per_country": {"CN": entry},
        "overall": entry,
    } | change


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"metric_version": 1, "metric_version": 1}',
            "not valid JSON (key 'metric_version' appears twice in one object)",
        ),
        ("[1, 2]", "holds list, not a report object"),
        (json.dumps(report(metric_version=2)), "metric_version is 2; this fsdtrain reads version 1"),
        (
            json.dumps(report(per_country={"China": {}})),
            "per_country has key 'China', not a country code such as CN",
        ),
        (json.dumps(report(overall={"clips": -1, "windows": 1})), "overall.clips is -1, not a count"),
        (
            json.dumps(
                report(per_country={"CN": {"clips": 1, "windows": 8, "model": metrics() | {"fde": "x"}}})
            ),
            "per_country.CN.model.fde is 'x'",
        ),
        (
            json.dumps(report(per_country={"CN": {"clips": 1, "windows": 8, "ego_mlp": {"ade": 1.0}}})),
            "per_country.CN.ego_mlp lacks metric 'fde'",
        ),
    ],
)
def test_a_bad_report_names_its_file_and_field(tmp_path, text, message):
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_report_json(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value) and "\n" not in str(exc.value)


def test_a_good_report_is_read_and_its_unknown_fields_kept(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report(extra_field={"kept": True})))
    assert read_report_json(path)["extra_field"] == {"kept": True}
    run = read_run(tmp_path)
    assert run.job_type == "eval" and run.report["per_country"]["CN"]["model"]["ade"] == 1.0


def test_bad_config_csv_and_pictures_are_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("- a list\n")
    assert (
        one_line_error(capsys, str(run), "--out", str(tmp_path / "r.html"))
        == f"fsdtrain: error: {run / 'config.yaml'}: holds list, not a config mapping"
    )
    (run / "config.yaml").write_text("model: {lr: 1}\n")
    (run / "metrics" / "version_0").mkdir(parents=True)
    (run / "metrics" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,1.5\n1,abc\n")
    err = one_line_error(capsys, str(run), "--out", str(tmp_path / "r.html"))
    assert (
        err
        == f"fsdtrain: error: {run / 'metrics/version_0/metrics.csv'}: line 3 column 'train/loss' is 'abc', not a number"
    )
    (run / "metrics" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,1.5\n1,1.25\n")
    (run / "report.json").write_text(json.dumps(report()))
    (run / "plots").mkdir()
    (run / "plots" / "CN-clip-000005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    err = one_line_error(capsys, str(run), "--out", str(tmp_path / "r.html"))
    assert err.startswith(f"fsdtrain: error: {run / 'plots/CN-clip-000005.png'}: not a readable PNG")
    (run / "plots" / "CN-clip-000005.png").unlink()
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert read_run(run).series("train/loss") == [(0.0, 1.5), (1.0, 1.25)]


def test_the_destination_zone_is_the_flag_the_site_or_where_the_runs_ran(tmp_path, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    at = {
        zone: Run(path=tmp_path / zone, wandb=[WandbRun(path=tmp_path, config={"site_zone": zone})])
        for zone in ("global", "cn", "eu")
    }
    assert destination_zone([at["global"]], None, None) == "global"
    assert (
        destination_zone([at["global"], at["cn"]], None, None) == "cn"
    )  # the CN run's files are at the cn site
    assert destination_zone([at["global"], at["cn"]], "global", None) == "global"
    assert destination_zone([at["cn"]], None, "global") == "global"
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "eu")
    assert destination_zone([at["cn"]], None, None) == "eu"
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE")
    with pytest.raises(
        ConfigError, match="ran at sites of zones cn, eu; say which zone the report is for with --dest-zone"
    ):
        destination_zone([at["cn"], at["eu"]], None, None)
    with pytest.raises(ConfigError, match="not a zone name"):
        destination_zone([at["cn"]], "C N", None)


def test_config_differences_leave_out_what_is_the_same_and_the_workdir():
    a, b, c = (Run(path=Path(p)) for p in ("a", "b", "c"))
    a.config = {"workdir": "a", "model": {"lr": 1e-3, "net": "tiny"}, "data": {"train": ["x"]}}
    b.config = {
        "workdir": "b",
        "model": {"lr": 3e-3, "net": "tiny", "init_from": "a/model.safetensors"},
        "data": {"train": ["y"]},
    }
    runs, rows = config_differences([a, b, c])
    assert runs == [a, b]
    assert rows == [
        ("data.train", [["x"], ["y"]]),
        ("model.init_from", [None, "a/model.safetensors"]),
        ("model.lr", [1e-3, 3e-3]),
    ]


def test_a_declared_site_may_report_only_runs_whose_weights_it_may_hold(tmp_path, capsys, monkeypatch):
    import torch

    from fsdtrain.weights.files import save_weights
    from fsdtrain.weights.metadata import WeightsMeta

    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    run = tmp_path / "cn"
    save_weights(
        run / "model.safetensors",
        {"w": torch.zeros(2)},
        WeightsMeta.of(zones=["cn", "global"], site_zone="cn"),
    )
    out = tmp_path / "r.html"
    err = one_line_error(capsys, str(run), "--out", str(out), "--site.zone", "global")
    assert err.startswith(
        f"fsdtrain: error: residency: {run / 'model.safetensors'} were trained on zone 'cn' data and may not be used (report)"
    )
    assert not out.exists()
    assert main(["report", str(run), "--out", str(out), "--site.zone", "cn", "--dest-zone", "global"]) == 0
    assert 'id="dest-zone">global<' in out.read_text()
    assert main(["report", str(run), "--out", str(out)]) == 0  # no site declared: made for where the run ran
    assert 'id="dest-zone">cn<' in out.read_text()


def test_lineage_runs_from_the_recorded_parent_through_the_fine_tune_to_its_eval(tmp_path):
    import torch

    from fsdtrain.review.lineage import lineage
    from fsdtrain.weights.files import save_weights
    from fsdtrain.weights.metadata import WeightsMeta

    parent = WeightsMeta.of(
        weights="/elsewhere/pre/model.safetensors",
        zones=["global"],
        git_sha="0" * 40,
        artifact="p/model-1:weights",
    )
    weights = tmp_path / "cn" / "model.safetensors"
    meta = WeightsMeta.of(
        weights=str(weights),
        zones=["cn", "global"],
        site_zone="cn",
        manifests={"s3://fleet-cn/d/train/CN": "a" * 64},
        parent=parent,
    )
    save_weights(weights, {"w": torch.zeros(1)}, meta)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(
        json.dumps(report(checkpoint=f"{weights} + {tmp_path / 'cn' / 'head-CN.safetensors'}"))
    )
    nodes = lineage([read_run(tmp_path / "eval"), read_run(tmp_path / "cn")])
    assert [(n.name, n.job_type, n.parent, n.on_page) for n in nodes] == [
        ("/elsewhere/pre/model.safetensors", "weights", None, False),
        ("cn", "finetune", 0, True),
        ("eval", "eval", 1, True),
    ]
    facts = dict(nodes[1].facts)
    assert facts["site zone"] == "cn" and facts["manifest s3://fleet-cn/d/train/CN"] == "a" * 16
    assert (
        dict(nodes[0].facts)["W&B artifact"] == "p/model-1:weights"
        and dict(nodes[0].facts)["git SHA"] == "0" * 40
    )
