"""The loader inside real 2-rank training: uneven shards never unbalance the ranks, and a corrupt
clip is skipped and counted under `skip` and stops the run under `fail`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.synth.fleet import synth_fleet
from helpers.fleet import TINY_CLIP, rewrite_shard
from helpers.window_recorder import read_steps

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def fit(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled"}
    env.pop("FSDTRAIN_SITE_ZONE", None)
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", "fit", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def common(train: list[str], workdir: Path) -> list[str]:
    return [
        "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml", "--data.train", "[" + ",".join(train) + "]",
        "--data.val", "[]", "--data.window.window_stride", "2", "--data.batch_size", "4", "--wandb.mode", "disabled",
        "--data.cameras", "[" + ",".join(DEFAULT_CAMERAS) + "]", "--data.country_weights", "null",  # every camera, no mixing
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--workdir", str(workdir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """Three shards of 5, 17 and 2 clips (one manifest each)."""
    root = tmp_path_factory.mktemp("uneven")
    urls = []
    for country, clips in (("US", 5), ("DE", 17), ("GB", 2)):
        synth_fleet(str(root / "d"), [country], clips, clips_per_shard=clips, seed=3, clip=TINY_CLIP)
        urls.append(f"file://{root}/d/train/{country}")
    return urls


@pytest.mark.parametrize("order", ["sharded", "global"])
def test_uneven_shards_train_to_the_end_with_equal_batches(uneven, tmp_path, order):
    rec = tmp_path / "windows"
    fit(*common(uneven, tmp_path), "--data.num_workers", "2", "--data.order", order,
        "--trainer.callbacks+=helpers.window_recorder.RecordWindows", f"--trainer.callbacks.path={rec}")  # fmt: skip
    per_rank = [sum(1 for _ in open(f"{rec}.rank{r}.jsonl")) for r in range(2)]
    assert per_rank[0] == per_rank[1] > 0
    if order == "global":
        assert per_rank[0] == (5 + 17 + 2) * 8 // 8  # every window but the tail of one global batch
        assert len(set().union(*read_steps(str(rec), 2).values())) == per_rank[0] * 8


@pytest.fixture(scope="module")
def with_corrupt_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    synth_fleet(str(root / "d"), ["US"], 6, clips_per_shard=2, seed=4, clip=TINY_CLIP)
    rewrite_shard(root / "d" / "train" / "US", lambda ms: [(n, v[: len(v) // 3] if n.endswith("CAM_BACK.mp4") else v) for n, v in ms])
    return f"file://{root}/d/train/US"


def test_corrupt_clip_is_skipped_and_counted_under_skip(with_corrupt_clip, tmp_path):
    proc = fit(*common([with_corrupt_clip], tmp_path), "--data.num_workers", "1", "--data.on_error", "skip", "--data.max_skip_fraction", "0.5")
    assert "skipped 1 clip(s)" in proc.stderr and "CAM_BACK.mp4" in proc.stderr
    assert (tmp_path / "model.safetensors").exists()


def test_corrupt_clip_stops_the_run_under_fail(with_corrupt_clip, tmp_path):
    proc = fit(*common([with_corrupt_clip], tmp_path), "--data.num_workers", "1", check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fsdtrain: error:")]
    assert "Traceback" not in proc.stderr
    assert any("CAM_BACK.mp4: video does not decode" in e for e in errors)
    assert all("CAM_BACK.mp4" in e or "another rank failed first" in e for e in errors)
    assert not (tmp_path / "model.safetensors").exists()
