"""W&B for reviewers (fsdtrain/train/wandb_log.py, wandb_eval.py): the rule for camera frames, the metric
table, the settings' precedence, and, through the real CLI in offline mode, the run files a reviewer would
upload: config, metrics (learning rate, gradient norm, best validation values), a table, images, model
artifacts with aliases, lineage from a pretrain run to its fine-tune and to the eval run, and a work
directory that holds every file its artifacts need."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsdtrain.errors import ConfigError
from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.synth.rig import cam_to_ego, intrinsics, surround6
from fsdtrain.train.optim import warmup_cosine
from fsdtrain.train.wandb_eval import parse_tags, summary_values
from fsdtrain.train.wandb_log import (
    TABLE_COLUMNS,
    WandbTarget,
    _pick,
    metric_table,
    resolve_settings,
    summary_goal,
    validation_images,
)
from fsdtrain.weights.files import read_metadata
from helpers.wandb_files import offline_runs, read_run

REPO = Path(__file__).resolve().parents[2]


# --- residency of camera frames --------------------------------------------------------------------


def test_camera_frames_go_only_to_a_destination_inside_their_zone():
    offline_cn = WandbTarget.resolve(mode="offline", base_url=None, zone=None, site_zone="cn")
    cloud = WandbTarget.resolve(mode="online", base_url=None, zone=None, site_zone="cn")
    undeclared = WandbTarget.resolve(mode="online", base_url="https://wandb.example.cn", zone=None, site_zone="cn")
    cn_server = WandbTarget.resolve(mode="online", base_url="https://wandb.example.cn", zone="cn", site_zone="cn")
    assert (offline_cn.zone, cloud.zone, undeclared.zone, cn_server.zone) == ("cn", "global", "global", "cn")
    assert offline_cn.allows_camera("cn") and cn_server.allows_camera("cn")
    assert not cloud.allows_camera("cn") and not undeclared.allows_camera("cn")
    assert all(t.allows_camera("global") for t in (offline_cn, cloud, undeclared, cn_server))
    assert not cn_server.allows_camera("us")
    # offline files keep the zone of the server they will be synced to, for the warning at the end
    assert WandbTarget.resolve(mode="offline", base_url="https://w.cn", zone="cn", site_zone="cn").server_zone == "cn"
    with pytest.raises(ConfigError, match="needs wandb.base_url"):
        WandbTarget.resolve(mode="online", base_url=None, zone="cn", site_zone="cn")
    with pytest.raises(ConfigError, match="not a zone name"):
        WandbTarget.resolve(mode="online", base_url="https://w", zone="C N", site_zone="cn")


def cn_sample() -> dict:
    """One CN validation window (zone cn) and a prediction, as WandbReview keeps them."""
    specs = [surround6()[3], surround6()[0]]  # back, front
    future = torch.tensor([[2.0 * i, 0.2 * i, 0.0] for i in range(1, 7)])
    window = {
        "images": torch.full((2, 2, 3, 48, 64), 200, dtype=torch.uint8),  # [N_cam, T, 3, H, W]
        "ego_hist": torch.tensor([[-0.5, -1.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]]),
        "future": future,
        "intrinsics": torch.tensor(np.stack([intrinsics(s, 64, 48) for s in specs]), dtype=torch.float32),
        "cam_to_ego": torch.tensor(np.stack([cam_to_ego(s) for s in specs]), dtype=torch.float32),
        "country": "CN", "zone": "cn", "clip_id": "drive_0-000000", "frame": 5,
    }  # fmt: skip
    return {"window": window, "traj": future[None].repeat(3, 1, 1), "logits": torch.tensor([1.0, 0.0, -1.0])}


def test_a_cn_window_at_a_cn_site_logs_its_camera_offline_but_not_to_the_global_cloud():
    cameras = ["CAM_BACK", "CAM_FRONT"]
    cloud = WandbTarget.resolve(mode="online", base_url=None, zone=None, site_zone="cn")
    bev, camera = validation_images([cn_sample()], cloud, cameras=cameras)
    assert len(bev) == 1 and camera == []
    assert bev[0][0].size == (300, 418)  # the bird's-eye panel only: ego coordinates, no pixels
    offline = WandbTarget.resolve(mode="offline", base_url=None, zone=None, site_zone="cn")
    bev, camera = validation_images([cn_sample()], offline, cameras=cameras)
    assert len(bev) == 1 and len(camera) == 1 and camera[0][1] == "CN drive_0-000000 frame 5"
    assert camera[0][0].width > 300 and camera[0][0].getpixel((camera[0][0].width - 3, 60)) == (200, 200, 200)


def test_metric_table_has_a_row_per_country_and_predictor():
    m = {k: 1.0 for k in METRIC_KEYS} | {"l2_3s": None}
    report = {
        "per_country": {"CN": {"clips": 2, "windows": 16, "model": m, "constant_velocity": m, "ego_mlp": m, "global_head": m}},
        "overall": {"clips": 2, "windows": 16, "model": m, "constant_velocity": m, "ego_mlp": m},
    }
    rows = metric_table(report)
    assert [r[:2] for r in rows] == [["CN", "model"], ["CN", "constant_velocity"], ["CN", "ego_mlp"], ["CN", "global_head"],
                                     ["overall", "model"], ["overall", "constant_velocity"], ["overall", "ego_mlp"]]  # fmt: skip
    assert all(len(r) == len(TABLE_COLUMNS) for r in rows)
    assert rows[0][TABLE_COLUMNS.index("l2_3s")] is None and rows[0][TABLE_COLUMNS.index("windows")] == 16


def test_sample_windows_take_countries_in_turn_and_skip_padding():
    assert _pick(["US", "US", "DE", "US", "DE"], [True] * 5, 3) == [0, 2, 4]  # US, DE, then US again
    assert _pick(["US", "US", "DE"], [True, True, False], 4) == [0, 1]
    assert _pick(["US"], [True], 0) == []


# --- settings: flag > environment > default ---------------------------------------------------------


def test_settings_take_the_flag_then_the_environment_then_the_default(tmp_path):
    env = {"WANDB_MODE": "online", "WANDB_PROJECT": "p-env", "WANDB_ENTITY": "team-env", "WANDB_DIR": str(tmp_path / "env")}
    s = resolve_settings(mode=None, project=None, entity=None, dir=None, default_dir=tmp_path / "work", env=env)
    assert (s.mode, s.project, s.entity, s.root) == ("online", "p-env", "team-env", tmp_path / "env")
    assert s.sources == {"mode": "WANDB_MODE", "project": "WANDB_PROJECT", "entity": "WANDB_ENTITY", "dir": "WANDB_DIR"}
    s = resolve_settings(mode="disabled", project="p", entity="t", dir=str(tmp_path / "flag"), default_dir=tmp_path / "work", env=env)
    assert (s.mode, s.project, s.entity, s.root) == ("disabled", "p", "t", tmp_path / "flag")
    assert set(s.sources.values()) == {"flag"}
    for unset in ({}, {"WANDB_MODE": "", "WANDB_PROJECT": " ", "WANDB_ENTITY": "", "WANDB_DIR": ""}):
        s = resolve_settings(mode=None, project="", entity=None, dir=None, default_dir=tmp_path / "work", env=unset)
        assert (s.mode, s.project, s.entity, s.root, s.wandb_dir) == ("offline", "fsdtrain", None, tmp_path / "work", tmp_path / "work" / "wandb")
    assert resolve_settings(mode=None, project=None, entity=None, dir=None, default_dir=".", env={"WANDB_MODE": "dryrun"}).mode == "offline"
    with pytest.raises(ConfigError, match=r"^--wandb.mode must be one of offline, online, disabled, got 'onlin'$"):
        resolve_settings(mode="onlin", project=None, entity=None, dir=None, default_dir=".", env=env)
    with pytest.raises(ConfigError, match=r"^WANDB_MODE must be one of offline, online, disabled, got 'bogus'$"):
        resolve_settings(mode=None, project=None, entity=None, dir=None, default_dir=".", env={"WANDB_MODE": "bogus"})


def test_a_bad_wandb_mode_is_a_one_line_error_before_any_work(capsys, monkeypatch, tmp_path):
    from fsdtrain.cli import main

    monkeypatch.setenv("WANDB_MODE", "bogus")
    assert main(["fit", "--config", str(REPO / "configs/demo.yaml"), "--workdir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["fsdtrain: error: WANDB_MODE must be one of offline, online, disabled, got 'bogus'"]
    # eval checks its --wandb.* before it reads a window (the data does not exist)
    assert main(["eval", "--baselines", "--data", str(tmp_path / "none"), "--wandb.mode", "onlin"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["fsdtrain: error: --wandb.mode must be one of offline, online, disabled, got 'onlin'"]
    assert not (tmp_path / "run").exists()


def test_run_tables_summarise_validation_metrics_by_their_lowest_value():
    assert summary_goal("val/l2_3s") == summary_goal("val/US/miss_rate") == summary_goal("val/loss") == "min"
    assert summary_goal("train/loss") is None and summary_goal("perf/windows_per_s_per_rank") is None


def test_eval_tags_and_summary_values():
    assert parse_tags("a, b") == parse_tags("[a,b]") == ["a", "b"] and parse_tags(None) is None and parse_tags("[]") is None
    m = {k: 0.5 for k in METRIC_KEYS} | {"l2_3s": None}
    report = {"per_country": {"CN": {"model": m, "global_head": m}}, "overall": {"model": m, "ctra": m}}
    values = summary_values(report)
    assert values["eval/CN/global_head/l2_avg_2s"] == values["eval/overall/ctra/miss_rate"] == 0.5
    assert "eval/CN/model/l2_3s" not in values and len(values) == 4 * (len(METRIC_KEYS) - 1)


# --- offline run files through the CLI ------------------------------------------------------------


def fsdtrain(*args, env):
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def media(run_dir: Path, history: list[dict], key: str) -> list[dict]:
    """Logged values of a media key; asserts their files exist in the run's files dir."""
    values = [h[key] for h in history if key in h]
    for v in values:
        for name in v.get("filenames", [v.get("path")]):
            assert (run_dir / "files" / name).is_file(), name
    return values


@pytest.mark.slow
def test_offline_runs_hold_config_metrics_media_artifacts_and_lineage(tiny_fleet, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_PROJECT": "from-env", "WANDB_ENTITY": "team-env"}
    home = tmp_path / "wandb-home"  # the user's W&B folders, which a copied work directory must not need
    env |= {f"WANDB_{k}_DIR": str(home / k.lower()) for k in ("DATA", "CACHE", "CONFIG")}
    for name in ("FSDTRAIN_SITE_ZONE", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_TAGS", "WANDB_NOTES"):
        env.pop(name, None)
    common = [
        "--model.net", "configs/model/tiny.yaml", "--data.window.window_stride", "2", "--data.batch_size", "4",
        "--data.num_workers", "0", "--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false", "--wandb.group", "exp-1",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip
    pre, cn = tmp_path / "pre", tmp_path / "cn"
    proc = fsdtrain(
        "fit", "--config", "configs/demo.yaml", *common, "--workdir", str(pre),
        "--data.train", f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]",
        "--data.val", f"[{tiny_fleet['US']['val']},{tiny_fleet['DE']['val']}]",
        "--wandb.base_url", "https://wandb.example.cn", "--wandb.zone", "cn",
        "--wandb.entity", "team-flag", "--wandb.tags", "[pretrain,us-de]", "--wandb.notes", "global model, tiny",
        # a checkpoint after every epoch besides last.ckpt: several model versions, one of them best
        "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={pre / 'epochs'}",
        "--trainer.callbacks.filename={step}", "--trainer.callbacks.save_top_k=-1", env=env,
    )  # fmt: skip
    (run_dir,) = offline_runs(pre)
    assert f"upload it with: WANDB_BASE_URL=https://wandb.example.cn wandb sync {run_dir}" in proc.stderr
    run = read_run(run_dir)
    assert (run["run"].job_type, run["run"].run_group) == ("pretrain", "exp-1")
    # the flag and the config file win over WANDB_ENTITY and WANDB_PROJECT
    assert (run["run"].entity, run["run"].project) == ("team-flag", "fsdtrain-demo")
    assert list(run["run"].tags) == ["pretrain", "us-de"] and run["run"].notes == "global model, tiny"

    config, meta = run["config"], read_metadata(pre / "model.safetensors")
    assert config["config"]["wandb"]["group"] == "exp-1" and config["config"]["workdir"] == str(pre)
    assert "git_sha" in config and config["git_sha"] == meta.git_sha
    assert config["manifests"] == meta.manifests and len(config["manifests"]) == 4
    assert config["site_zone"] == "global" and config["zones"] == ["global"]
    assert config["wandb_target"] == {"mode": "offline", "base_url": "https://wandb.example.cn", "zone": "global", "server_zone": "cn"}

    history = run["history"]
    assert len([h for h in history if "val/l2_3s" in h]) == 2 and any("val/US/ade" in h for h in history)
    lr = [h["train/lr"] for h in history if "train/lr" in h]
    norms = [h["train/grad_norm"] for h in history if "train/grad_norm" in h]
    assert len(lr) == len(norms) == 4  # every optimizer step (2 epochs x 2 batches, logged every step)
    optim = config["config"]["model"]["optim"]  # the learning rate of each step: a 1-step warmup (a fifth of 4), then the cosine
    assert lr == pytest.approx([optim["lr"] * warmup_cosine(i, warmup=1, total=4, min_ratio=optim["min_lr_ratio"]) for i in range(4)])
    assert all(math.isfinite(g) and g > 0 for g in norms) and len(set(norms)) == 4
    # run tables show the best (lowest) validation value, not the last
    for key in ("val/l2_3s", "val/US/ade", "val/loss"):
        values = [h[key] for h in history if key in h]
        assert run["summary"][key] == {"min": min(values)}, key
    goals = {m["name"]: m["summary"] for m in run["metrics"] if m["name"]}
    assert goals["val/l2_3s"] == goals["val/DE/miss_rate"] == ["min"] and "train/loss" not in goals
    (table, _) = media(run_dir, history, "val/metrics_table")
    rows = json.loads((run_dir / "files" / table["path"]).read_text())
    assert rows["columns"] == list(TABLE_COLUMNS)
    assert {(r[0], r[1]) for r in rows["data"]} >= {(c, p) for c in ("US", "DE", "overall") for p in ("model", "ego_mlp", "constant_velocity")}
    bev = media(run_dir, history, "val/birds_eye")
    assert len(bev) == 2 and bev[0]["count"] == 4 and bev[0]["width"] == 300
    with Image.open(run_dir / "files" / bev[0]["filenames"][0]) as img:
        assert img.format == "PNG" and img.size == (300, 418)
    camera = media(run_dir, history, "val/camera")  # US/DE windows (zone global) may go anywhere
    assert len(camera) == 2 and camera[0]["width"] > 300

    models = [a for a in run["artifacts"] if a["type"] == "model"]
    assert {a["name"] for a in models} == {f"model-{run['run'].run_id}"}
    kinds = [a["metadata"]["kind"] for a in models]
    assert kinds[-1] == "weights" and set(kinds[:-1]) == {"checkpoint"}  # each checkpoint save, then the exported weights
    assert {a["metadata"]["global_step"] for a in models[:-1]} == {2, 4}  # saved after epoch 1 and epoch 2
    assert all("latest" in a["aliases"] for a in models) and "weights" in models[-1]["aliases"]
    scores = [a["metadata"]["val/l2_3s"] for a in models]
    for i, a in enumerate(models):  # best: the lowest val/l2_3s so far
        assert ("best" in a["aliases"]) == (scores[i] <= min(scores[: i + 1]))
    assert any("best" in a["aliases"] for a in models)
    ckpt = models[0]["entries"]
    assert any(e["ref"].startswith("file://") and e["path"].startswith("checkpoint") for e in ckpt)  # referenced, not copied
    weights = {e["path"]: e for e in models[-1]["entries"]}["model.safetensors"]
    assert weights["size"] == (pre / "model.safetensors").stat().st_size and not weights["ref"]  # held in the artifact
    assert meta.artifact == f"fsdtrain-demo/model-{run['run'].run_id}:weights"

    # the work directory copied elsewhere, the user's W&B folders gone: every file its artifacts reference is in it
    assert not [f for f in home.rglob("*") if f.is_file() and "staging" in str(f)]
    copied = tmp_path / "elsewhere" / "pre"
    shutil.copytree(pre, copied)
    shutil.rmtree(home)
    staged = [Path(e["local_path"]) for a in models for e in a["entries"] if e["local_path"]]
    assert len(staged) == len(models) + 1  # checkpoint.json of each version, and the weights file
    for path in staged:
        assert path.is_relative_to(pre / "wandb"), path
        assert (copied / path.relative_to(pre)).is_file(), path

    # fine-tune at a cn site from those weights, under DeepSpeed ZeRO-2 (gloo) accumulating 2 micro-batches:
    # lineage, job type, the engine's gradient norm once per optimizer step, and CN camera frames kept offline
    proc = fsdtrain(
        "finetune", "--config", "configs/finetune_cn.yaml", "--from", str(pre / "model.safetensors"), *common,
        "--trainer.strategy", "deepspeed_stage_2", "--trainer.accumulate_grad_batches", "2",
        "--workdir", str(cn), "--data.train", f"[{tiny_fleet['CN']['train']}]", "--data.val", f"[{tiny_fleet['CN']['val']}]", env=env,
    )  # fmt: skip
    (cn_dir,) = offline_runs(cn)
    ft = read_run(cn_dir)
    assert (ft["run"].job_type, ft["run"].run_group) == ("finetune", "exp-1")
    norms = [h["train/grad_norm"] for h in ft["history"] if "train/grad_norm" in h]
    assert len(norms) == 2 and all(math.isfinite(g) and g > 0 for g in norms)  # 2 epochs x 1 step of 2 micro-batches
    assert len([h for h in ft["history"] if "train/lr" in h]) == 2
    assert ft["config"]["lineage"] == {"init_from": str(pre / "model.safetensors"), "parent_artifact": meta.artifact}
    assert ft["config"]["site_zone"] == "cn" and ft["config"]["wandb_target"]["zone"] == "cn"
    ft_models = [a for a in ft["artifacts"] if a["type"] == "model"]
    assert ft_models and all(a["metadata"]["parent_artifact"] == meta.artifact for a in ft_models)
    assert read_metadata(cn / "model.safetensors").parent.artifact == meta.artifact
    cn_camera = media(cn_dir, ft["history"], "val/camera")  # offline at the cn site: allowed
    assert cn_camera and all(c.startswith("CN ") for v in cn_camera for c in v["captions"])
    assert f"upload it with: wandb sync {cn_dir}" in proc.stderr
    assert "holds camera frames of zone cn: upload it only to a W&B server inside that zone" in proc.stderr

    # an eval run of the fine-tuned weights: job type eval, config and lineage too
    ev = tmp_path / "eval"
    fsdtrain(
        "validate", "--config", "configs/finetune_cn.yaml", "--model.init_from", str(cn / "model.safetensors"), *common,
        "--workdir", str(ev), "--data.train", "[]", "--data.val", f"[{tiny_fleet['CN']['val']}]", env=env,
    )  # fmt: skip
    (ev_dir,) = offline_runs(ev)
    evr = read_run(ev_dir)
    assert (evr["run"].job_type, evr["run"].run_group) == ("eval", "exp-1")
    assert evr["config"]["lineage"]["parent_artifact"] == read_metadata(cn / "model.safetensors").artifact == f"fsdtrain-demo/model-{ft['run'].run_id}:weights"
    assert "git_sha" in evr["config"] and set(evr["config"]["manifests"]) == {tiny_fleet["CN"]["val"]}
    assert media(ev_dir, evr["history"], "val/metrics_table")
    assert not [a for a in evr["artifacts"] if a["type"] == "model"]  # validate trains nothing, saves nothing

    # `fsdtrain eval` of the fine-tuned weights: its own run beside the report, the weights' artifact its input
    out = tmp_path / "test-eval"
    proc = fsdtrain(
        "eval", "--ckpt", str(cn / "model.safetensors"), "--data", tiny_fleet["CN"]["val"], tiny_fleet["US"]["val"],
        "--out", str(out / "report.json"), "--site.zone", "cn", "--plots-per-country", "2", "--wandb.group", "exp-1",
        "--wandb.tags", "eval,cn", "--wandb.notes", "held-out CN and US", env=env,
    )  # fmt: skip
    (er_dir,) = offline_runs(out)
    er = read_run(er_dir)
    # no --wandb.project or --wandb.entity: WANDB_PROJECT and WANDB_ENTITY
    assert (er["run"].job_type, er["run"].run_group, er["run"].project, er["run"].entity) == ("eval", "exp-1", "from-env", "team-env")
    assert list(er["run"].tags) == ["eval", "cn"] and er["run"].notes == "held-out CN and US"
    cn_meta = read_metadata(cn / "model.safetensors")
    lineage = er["config"]["lineage"]
    assert lineage["weights_artifact"] == cn_meta.artifact == f"fsdtrain-demo/model-{ft['run'].run_id}:weights"
    assert lineage["weights_parent_artifact"] == meta.artifact and lineage["weights"] == str(cn / "model.safetensors")
    report = json.loads((out / "report.json").read_text())
    (table,) = media(er_dir, er["history"], "eval/metrics_table")
    rows = json.loads((er_dir / "files" / table["path"]).read_text())
    assert rows["columns"] == list(TABLE_COLUMNS) and rows["data"] == metric_table(report)
    assert {(r[0], r[1]) for r in rows["data"]} >= {("CN", "global_head"), ("US", "ctra"), ("overall", "ego_mlp")}
    assert er["summary"]["eval/CN/model/l2_3s"] == report["per_country"]["CN"]["model"]["l2_3s"]
    assert er["summary"]["eval/overall/constant_velocity/l2_avg_3s"] == report["overall"]["constant_velocity"]["l2_avg_3s"]
    (bev,) = media(er_dir, er["history"], "eval/birds_eye")
    (camera,) = media(er_dir, er["history"], "eval/camera")  # offline at the cn site: CN and US frames stay here
    assert bev["count"] == camera["count"] == 4 and {c.split()[0] for c in camera["captions"]} == {"CN", "US"}
    (evaluation,) = [a for a in er["artifacts"] if a["type"] == "evaluation"]
    assert evaluation["name"] == f"eval-{er['run'].run_id}" and evaluation["metadata"]["weights_artifact"] == cn_meta.artifact
    staged = Path({e["path"]: e for e in evaluation["entries"]}["report.json"]["local_path"])
    assert staged.is_relative_to(out / "wandb") and json.loads(staged.read_text()) == report
    assert f"upload it with: wandb sync {er_dir}" in proc.stderr

    # --wandb.mode disabled: the report and nothing else (in this process: no second interpreter to start)
    from fsdtrain.cli import main

    off = tmp_path / "eval-off"
    assert main(["eval", "--baselines", "--data", tiny_fleet["CN"]["val"], "--out", str(off / "report.json"), "--site.zone", "cn", "--wandb.mode", "disabled"]) == 0
    assert [f.name for f in off.iterdir()] == ["report.json"]


def test_a_server_zone_without_a_server_is_a_one_line_error(capsys):
    from fsdtrain.cli import main

    assert main(["fit", "--config", str(REPO / "configs/demo.yaml"), "--wandb.mode", "online", "--wandb.zone", "cn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fsdtrain: error: wandb.zone 'cn' needs wandb.base_url: the public W&B cloud counts as zone 'global'; "
                   "give the URL of the W&B server inside zone 'cn'"]  # fmt: skip
