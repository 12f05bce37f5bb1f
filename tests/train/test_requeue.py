"""SLURM requeue (fsdtrain/train/requeue.py): SIGUSR1 during training -> a complete checkpoint at the
next step, ``scontrol requeue <job>``, training stops; the requeued run resumes from ``last``."""

import os
import signal
import stat

import lightning.pytorch as pl
import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.train.checkpoints import FleetCheckpoint
from fsdtrain.train.requeue import RequeueOnSignal, slurm_job_id
from fsdtrain.weights.checkpoint_files import last_checkpoint
from helpers.tiny_module import Tiny


class SignalAt(pl.Callback):
    """Sends the warning signal to this process at the end of one batch, as SLURM would before the time limit."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A stand-in ``scontrol`` on PATH that records its arguments."""
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.args"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return record


def trainer(dirpath, *callbacks) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(dirpath.parent), accelerator="cpu", devices=1, max_steps=20, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[FleetCheckpoint(str(dirpath), metadata=None), *callbacks],
    )  # fmt: skip


def test_the_warning_signal_saves_requeues_and_stops(tmp_path, scontrol, caplog):
    before = signal.getsignal(signal.SIGUSR1)
    ck = tmp_path / "checkpoints"
    t = trainer(ck, SignalAt(batch=2), RequeueOnSignal())
    t.fit(Tiny(windows=64))
    assert t.global_step == 3  # stopped after the step the signal arrived in, not at max_steps
    assert last_checkpoint(ck) == ck / "step=3.ckpt"
    assert scontrol.read_text().split() == ["requeue", "4242"]
    assert "SIGUSR1 from SLURM: saved step 3, requeued job 4242" in caplog.messages  # a warning, on stderr
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is the process's again after fit

    # the requeued job: same command with --ckpt_path last, continues at step 3 and ends at max_steps
    resumed = trainer(ck, RequeueOnSignal())
    resumed.fit(Tiny(windows=64), ckpt_path=str(last_checkpoint(ck)))
    assert resumed.global_step == 20 and last_checkpoint(ck) == ck / "step=20.ckpt"


def test_the_job_id_of_an_array_task():
    assert slurm_job_id({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}) == "5_3"
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    with pytest.raises(ConfigError, match="not a SLURM job id"):
        slurm_job_id({"SLURM_JOB_ID": "7; rm -rf /"})
