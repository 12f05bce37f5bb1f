"""W&B for reviewers (fsdtrain/train/wandb_log.py): the rule for camera frames, the metric table,
and, through the real CLI in offline mode, the run files a reviewer would upload: config, metrics,
a table, images, model artifacts with aliases, and lineage from a pretrain run to its fine-tune."""

import json
import os
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
from fsdtrain.train.wandb_log import TABLE_COLUMNS, WandbTarget, _pick, metric_table, validation_images
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
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env |= {f"WANDB_{k}_DIR": str(tmp_path / "wandb-home" / k.lower()) for k in ("DATA", "CACHE", "CONFIG")}  # artifact staging
    env.pop("FSDTRAIN_SITE_ZONE", None)
    env.pop("WANDB_BASE_URL", None)
    common = [
        "--model.net", "configs/model/tiny.yaml", "--data.window.window_stride", "2", "--data.batch_size", "4",
        "--data.num_workers", "0", "--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false", "--wandb.group", "exp-1",
    ]  # fmt: skip
    pre, cn = tmp_path / "pre", tmp_path / "cn"
    proc = fsdtrain(
        "fit", "--config", "configs/demo.yaml", *common, "--workdir", str(pre),
        "--data.train", f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]",
        "--data.val", f"[{tiny_fleet['US']['val']},{tiny_fleet['DE']['val']}]",
        "--wandb.base_url", "https://wandb.example.cn", "--wandb.zone", "cn",
        # a checkpoint after every epoch besides last.ckpt: several model versions, one of them best
        "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={pre / 'epochs'}",
        "--trainer.callbacks.filename={step}", "--trainer.callbacks.save_top_k=-1", env=env,
    )  # fmt: skip
    (run_dir,) = offline_runs(pre)
    assert f"upload it with: WANDB_BASE_URL=https://wandb.example.cn wandb sync {run_dir}" in proc.stderr
    run = read_run(run_dir)
    assert (run["run"].job_type, run["run"].run_group) == ("pretrain", "exp-1")

    config, meta = run["config"], read_metadata(pre / "model.safetensors")
    assert config["config"]["wandb"]["group"] == "exp-1" and config["config"]["workdir"] == str(pre)
    assert "git_sha" in config and config["git_sha"] == meta.git_sha
    assert config["manifests"] == meta.manifests and len(config["manifests"]) == 4
    assert config["site_zone"] == "global" and config["zones"] == ["global"]
    assert config["wandb_target"] == {"mode": "offline", "base_url": "https://wandb.example.cn", "zone": "global", "server_zone": "cn"}

    history = run["history"]
    assert len([h for h in history if "val/l2_3s" in h]) == 2 and any("val/US/ade" in h for h in history)
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

    # fine-tune at a cn site from those weights: lineage, job type, and CN camera frames kept offline
    proc = fsdtrain(
        "finetune", "--config", "configs/finetune_cn.yaml", "--from", str(pre / "model.safetensors"), *common,
        "--workdir", str(cn), "--data.train", f"[{tiny_fleet['CN']['train']}]", "--data.val", f"[{tiny_fleet['CN']['val']}]", env=env,
    )  # fmt: skip
    (cn_dir,) = offline_runs(cn)
    ft = read_run(cn_dir)
    assert (ft["run"].job_type, ft["run"].run_group) == ("finetune", "exp-1")
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


def test_a_server_zone_without_a_server_is_a_one_line_error(capsys):
    from fsdtrain.cli import main

    assert main(["fit", "--config", str(REPO / "configs/demo.yaml"), "--wandb.mode", "online", "--wandb.zone", "cn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fsdtrain: error: wandb.zone 'cn' needs wandb.base_url: the public W&B cloud counts as zone 'global'; "
                   "give the URL of the W&B server inside zone 'cn'"]  # fmt: skip
