"""Batch arithmetic, in one place: global batch = micro batch x accumulation x world size.

``data.batch_size`` is the micro batch each rank sees per forward pass, ``trainer.accumulate_grad_batches``
the micro batches summed into one optimizer step, and the world size ``trainer.num_nodes x
trainer.devices``. ``data.global_batch_size`` (optional) fixes the windows per optimizer step instead,
so one config keeps its optimisation on 2 CPU ranks and on 64 GPUs: the accumulation is derived from it.
:func:`plan_batches` is the only place that multiplies or divides these numbers; the CLI (before any
process starts) and ``FleetDeepSpeedStrategy`` (DeepSpeed's ``train_batch_size`` and friends) both ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsdtrain.errors import ConfigError

__all__ = ["BatchPlan", "plan_batches"]


@dataclass(frozen=True)
class BatchPlan:
    """How the windows of one optimizer step are spread over ranks and micro batches.

    Args:
        micro_batch: windows per rank per forward/backward pass (``data.batch_size``).
        accumulation: micro batches per optimizer step (``trainer.accumulate_grad_batches``).
        world_size: data-parallel ranks (``trainer.num_nodes x trainer.devices``).
    """

    micro_batch: int
    accumulation: int
    world_size: int

    @property
    def global_batch(self) -> int:
        """Windows per optimizer step, over all ranks."""
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def windows_per_micro_batch(self) -> int:
        """Windows in one micro batch over all ranks (a forward/backward pass of every rank): the step
        by which the data position moves, and the unit of a checkpoint's data state."""
        return self.micro_batch * self.world_size

    def deepspeed_config(self) -> dict[str, int]:
        """The three batch keys of a DeepSpeed config (DeepSpeed checks that they multiply up)."""
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.accumulation,
            "train_batch_size": self.global_batch,
        }

    def describe(self) -> str:
        """``global batch 32 = micro batch 4 x accumulation 2 x 4 ranks``."""
        ranks = "rank" if self.world_size == 1 else "ranks"
        return f"global batch {self.global_batch} = micro batch {self.micro_batch} x accumulation {self.accumulation} x {self.world_size} {ranks}"


def plan_batches(
    *, micro_batch: int, world_size: int, accumulation: int | None = None, global_batch: int | None = None
) -> BatchPlan:
    """The batch plan of a run; fails with a one-line :class:`ConfigError` on numbers that do not fit.

    Args:
        micro_batch: ``data.batch_size``.
        world_size: number of data-parallel ranks.
        accumulation: ``trainer.accumulate_grad_batches``; ``None`` derives it from ``global_batch`` (or 1).
        global_batch: ``data.global_batch_size``; ``None`` derives it (micro x accumulation x world).

    With both ``accumulation`` and ``global_batch`` given they must agree.
    """
    if micro_batch < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {micro_batch}")
    if world_size < 1:
        raise ConfigError(f"the world size must be >= 1, got {world_size}")
    if accumulation is not None and accumulation < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulation}")
    if global_batch is None:
        return BatchPlan(micro_batch, accumulation or 1, world_size)
    if global_batch < 1:
        raise ConfigError(f"data.global_batch_size must be >= 1, got {global_batch}")
    if global_batch % world_size:
        raise ConfigError(
            f"data.global_batch_size {global_batch} does not divide by the world size {world_size} "
            f"(trainer.num_nodes x trainer.devices): choose a multiple of {world_size}"
        )
    per_rank = global_batch // world_size
    if per_rank % micro_batch:
        raise ConfigError(
            f"data.global_batch_size {global_batch} is {per_rank} windows per rank on {world_size} rank(s), "
            f"not a multiple of data.batch_size {micro_batch}: choose a multiple of {micro_batch * world_size} "
            "or another data.batch_size"
        )
    derived = per_rank // micro_batch
    if accumulation is not None and accumulation != derived:
        raise ConfigError(
            f"trainer.accumulate_grad_batches {accumulation} disagrees with data.global_batch_size {global_batch} "
            f"(= data.batch_size {micro_batch} x accumulation {derived} x {world_size} rank(s)): set only one of them"
        )
    return BatchPlan(micro_batch, derived, world_size)
