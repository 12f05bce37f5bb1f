"""W&B offline run files read back without a server (fsdtrain/review/wandb_files.py), from a real
offline run written by W&B itself: scalars, config, tags, media; a run killed while writing; a file
that is not one; a media path that leaves the run's folder."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from fsdtrain.errors import ConfigError
from fsdtrain.review.pictures import wandb_pictures
from fsdtrain.review.wandb_files import offline_runs, read_wandb_run, wait_finished


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    import wandb

    root = tmp_path_factory.mktemp("wandb-run")
    with pytest.MonkeyPatch.context() as env:  # W&B's own folders under the test's, not the user's home
        env.setenv("WANDB_SILENT", "true")
        for k in ("DATA", "CACHE", "CONFIG"):
            env.setenv(f"WANDB_{k}_DIR", str(root / "home" / k.lower()))
        run = wandb.init(
            mode="offline",
            dir=str(root),
            project="review",
            job_type="finetune",
            tags=["cn", "tiny"],
            config={"site_zone": "cn"},
        )
        for step in range(3):
            run.log({"train/loss": 1.0 / (step + 1), "trainer/global_step": step})
        images = [
            wandb.Image(Image.new("RGB", (40, 30), color), caption=f"{c} clip-1 frame 5")
            for c, color in (("CN", "red"), ("US", "blue"))
        ]
        run.log({"val/camera": images, "trainer/global_step": 3})
        run.finish()
    (run_dir,) = offline_runs(root)
    assert wait_finished(run_dir).finished  # W&B's writer may still be flushing when finish() returns
    return run_dir


def test_a_real_offline_run_reads_back(offline_run):
    run = read_wandb_run(offline_run)
    assert (run.project, run.job_type, run.tags, run.truncated, run.finished) == (
        "review",
        "finetune",
        ["cn", "tiny"],
        0,
        True,
    )
    assert run.config["site_zone"] == "cn"
    assert run.scalars("train/loss") == [(0.0, 1.0), (1.0, 0.5), (2.0, 1.0 / 3)]
    assert run.summary["train/loss"] == 1.0 / 3
    # camera images by the caption's country: the CN one only where zone cn may hold it
    at_cn, left_out = wandb_pictures(run, "cn")
    assert [p.window for p in at_cn] == ["CN clip-1 frame 5", "US clip-1 frame 5"] and left_out == 0
    for_global, left_out = wandb_pictures(run, "global")
    assert [p.window for p in for_global] == ["US clip-1 frame 5"] and left_out == 1


def test_a_run_killed_while_writing_keeps_its_whole_records(offline_run, tmp_path):
    copy = tmp_path / offline_run.name
    shutil.copytree(offline_run, copy)
    (file,) = copy.glob("run-*.wandb")
    file.write_bytes(file.read_bytes()[:-10])
    run = read_wandb_run(copy)
    assert (
        run.truncated > 0 and not run.finished and run.scalars("train/loss")[:2] == [(0.0, 1.0), (1.0, 0.5)]
    )


def test_files_that_are_not_run_files_are_one_line_errors(offline_run, tmp_path):
    copy = tmp_path / offline_run.name
    shutil.copytree(offline_run, copy)
    (file,) = copy.glob("run-*.wandb")
    data = file.read_bytes()
    file.write_bytes(b"LEVELDB" + data[7:])
    with pytest.raises(ConfigError, match=r"not a W&B run file \(its header is b'LEVELDB'"):
        read_wandb_run(copy)
    file.write_bytes(data)
    (copy / "run-second.wandb").write_bytes(data)
    with pytest.raises(ConfigError, match="expected one run-\\*.wandb file in the W&B run folder, found 2"):
        read_wandb_run(copy)
    run = read_wandb_run(offline_run)
    for name in ("../../etc/passwd", "/etc/passwd", "media/images/none.png"):
        with pytest.raises(ConfigError) as exc:
            run.media_file(name, "history val/camera")
        assert str(exc.value).startswith(
            f"{offline_run}: history val/camera names media file"
        ) and "\n" not in str(exc.value)
