"""Callbacks: epoch-aware data order, throughput/data-wait figures, learning rate and gradient norm, run
info for W&B, weights export, validation metrics file."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators.cuda import CUDAAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy

from fsdtrain.eval.report import write_report
from fsdtrain.train.finetune import trained_on_zones
from fsdtrain.train.mfu import mfu, peak_flops, training_flops_per_window
from fsdtrain.weights.files import git_sha, save_weights
from fsdtrain.weights.head_only import head_file_name, path_bytes, save_head
from fsdtrain.weights.metadata import FORMAT, WeightsMeta

__all__ = ["StreamEpoch", "Throughput", "OptimizerStats", "ProgressLines", "RunInfo", "ExportWeights", "ValidationReport", "run_metadata"]

log = logging.getLogger(__name__)


class StreamEpoch(pl.Callback):
    """Gives the data stream its epoch (each has its own seeded order) when an epoch starts. A run
    resumed mid-epoch gets its position from the checkpoint's data state instead
    (``FleetDataModule.load_state_dict``), before Lightning forks the loader workers; Lightning
    skips ``on_train_epoch_start`` on such a restart."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "set_position"):
            dm.set_position(trainer.current_epoch, 0)


class Throughput(pl.Callback):
    """Logs rank 0's training speed every ``trainer.log_every_n_steps`` steps (every rank measures its own):
    ``perf/windows_per_s_per_rank`` (also in the progress bar), ``perf/step_time_s`` (seconds per optimizer
    step, data wait included), ``perf/data_wait_fraction`` (the share of that time spent waiting for the
    next batch) and, where the device's peak FLOP/s is known (fsdtrain/train/mfu.py: some NVIDIA GPUs at
    bf16/fp16; not the CPU), ``perf/mfu``: model FLOPs per window x windows/s / peak."""

    def __init__(self) -> None:
        self._batch_end: float | None = None
        self._wait = self._busy = 0.0
        self._windows = self._batches = 0
        self._peak: float | None = None  # FLOP/s of this rank's device, where known
        self._flops: int | None = None  # model FLOPs per training window, counted on the first batch

    def on_train_start(self, trainer, pl_module) -> None:
        self._peak = self._flops = None
        if isinstance(trainer.accelerator, CUDAAccelerator) and hasattr(pl_module, "net_config"):
            self._peak = peak_flops(torch.cuda.get_device_name(pl_module.device), trainer.precision)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._batch_end is not None:
            self._wait += now - self._batch_end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._busy += now - self._start
        self._windows += int(batch["future"].shape[0])
        self._batches += 1
        if self._peak is not None and self._flops is None:
            self._flops = training_flops_per_window(pl_module, tuple(batch["images"].shape[-2:]))  # fake tensors, ~1 s
            now = time.perf_counter()  # not data wait
        self._batch_end = now
        if (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0:
            total = max(self._wait + self._busy, 1e-9)
            rate = self._windows / total
            pl_module.log("perf/windows_per_s_per_rank", rate, prog_bar=True, rank_zero_only=True)
            values = {"perf/data_wait_fraction": self._wait / total, "perf/step_time_s": total / self._batches * trainer.accumulate_grad_batches}
            if self._flops is not None:
                values["perf/mfu"] = mfu(self._flops, rate, self._peak)
            pl_module.log_dict(values, rank_zero_only=True)
            self._wait = self._busy = 0.0
            self._windows = self._batches = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._batch_end = None


class OptimizerStats(pl.Callback):
    """Logs, per optimizer step (written every ``trainer.log_every_n_steps``), ``train/lr`` (the learning
    rate of that step, first parameter group: every group follows the same schedule) and
    ``train/grad_norm`` (the global L2 norm of the gradients before clipping).

    Under DDP or one device the norm is taken over every parameter's gradient before the step (after
    DDP's all-reduce and AMP's unscaling, so the same on every rank). Under DeepSpeed the gradients of
    ZeRO are partitioned off the parameters, so the norm is the engine's own global one
    (``DeepSpeedEngine.get_global_grad_norm``), read after its step; where the engine keeps none (no ZeRO
    and no clipping), the gradients still on the parameters before the step are used."""

    def __init__(self) -> None:
        self._norm: torch.Tensor | None = None  # measured before the step, on the parameters
        self._step = 0  # global_step after the last step logged

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step = trainer.global_step  # a resumed run starts past 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        pl_module.log("train/lr", float(optimizer.param_groups[0]["lr"]), rank_zero_only=True)
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # a tensor, not a float: no device sync here; Lightning reads it on the steps it writes
        self._norm = torch.nn.utils.get_total_norm(grads).detach() if grads else None
        if not isinstance(trainer.strategy, DeepSpeedStrategy) and self._norm is not None:
            pl_module.log("train/grad_norm", self._norm, rank_zero_only=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not isinstance(trainer.strategy, DeepSpeedStrategy) or trainer.global_step == self._step:
            return  # not DeepSpeed, or a micro-batch that took no step (gradient accumulation)
        self._step = trainer.global_step
        engine = trainer.strategy.deepspeed_engine
        norm = engine.get_global_grad_norm() if engine is not None else None
        norm = torch.as_tensor(norm, dtype=torch.float32) if norm is not None else self._norm
        if norm is not None:
            pl_module.log("train/grad_norm", norm, rank_zero_only=True)


class ProgressLines(pl.Callback):
    """One plain line per ``every_n_steps`` steps and per validation (rank 0), for logs and
    terminals where a progress bar is off (batch jobs, ``fsdtrain demo``)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and (batch_idx + 1) % self.every == 0:
            m = trainer.callback_metrics
            rate = m.get("perf/windows_per_s_per_rank")
            extra = f", {float(rate) * trainer.world_size:.1f} windows/s" if rate is not None else ""
            log.info(
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {batch_idx + 1}/{trainer.num_training_batches}"
                f" loss {float(m.get('train/loss', float('nan'))):.3f}{extra}"
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        if trainer.is_global_zero and not trainer.sanity_checking and "val/l2_3s" in m:
            log.info(
                f"epoch {trainer.current_epoch + 1} val l2_3s {float(m['val/l2_3s']):.3f} m"
                f" (constant velocity {float(m['val/l2_3s_constant_velocity']):.3f}, ego MLP {float(m['val/l2_3s_ego_mlp']):.3f})"
            )


def run_metadata(trainer: pl.Trainer, module: pl.LightningModule) -> WeightsMeta:
    """What reviewers and exported weights record about a run: config, data, zones, lineage."""
    dm = trainer.datamodule
    manifests = getattr(dm, "manifests", []) if dm is not None else []
    train_stream = getattr(dm, "train_stream", None)
    zones = {m.zone for m in train_stream.manifests} if train_stream is not None else set()
    countries = {m.country for m in train_stream.manifests} if train_stream is not None else set()
    parent: WeightsMeta | None = getattr(module, "parent_metadata", None)
    if parent is not None:
        zones |= set(parent.zones or [])
        countries |= set(parent.countries_trained or [])
    by_country: dict[str, set[str]] = {}
    for m in train_stream.manifests if train_stream is not None else []:
        by_country.setdefault(m.country, set()).add(m.zone)
    finetune = module.finetune
    per_part = trained_on_zones(list(module.named_parameters()), init_head_from=finetune.init_head_from, zones_by_country=by_country, parent=parent)
    return WeightsMeta.of(
        format=FORMAT,
        net=asdict(module.net_config),
        cameras=module.cameras,
        window=module.window.to_dict(),
        heads=module.net.heads.names,
        trained_heads=module.finetune.train_heads or module.net.heads.names,
        zones=sorted(zones),
        trained_on_zones=per_part,  # backbone and each head: the zones of the data it learned from
        site_zone=getattr(dm, "site_zone", None),
        countries_trained=sorted(countries),
        manifests={m.url: m.digest() for m in manifests},
        git_sha=git_sha(),
        parent=parent.lineage() if parent is not None and parent.to_dict() else None,  # (empty metadata records no lineage)
        artifact=getattr(trainer.logger, "model_artifact", None),  # W&B model artifact of this run (wandb_log.py)
        global_step=trainer.global_step,
    )


class RunInfo(pl.Callback):
    """Puts the resolved config, git SHA, data manifest digests and zones into the logger's run config."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # fit, validate, test
        if trainer.logger is not None:
            meta = run_metadata(trainer, pl_module)
            trainer.logger.log_hyperparams({"config": self.config, "git_sha": meta.git_sha, "manifests": meta.manifests, "zones": meta.zones})


class ExportWeights(pl.Callback):
    """At the end of fit, writes the full model as one safetensors file with run metadata.

    A fine-tune that trained only its ``train_heads`` (everything else frozen, from ``init_from``)
    also writes them as a head-only file beside it (``head-CN.safetensors``, fsdtrain/weights/head_only.py)
    and logs its size against the full weights and the last checkpoint.

    Under ZeRO-3 the parameters are partitioned, so every rank joins the gather; rank 0 writes.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = list(pl_module.parameters())
        if isinstance(trainer.strategy, DeepSpeedStrategy) and trainer.strategy.zero_stage_3:  # partitioned parameters
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        else:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        heads = _head_only_heads(pl_module)
        if trainer.is_global_zero:
            meta = run_metadata(trainer, pl_module).updated(weights=self.path)
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            save_weights(self.path, state, meta)
            if heads:
                self._write_head(trainer, state, meta, heads, pl_module.init_from)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            log.info("weights written to %s", self.path)

    def _write_head(self, trainer: pl.Trainer, state: dict, meta: WeightsMeta, heads: list[str], init_from: str) -> None:
        path = Path(self.path).with_name(head_file_name(heads))
        last = getattr(trainer.checkpoint_callback, "last_model_path", "")
        sizes = {"full_weights_bytes": path_bytes(self.path)}
        if last and os.path.exists(last):
            sizes["checkpoint_bytes"] = path_bytes(last)
        save_head(path, state, meta.updated(weights=str(path), sizes=sizes), heads, backbone_source=init_from)
        head = path_bytes(path)
        of_ckpt = f", {head / sizes['checkpoint_bytes']:.3f} of the checkpoint" if "checkpoint_bytes" in sizes else ""
        log.info(
            f"head-only weights ({','.join(heads)}) written to {path}: {head / 1024:.0f} KiB, "
            f"{head / sizes['full_weights_bytes']:.3f} of {Path(self.path).name}{of_ckpt}"
        )


def _head_only_heads(module: pl.LightningModule) -> list[str]:
    """The heads a head-only file holds: a fine-tune from ``init_from`` in which nothing else trained."""
    heads = list(getattr(getattr(module, "finetune", None), "train_heads", []) or [])
    if not heads or not getattr(module, "init_from", None):
        return []
    return heads if set(module.trainable_parts()) <= set(heads) else []


class ValidationReport(pl.Callback):
    """After every validation (not the sanity check), rank 0 writes its metrics to ``path``: the
    report JSON of docs/report-format.md (per country and overall; model, ego MLP, constant velocity) at full
    precision, plus ``epoch``, ``global_step`` and ``loss``; the same numbers as the logged ``val/*``,
    gathered over all ranks. Each validation replaces the file (written atomically)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = getattr(pl_module, "val_report", None)
        if trainer.is_global_zero and not trainer.sanity_checking and report is not None:
            write_report(report, self.path)
