"""Real runs for the review tests, made once per session through the real CLI on the tiny fleet:
a pretrain on US + DE at a ``global`` site, a CN fine-tune from it at a ``cn`` site (both W&B
offline, with validation pictures), and ``fsdtrain eval --plots`` of the fine-tuned weights on CN
and US clips. About 45 s on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsdtrain.review.wandb_files import offline_runs, wait_finished

REPO = Path(__file__).resolve().parents[2]


def fsdtrain(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="session")
def review_runs(tiny_fleet, tmp_path_factory) -> dict[str, Path]:
    """{"pre", "cn", "eval"} -> the run folders (eval: ``report.json`` and ``plots/``)."""
    root = tmp_path_factory.mktemp("review")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env |= {f"WANDB_{k}_DIR": str(root / "wandb-home" / k.lower()) for k in ("DATA", "CACHE", "CONFIG")}
    for name in ("FSDTRAIN_SITE_ZONE", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
        env.pop(name, None)
    common = [
        "--model.net", "configs/model/tiny.yaml", "--data.window.window_stride", "2", "--data.batch_size", "4",
        "--data.num_workers", "0", "--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    pre, cn, ev = root / "pre", root / "cn", root / "eval"
    fsdtrain(
        "fit", "--config", "configs/demo.yaml", *common, "--workdir", str(pre), "--site.zone", "global",
        "--data.train", f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]",
        "--data.val", f"[{tiny_fleet['US']['val']},{tiny_fleet['DE']['val']}]", env=env,
    )  # fmt: skip
    fsdtrain(
        "finetune", "--config", "configs/finetune_cn.yaml", "--from", str(pre / "model.safetensors"), *common,
        "--workdir", str(cn), "--site.zone", "cn", "--data.train", f"[{tiny_fleet['CN']['train']}]",
        "--data.val", f"[{tiny_fleet['CN']['val']}]", env=env,
    )  # fmt: skip
    fsdtrain(
        "eval", "--ckpt", str(cn / "model.safetensors"), "--data", tiny_fleet["CN"]["val"], tiny_fleet["US"]["val"],
        "--site.zone", "cn", "--out", str(ev / "report.json"), "--plots", str(ev / "plots"), "--plots-per-country", "2", env=env,
    )  # fmt: skip
    for run in (pre, cn, ev):  # W&B's writer may still be flushing a file after its command exited
        assert all(wait_finished(d).finished for d in offline_runs(run))
    return {"pre": pre, "cn": cn, "eval": ev}
