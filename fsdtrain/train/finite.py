"""Finite or stopped: training ends with a one-line error at the first non-finite loss or gradient.

A NaN in the ground truth (or an exploding run) makes the loss NaN; one optimizer step with it turns
every weight it touches into NaN, and every later checkpoint and the weights file would hold them.
:class:`FiniteTraining` checks the loss of every micro-batch before its backward pass and the
gradients before every optimizer step, and raises :class:`NonFiniteError`: the run stops before
the step, so the last checkpoint saved (``last``) is the last good one.

- the loss: ``on_before_backward``, on every strategy;
- gradients under DDP or one device: ``on_before_optimizer_step``, every parameter's gradient (after
  DDP's all-reduce, so every rank decides alike);
- gradients under DeepSpeed ZeRO, whose partitioned gradients are not on the parameters: DeepSpeed
  itself skips a step whose gradient norm is not finite (in fp32, and in bf16 with its
  ``bf16.check_grad_overflow``, on by default), and the skipped step is reported here after the fact (no
  weight changed). Under fp16 with dynamic loss scaling, skipped steps are part of the loss-scale search and
  only the loss is checked.

:func:`check_finite_weights` is the last guard: :class:`fsdtrain.train.checkpoints.FleetCheckpoint`
refuses to save weights that are not finite.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from fsdtrain.errors import FsdtrainError

__all__ = ["NonFiniteError", "FiniteTraining", "check_finite_weights"]


class NonFiniteError(FsdtrainError):
    """Training produced a NaN or infinite loss, gradient or weight; the run stops before it spreads."""


def _fp16_loss_scaling(trainer: pl.Trainer) -> bool:
    return str(trainer.precision).startswith("16")


class FiniteTraining(pl.Callback):
    """Stops training at the first non-finite loss (before its backward) or gradient (before its step)."""

    def __init__(self) -> None:
        self._skipped = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._skipped = self._skipped_steps(trainer)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        # every rank decides alike: a rank stopping alone would leave the others waiting in the backward's all-reduce
        if trainer.world_size > 1:
            finite_everywhere = trainer.strategy.reduce_boolean_decision(finite, all=True)
        else:
            finite_everywhere = finite
        if finite_everywhere:
            return
        value, where = (loss.detach().float().flatten()[0].item(), f"rank {trainer.global_rank}") if not finite else ("not finite", "another rank")
        raise NonFiniteError(
            f"training stopped: the loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}) on {where}; "
            "no optimizer step was taken with it, the last checkpoint is the last good one. Check the "
            "data for NaN or huge values (`fsdtrain data verify`) and the learning rate"
        )

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy) or _fp16_loss_scaling(trainer):
            return  # ZeRO: checked after DeepSpeed's own step (see the module docstring); fp16: the scaler skips inf steps
        grads = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all()):  # one device sync per step
            return
        for name, grad in grads:
            if not bool(torch.isfinite(grad).all()):
                raise NonFiniteError(
                    f"training stopped: the gradient of {name} is not finite at step {trainer.global_step} on rank "
                    f"{trainer.global_rank}; the optimizer step was not taken, the last checkpoint is the last good one. "
                    "Lower the learning rate or set trainer.gradient_clip_val, and check the data for huge values"
                )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        skipped = self._skipped_steps(trainer)
        if skipped > self._skipped and not _fp16_loss_scaling(trainer):
            raise NonFiniteError(
                f"training stopped: the gradients are not finite at step {trainer.global_step - 1} (DeepSpeed skipped the step, "
                "no weight changed; the last checkpoint is the last good one). Lower the learning rate or set "
                "trainer.gradient_clip_val, and check the data for huge values"
            )
        self._skipped = skipped

    @staticmethod
    def _skipped_steps(trainer: pl.Trainer) -> int:
        """Steps DeepSpeed skipped for non-finite gradients (``DeepSpeedEngine.skipped_steps``); 0 elsewhere."""
        if not isinstance(trainer.strategy, DeepSpeedStrategy) or trainer.strategy.deepspeed_engine is None:
            return 0
        return int(trainer.strategy.deepspeed_engine.skipped_steps)


def _local_values(p: torch.nn.Parameter, zero3: bool) -> torch.Tensor:
    """The values of ``p`` this rank holds: under ZeRO-3 its partition (DeepSpeed's public accessor), else ``p``."""
    if zero3:
        from deepspeed.utils import safe_get_local_fp32_param

        local = safe_get_local_fp32_param(p)
        if local is not None:
            return local
    return p.detach()


def check_finite_weights(trainer: pl.Trainer, pl_module: pl.LightningModule, path: str) -> None:
    """Every rank checks its weights; if any rank holds a NaN or infinite one, every rank raises
    :class:`NonFiniteError` (one line naming the checkpoint ``path`` not written)."""
    zero3 = isinstance(trainer.strategy, DeepSpeedStrategy) and trainer.strategy.zero_stage_3
    named = [(n, _local_values(p, zero3)) for n, p in pl_module.named_parameters()]
    flags = [torch.isfinite(v).all() for _, v in named]
    finite = torch.stack([f.to(flags[0].device) for f in flags]).cpu() if flags else torch.ones(0, dtype=torch.bool)  # one sync
    bad = next((n for (n, _), ok in zip(named, finite.tolist()) if not ok), None)
    if not trainer.strategy.reduce_boolean_decision(bad is None, all=True):
        where = f"{bad} on rank {trainer.global_rank}" if bad else "a parameter on another rank"
        raise NonFiniteError(
            f"training stopped: {where} is not finite at step {trainer.global_step}; {path} was not saved, the last "
            "checkpoint is the last good one"
        )
