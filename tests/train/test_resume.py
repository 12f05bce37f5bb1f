"""Exact mid-epoch resume through the Trainer: a run stopped after step 3 and resumed on another
number of ranks and workers (2 ranks x 2 workers -> 1 rank x 1 worker, and 1 x 1 -> 2 x 2, same
windows per micro batch over all ranks) trains on exactly the windows the uninterrupted run saw, step
by step; the data position and the order's shape travel in the checkpoint (FleetDataModule.state_dict)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.window_recorder import read_steps

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def fit(*args, cwd=REPO, rc=0):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled"}
    env.pop("FSDTRAIN_SITE_ZONE", None)
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", "fit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == rc, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def common_args(tiny_fleet, *, epochs: int) -> list[str]:
    """US + DE tiny clips, the tiny model over DDP, every rank's windows recorded per step."""
    train = f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]"
    return [
        "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml", "--data.train", train, "--data.val", "[]",
        "--data.window.window_stride", "2", "--wandb.mode", "disabled", "--data.country_weights", "null",
        "--trainer.strategy", "ddp", "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=helpers.window_recorder.RecordWindows",
    ]  # fmt: skip


def every_3_steps(steps) -> list[str]:
    """A checkpoint at steps 3, 6, ... in ``steps``."""
    return ["--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={steps}", "--trainer.callbacks.every_n_train_steps=3",
            "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={step}"]  # fmt: skip


def test_resume_on_one_rank_continues_with_the_unseen_windows(tiny_fleet, tmp_path):
    common = common_args(tiny_fleet, epochs=2)
    full = tmp_path / "full"
    fit(*common, f"--trainer.callbacks.path={full / 'windows'}", "--workdir", str(full), "--trainer.devices", "2",
        "--data.batch_size", "2", "--data.num_workers", "2", *every_3_steps(full / "steps"))  # fmt: skip
    ckpt = full / "steps" / "step=3.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (full / "steps").iterdir())
    data_state = torch.load(ckpt, map_location="cpu", weights_only=True)["FleetDataModule"]
    assert data_state["epoch"] == 0 and data_state["windows_done"] == 3 * 4 and data_state["windows_per_micro_batch"] == 4
    assert data_state["order"] == "streams" and len(data_state["datasets"]) == 2
    assert (data_state["streams"], data_state["turn"]) == (4, 2)  # 4 clips: one stream per loader worker

    # 12 windows done is not a whole number of global batches of 8: one line that says what to change
    wrong = fit(*common, "--trainer.callbacks.path", str(tmp_path / "wrong"), "--workdir", str(tmp_path / "wrong"),
                "--trainer.devices", "1", "--data.batch_size", "8", "--data.num_workers", "0", "--ckpt_path", str(ckpt), rc=2)  # fmt: skip
    assert "after 12 windows of epoch 0 (4 windows per micro batch over all ranks), not a whole number of this run's micro batches of 8 windows" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    resumed = tmp_path / "resumed"
    fit(*common, f"--trainer.callbacks.path={resumed / 'windows'}", "--workdir", str(resumed), "--trainer.devices", "1",
        "--data.batch_size", "4", "--data.num_workers", "1", "--ckpt_path", str(ckpt))  # fmt: skip

    before, after = read_steps(str(full / "windows"), 2), read_steps(str(resumed / "windows"), 1)
    assert len(before) == 16  # 2 epochs x 32 windows / global batch 4
    assert min(after) == (0, 3) and after == {k: v for k, v in before.items() if k >= (0, 3)}
    assert before[(0, 0)] != before[(1, 8)]  # each epoch has its own order


def test_resume_of_a_one_rank_run_on_two_ranks_and_two_workers(tiny_fleet, tmp_path):
    common = common_args(tiny_fleet, epochs=1)
    alone = tmp_path / "alone"
    fit(*common, f"--trainer.callbacks.path={alone / 'windows'}", "--workdir", str(alone), "--trainer.devices", "1",
        "--data.batch_size", "4", "--data.num_workers", "1", *every_3_steps(alone / "steps"))  # fmt: skip
    ckpt = alone / "steps" / "step=3.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["FleetDataModule"]
    assert (state["streams"], state["turn"]) == (1, 4)  # one worker: one stream
    grown = tmp_path / "grown"
    proc = fit(*common, f"--trainer.callbacks.path={grown / 'windows'}", "--workdir", str(grown), "--trainer.devices", "2",
               "--data.batch_size", "2", "--data.num_workers", "2", "--ckpt_path", str(ckpt))  # fmt: skip
    assert "do not divide over 2 rank(s) x 2 loader worker(s) x micro batch 2" in proc.stderr  # said, and still exact
    before, after = read_steps(str(alone / "windows"), 1), read_steps(str(grown / "windows"), 2)
    assert len(before) == 8 and min(after) == (0, 3) and after == {k: v for k, v in before.items() if k >= (0, 3)}
