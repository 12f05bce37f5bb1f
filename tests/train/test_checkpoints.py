"""Checkpoints (fsdtrain/train/checkpoints.py): atomic saves, the ``last`` alias, the resolved config
beside each checkpoint, and a 2-rank ZeRO-2/ZeRO-3 run SIGKILLed mid-epoch that resumes with
``--ckpt_path last`` to the same weights as a run never interrupted."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.train import checkpoints
from fsdtrain.train.checkpoints import FleetCheckpoint
from fsdtrain.weights.checkpoint_files import check_checkpoint, last_checkpoint, read_checkpoint
from helpers.tiny_module import Tiny

REPO = Path(__file__).resolve().parents[2]


def tiny_trainer(dirpath: Path, max_steps: int) -> pl.Trainer:
    callback = FleetCheckpoint(str(dirpath), every_n_steps=2, keep=2, config_yaml="model: tiny\n", metadata=None)
    return pl.Trainer(
        default_root_dir=str(dirpath.parent), accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_as_last(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints"
    commit = checkpoints._commit

    def crash_at_step_4(tmp: Path, final: Path) -> None:
        if final.name == "step=4.ckpt":  # the process dies half-way through writing the file
            tmp.write_bytes(tmp.read_bytes()[:100])
            raise RuntimeError("simulated crash during the save")
        commit(tmp, final)

    monkeypatch.setattr(checkpoints, "_commit", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_trainer(ck, max_steps=6).fit(Tiny())
    assert last_checkpoint(ck) == ck / "step=2.ckpt" and os.readlink(ck / "last.ckpt") == "step=2.ckpt"
    assert (ck / ".step=4.ckpt.partial").is_file() and not (ck / "step=4.ckpt").exists()
    with pytest.raises(ConfigError, match="unfinished checkpoint"):
        check_checkpoint(ck / ".step=4.ckpt.partial")
    assert (ck / "step=2.ckpt.config.yaml").read_text() == "model: tiny\n"
    assert check_checkpoint(ck / "step=2.ckpt") == ck / "step=2.ckpt"

    monkeypatch.setattr(checkpoints, "_commit", commit)
    trainer = tiny_trainer(ck, max_steps=6)
    trainer.fit(Tiny(), ckpt_path=str(last_checkpoint(ck)))
    assert trainer.global_step == 6
    # leftovers removed, last moved, older checkpoints pruned (keep=2), each with its run files
    assert sorted(p.name for p in ck.iterdir()) == [
        "last.ckpt", "step=4.ckpt", "step=4.ckpt.config.yaml", "step=4.ckpt.fsdtrain.json",
        "step=6.ckpt", "step=6.ckpt.config.yaml", "step=6.ckpt.fsdtrain.json",
    ]  # fmt: skip
    assert last_checkpoint(ck) == ck / "step=6.ckpt"
    state, meta, path = read_checkpoint(tmp_path)  # a workdir means its last checkpoint
    assert path == ck / "step=6.ckpt" and meta.global_step == 6 and meta.config == {"model": "tiny"}
    torch.testing.assert_close(state["layer.weight"], trainer.lightning_module.layer.weight.detach())

    # `last` dangling (deleted by hand, or a crash between publishing and moving the link): the newest complete one
    (ck / "step=6.ckpt").unlink()
    assert last_checkpoint(ck) == ck / "step=4.ckpt"


def test_print_config_shows_the_checkpoint_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/demo.yaml", "--checkpoint.every_n_steps", "50", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["checkpoint"] == {"every_n_steps": 50, "keep": 2} and config["trainer"]["strategy"] == "deepspeed_stage_2"


# --- kill and resume, 2 ranks -----------------------------------------------------------------------


def fleet_args(tiny_fleet, strategy: str) -> list[str]:
    train = f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]"
    return [
        "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml", "--model.net.dropout", "0.0",
        "--data.train", train, "--data.val", "[]", "--data.window.window_stride", "2",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.seed", "0", "--seed_everything", "0",
        "--trainer.strategy", strategy, "--trainer.devices", "2", "--trainer.max_steps", "10",
        "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--checkpoint.every_n_steps", "2",
    ]  # fmt: skip


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled"}
    out.pop("FSDTRAIN_SITE_ZONE", None)
    return out


def fsdtrain(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def group_alive(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies awaiting their parent do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def kill_after_checkpoint(args: list[str], workdir: Path, name: str) -> None:
    """Starts a fit in its own process group; SIGKILLs the whole group once ``name`` is published."""
    log_path = workdir.parent / f"{workdir.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fsdtrain", "fit", *args, "--workdir", str(workdir), "--trainer.callbacks+=helpers.pace.SlowSteps"],
            cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not (workdir / "checkpoints" / name).exists():
                assert proc.poll() is None, f"the run ended before {name} was saved: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no {name} after 240 s"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 30
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, f"ranks survived the kill: {group_alive(proc.pid)}"
        time.sleep(0.1)


def step_of(path: Path) -> int:
    return int(re.fullmatch(r"step=(\d+)\.ckpt", path.name).group(1))


PREDICT_WITHOUT_DEEPSPEED = """
import sys
sys.modules["deepspeed"] = None  # any import of deepspeed fails in this process
import torch
from fsdtrain.eval.evaluate import load_predictors
net, base, meta = load_predictors(sys.argv[1])
B, N, T = 2, len(meta.cameras), meta.window["history"]
images = torch.randint(0, 255, (B, N, T, 3, 48, 64), dtype=torch.uint8)
with torch.no_grad():
    K = torch.tensor([[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]]).expand(B, N, 3, 3)  # for the ray embedding
    cam_to_ego = torch.eye(4).expand(B, N, 4, 4)
    traj, logits = net(images, torch.zeros(B, T, 6), torch.zeros(B, dtype=torch.long), net.heads.route(["US", "CN"]), intrinsics=K, cam_to_ego=cam_to_ego)
assert torch.isfinite(traj).all() and not any(m.split(".")[0] == "deepspeed" for m, mod in sys.modules.items() if mod is not None)
print("predicted", list(traj.shape), list(logits.shape), ",".join(meta.heads), ",".join(meta.zones))
"""


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["deepspeed_stage_2", "deepspeed_stage_3"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tiny_fleet, tmp_path, strategy):
    args = fleet_args(tiny_fleet, strategy)
    full, killed = tmp_path / "full", tmp_path / "killed"
    fsdtrain("fit", *args, "--workdir", str(full))

    kill_after_checkpoint(args, killed, "step=4.ckpt")  # 8 steps per epoch: killed mid-epoch 0
    ck = killed / "checkpoints"
    assert not (killed / "model.safetensors").exists()
    first = last_checkpoint(ck)
    assert first is not None and 4 <= step_of(first) < 10
    # what a crash during the next save leaves: a hidden, unfinished checkpoint with a truncated shard
    partial = ck / f".step={step_of(first) + 2}.ckpt.partial"
    (partial / "checkpoint").mkdir(parents=True, exist_ok=True)
    (partial / "latest").write_text("checkpoint")
    shard = next((first / "checkpoint").glob("*model_states.pt"))
    (partial / "checkpoint" / shard.name).write_bytes(shard.read_bytes()[:1000])
    assert last_checkpoint(ck) == first

    resumed = fsdtrain("fit", *args, "--workdir", str(killed), "--ckpt_path", "last")
    assert f"fsdtrain: resuming from {first}" in resumed.stderr  # said before Lightning starts rank 1: a world of 1 yet
    assert sorted(p.name for p in ck.iterdir()) == ["last.ckpt", "step=10.ckpt", "step=8.ckpt"]
    assert os.readlink(ck / "last.ckpt") == "step=10.ckpt"
    config = yaml.safe_load((ck / "step=10.ckpt" / "config.yaml").read_text())
    assert config["trainer"]["strategy"] == strategy and config["workdir"] == str(killed)

    want, got = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=lambda m, key=key: f"{key}: {m}")

    # the ZeRO shards consolidated without DeepSpeed are the weights the run ended with
    fsdtrain("export", "--ckpt", str(killed), "--out", str(tmp_path / "export.safetensors"))
    exported = load_file(tmp_path / "export.safetensors")
    assert exported.keys() == got.keys() and all(torch.equal(exported[k], got[k]) for k in got)
    # ... and they predict in a process that cannot import DeepSpeed
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT_WITHOUT_DEEPSPEED, str(tmp_path / "export.safetensors")],
        capture_output=True, text=True, cwd=REPO, env=env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted [2, 3, 6, 3] [2, 3] global global" in proc.stdout
