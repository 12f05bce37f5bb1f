"""The loader inside real 2-rank training: uneven datasets never unbalance the ranks and every clip is
read once, and a corrupt clip is skipped and counted under `skip` and stops the run under `fail`."""

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.store.gate import AuditLog
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


def test_uneven_datasets_on_the_store_train_with_equal_batches_each_clip_read_once(s3_bucket, tmp_path):
    """2 gloo ranks x 2 loader workers over SeaweedFS: the audit log (one record per request) shows
    every clip's bytes requested once in the epoch, by one loader worker, and both ranks run the
    same number of steps on datasets of 5, 17 and 2 clips."""
    train = []
    for country, clips in (("US", 5), ("DE", 17), ("GB", 2)):
        synth_fleet(f"{s3_bucket}/d", [country], clips, clips_per_shard=clips, seed=3, clip=TINY_CLIP)
        train.append(f"{s3_bucket}/d/train/{country}")
    rec, audit = tmp_path / "windows", tmp_path / "audit.jsonl"
    fit(*common(train, tmp_path), "--data.num_workers", "2", "--data.audit_log", str(audit),
        "--trainer.callbacks+=helpers.window_recorder.RecordWindows", f"--trainer.callbacks.path={rec}")  # fmt: skip
    per_rank = [sum(1 for _ in open(f"{rec}.rank{r}.jsonl")) for r in range(2)]
    assert per_rank[0] == per_rank[1] == (5 + 17 + 2) * 8 // 8  # 4 streams of 6 clips: every window
    assert len(set().union(*read_steps(str(rec), 2).values())) == per_rank[0] * 8
    records = [r for r in AuditLog.read(audit) if "sample" in r]  # clip reads (the others: shard indexes)
    readers = defaultdict(set)
    for r in records:
        readers[(r["url"], r["sample"])].add((r["rank"], r["pid"]))
    assert len(readers) == 24 and len(records) == 24  # one request per clip (metadata and cameras lie together)
    assert all(len(who) == 1 for who in readers.values())  # decoded where it was read: by one worker
    assert len({who for v in readers.values() for who in v}) == 4  # and every worker read some


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
