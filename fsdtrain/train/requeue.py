"""SLURM requeue: on the warning signal, save a complete checkpoint at a step boundary, requeue, stop.

``#SBATCH --signal=USR1@90`` has SLURM send SIGUSR1 to every task 90 s before the time limit (and
``--requeue`` lets the job be requeued). Lightning's own handler saves an ``hpc_ckpt_N.ckpt``
inside the signal handler, wherever each rank happens to be, which under DeepSpeed can run the
save's collectives against another rank's gradient all-reduce. :class:`RequeueOnSignal` only
notes the signal; after the next optimizer step all ranks agree on it (one boolean all-reduce per
step), :class:`~fsdtrain.train.checkpoints.FleetCheckpoint` publishes ``step=N.ckpt`` atomically
with ``last`` pointing to it, rank 0 runs ``scontrol requeue <job>``, and training stops. The
requeued job runs the same ``fsdtrain fit ... --ckpt_path last`` and continues from that step.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading

import lightning.pytorch as pl

from fsdtrain.errors import ConfigError

__all__ = ["RequeueOnSignal", "slurm_job_id"]

log = logging.getLogger(__name__)


def slurm_job_id(environ=None) -> str:
    """The id ``scontrol requeue`` takes: ``ARRAYID_TASKID`` for an array task, else ``SLURM_JOB_ID``."""
    env = os.environ if environ is None else environ
    array_id = env.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_id}_{env['SLURM_ARRAY_TASK_ID']}" if array_id and env.get("SLURM_ARRAY_TASK_ID") else env.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job):
        raise ConfigError(f"cannot requeue: SLURM_JOB_ID is {job!r}, not a SLURM job id; run under sbatch (launch/slurm/train.sbatch)")
    return job


class RequeueOnSignal(pl.Callback):
    """Saves, requeues the SLURM job and stops training after ``signum`` arrives (see the module docstring).

    Args:
        signum: the warning signal of ``#SBATCH --signal`` (SIGUSR1).
        requeue: run ``scontrol requeue`` (False: only save and stop, e.g. to stop a job cleanly).
    """

    def __init__(self, signum: int = signal.SIGUSR1, *, requeue: bool = True) -> None:
        self.signum = signal.Signals(signum)
        self.requeue = requeue
        self._asked = False
        self._previous = None
        self._step_seen = -1

    def _note(self, signum, frame) -> None:
        self._asked = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._note)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_seen:  # mid-accumulation: no optimizer step yet, not a place to save
            return
        self._step_seen = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self._asked, all=False):  # any rank got the signal
            return
        from fsdtrain.train.checkpoints import FleetCheckpoint

        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, FleetCheckpoint):
                callback.save_now(trainer)
        trainer.should_stop = True
        if trainer.is_global_zero:
            saved = f"saved step {trainer.global_step}"
            if self.requeue:
                job = slurm_job_id()
                proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                outcome = f"requeued job {job}" if proc.returncode == 0 else f"`scontrol requeue {job}` failed: {proc.stderr.strip() or proc.returncode}"
                log.warning("%s from SLURM: %s, %s", self.signum.name, saved, outcome)
            else:
                log.warning("%s: %s, stopping", self.signum.name, saved)
