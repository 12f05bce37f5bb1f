"""``DrivingModule``: the LightningModule that trains the driving model (and its ego-status baseline)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.eval.metrics import METRIC_KEYS, MetricTable, sample_errors, stable_key
from fsdtrain.eval.report import build_report
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.ego_mlp import EgoStatusMLP, ctra
from fsdtrain.model.heads import GLOBAL_HEAD, part_of
from fsdtrain.model.losses import LossConfig, wta_loss
from fsdtrain.train.finetune import FinetuneConfig, apply_freeze, frozen_modules, merge_initial_weights
from fsdtrain.train.memory_format import apply_memory_format, check_memory_format
from fsdtrain.train.optim import param_groups, warmup_cosine_scheduler
from fsdtrain.train.strategies import adamw_class
from fsdtrain.weights.files import load_weights
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["OptimConfig", "DrivingModule"]

_ADE = METRIC_KEYS.index("ade")
# validation rows: [loss, METRIC_KEYS of each predictor]; ids: [window key, clip key, country index, valid]
_VAL_PREDICTORS = ("model", "ego_mlp", "constant_velocity", "ctra")
_WINDOW, _CLIP, _COUNTRY, _VALID = range(4)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, stepped every optimizer step.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decay on weights (not on norms, biases and embeddings: fsdtrain/train/optim.py).
        warmup_steps: optimizer steps of linear warmup (at most a fifth of the run's optimizer steps).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "lr": (self.lr, math.isfinite(self.lr) and self.lr > 0, "a number > 0, e.g. 0.001"),
            "weight_decay": (self.weight_decay, math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            "warmup_steps": (self.warmup_steps, self.warmup_steps >= 0, "an integer >= 0"),
            "min_lr_ratio": (self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1, "a number from 0 to 1"),
        }
        for name, (value, ok, what) in checks.items():
            if not ok:
                raise ConfigError(f"model.optim.{name} must be {what}, got {value!r}")


class DrivingModule(pl.LightningModule):
    """Trains ``DrivingTransformer`` with the winner-takes-all loss, plus the ego-status MLP baseline
    on the same batches (separate parameters, so neither affects the other).

    Args:
        net: the model architecture.
        loss: loss weights.
        optim: optimizer and schedule.
        finetune: freeze policy (empty ``train_heads`` = pretraining, everything trains).
        init_from: weights file (``.safetensors`` from a previous fit) to start from.
        cameras: camera names (linked from ``data.cameras``); empty means the 6 default cameras.
        window: window spec (linked from ``data.window``).
        memory_format: layout of the images entering the convolutional encoder: ``channels_last``
            (faster convolutions on CPUs and on GPUs; fsdtrain/train/memory_format.py) or ``contiguous``.
    """

    def __init__(
        self,
        *,
        net: ModelConfig = ModelConfig(),  # noqa: B008
        loss: LossConfig = LossConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        finetune: FinetuneConfig = FinetuneConfig(),  # noqa: B008
        init_from: str | None = None,
        cameras: list[str] | None = None,
        window: WindowSpec = WindowSpec(),  # noqa: B008
        memory_format: str = "channels_last",
    ) -> None:
        super().__init__()
        self.memory_format = check_memory_format(memory_format)
        cameras = list(cameras or DEFAULT_CAMERAS)
        for h in finetune.train_heads:
            if h not in net.heads:
                net.heads = [*net.heads, h]
        self.net_config, self.loss_config, self.optim_config, self.finetune = net, loss, optim, finetune
        self.cameras, self.window = list(cameras), window
        future_dt = 1.0 / window.future_hz
        self.net = DrivingTransformer(net, cameras=len(cameras), history=window.history, future_steps=window.future_steps, future_dt=future_dt)
        self.baseline = EgoStatusMLP(history=window.history, future_steps=window.future_steps, future_dt=future_dt, heads=self.net.heads.names)
        self.init_from = init_from
        self.parent_metadata: WeightsMeta | None = None  # of the starting weights (init_from)
        if init_from:
            loaded, self.parent_metadata = load_weights(init_from)
            self.load_state_dict(merge_initial_weights(self.state_dict(), loaded, init_head_from=finetune.init_head_from, source=init_from))
        apply_memory_format(self.net.encoder.backbone, memory_format)
        apply_freeze(self, finetune.train_heads, finetune.freeze)
        self.frozen_modules = frozen_modules(self) if finetune.train_heads or finetune.policy != "none" else []
        self.backbone_frozen = not any(p.requires_grad for p in self.net.backbone_parameters())
        # the global head learns from every window (a country head only from its own country's)
        global_trains = any(p.requires_grad for p in self.net.heads.heads[GLOBAL_HEAD].parameters())
        self.global_every_window = global_trains and len(self.net.heads.names) > 1
        self.val_report: dict | None = None  # the last validation's metrics, report format (ValidationReport writes it)

    # --- steps -----------------------------------------------------------------------------------

    def trainable_parts(self) -> list[str]:
        """Parts of the model (``backbone`` and head names) with a parameter that trains in this run."""
        return sorted({part_of(n) for n, p in self.named_parameters() if p.requires_grad})

    def _predict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple | None]:
        """-> routed trajectories, logits, the baseline's trajectories, the route, and the global head's
        (trajectories, logits) on every window when it learns from windows routed to a country head."""
        route = self.net.heads.route(batch["country"], device=self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            fused, ego_token = self.net.encode(
                batch["images"],
                batch["ego_hist"],
                batch["command"],
                intrinsics=batch["intrinsics"],
                cam_to_ego=batch["cam_to_ego"],
            )
        traj, logits = self.net.decode(fused, ego_token, batch["ego_hist"], route)
        every = self.net.decode(fused, ego_token, batch["ego_hist"], route, head=GLOBAL_HEAD) if self.global_every_window else None
        base_traj, _ = self.baseline(batch["ego_hist"], batch["command"], route)
        return traj, logits, base_traj, route, every

    def _losses(self, batch: dict, *, reduction: str = "mean") -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss terms (batch means, or [B] per sample with ``reduction="none"``) and the predictions."""
        traj, logits, base_traj, route, every = self._predict(batch)
        target = batch["future"]
        losses = wta_loss(traj, logits, target, self.loss_config, reduction=reduction)
        if every is not None:  # + the global head on windows routed to a country head (same graph on every rank)
            own = route != self.net.heads.names.index(GLOBAL_HEAD)  # [B] windows routed to a country head
            extra = wta_loss(*every, target, self.loss_config, reduction="none")["loss"] * own  # [B]
            losses["global_extra"] = extra.detach().mean() if reduction == "mean" else extra.detach()
            losses["loss"] = losses["loss"] + (extra.mean() if reduction == "mean" else extra)
        base_xy = F.smooth_l1_loss(base_traj[:, 0, :, :2], target[..., :2], reduction="none").mean((1, 2))  # [B]
        base = base_xy + self.loss_config.yaw_weight * F.l1_loss(base_traj[:, 0, :, 2], target[..., 2], reduction="none").mean(1)
        base = base.mean() if reduction == "mean" else base
        losses["ego_mlp"] = base.detach()
        losses["loss"] = losses["loss"] + base
        return losses, traj, logits, base_traj

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        for name in self.frozen_modules:  # frozen BatchNorm statistics and no dropout where nothing trains
            self.get_submodule(name).eval()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, traj, logits, _ = self._losses(batch)
        B = batch["future"].shape[0]
        err = sample_errors(traj.detach(), logits.detach(), batch["future"], self.window.future_hz)
        self.log("train/loss", losses["loss"].detach(), batch_size=B, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=B)
        self.log("train/ade", float(err[:, _ADE].mean()), batch_size=B)
        return losses["loss"]

    # --- validation --------------------------------------------------------------------------------
    # Every rank keeps per-window rows; at the epoch's end they are gathered, the padding the val
    # stream adds to equalize batch counts (``valid`` False) is dropped, and rows are sorted by a
    # per-window key, so every metric is the same on any number of ranks and loader workers.

    def on_validation_epoch_start(self) -> None:
        stream = getattr(self.trainer.datamodule, "val_stream", None)
        if stream is None:
            raise RuntimeError("DrivingModule validates on FleetDataModule's val_stream (its countries index the gathered rows)")
        self._val_data = [m.url for m in stream.manifests]
        self._val_countries = sorted({m.country for m in stream.manifests})
        self._val_rows: list[np.ndarray] = []
        self._val_ids: list[np.ndarray] = []
        self.val_report: dict | None = None

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        losses, traj, logits, base_traj = self._losses(batch, reduction="none")
        hz = self.window.future_hz
        target = batch["future"]
        cv = constant_velocity(batch["ego_hist"], self.window.future_steps, 1.0 / hz)[:, None]
        turn = ctra(batch["ego_hist"], self.window.future_steps, 1.0 / hz)[:, None]
        rows = [
            losses["loss"].detach().double().cpu().numpy()[:, None],
            sample_errors(traj, logits, target, hz),
            sample_errors(base_traj, torch.zeros_like(base_traj[:, :, 0, 0]), target, hz),
            sample_errors(cv, torch.zeros_like(cv[:, :, 0, 0]), target, hz),
            sample_errors(turn, torch.zeros_like(turn[:, :, 0, 0]), target, hz),
        ]  # in _VAL_PREDICTORS order after the loss
        self._val_rows.append(np.concatenate(rows, axis=1))  # [B, 1 + len(_VAL_PREDICTORS) * len(METRIC_KEYS)]
        index = {c: i for i, c in enumerate(self._val_countries)}
        ids = []
        for clip, frame, country, valid in zip(batch["clip_id"], batch["frame"].tolist(), batch["country"], batch["valid"].tolist()):
            if country not in index:
                raise DataError(f"clip {clip} has country {country!r}, not one of its val manifests' {self._val_countries}")
            ids.append((stable_key(f"{clip}@{frame}"), stable_key(clip), index[country], int(valid)))
        self._val_ids.append(np.array(ids, dtype=np.int64).reshape(-1, 4))  # [B, 4]
        return {"traj": traj.detach(), "logits": logits.detach()}  # for callbacks that draw predictions (W&B images)

    def on_validation_epoch_end(self) -> None:
        rows, ids = self._val_rows, self._val_ids
        self._val_rows, self._val_ids = [], []
        if not rows:  # no validation batch (limit_val_batches=0); every rank has as many batches
            return
        # equal batch counts and full batches on every rank: the shapes match, as all_gather needs
        with warnings.catch_warnings():  # Lightning's all_gather uses a deprecated torch function
            warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
            rows = self.all_gather(torch.from_numpy(np.concatenate(rows)))  # [world, N, C] ([N, C] on 1 rank)
            ids = self.all_gather(torch.from_numpy(np.concatenate(ids)))
        rows = rows.reshape(-1, rows.shape[-1]).cpu().numpy()
        ids = ids.reshape(-1, ids.shape[-1]).cpu().numpy()
        keep = ids[:, _VALID] == 1
        order = np.argsort(ids[keep, _WINDOW], kind="stable")  # the summation order of every rank count
        rows, ids = rows[keep][order], ids[keep][order]
        if not len(rows):
            return
        table, clips = MetricTable(), defaultdict(set)
        countries = [self._val_countries[i] for i in ids[:, _COUNTRY]]
        M = len(METRIC_KEYS)
        for j, predictor in enumerate(_VAL_PREDICTORS):
            table.add(countries, predictor, rows[:, 1 + j * M : 1 + (j + 1) * M])
        for country, clip in zip(countries, ids[:, _CLIP].tolist()):
            clips[country].add(clip)
        values = {"val/loss": float(rows[:, 0].mean())}
        values |= {f"val/{k}": v for k, v in table.summary(None, "model", digits=None).items() if v is not None}
        for predictor in _VAL_PREDICTORS[1:]:
            l2_3s = table.summary(None, predictor, digits=None)["l2_3s"]
            if l2_3s is not None:
                values[f"val/l2_3s_{predictor}"] = l2_3s
        for country in table.countries():
            values |= {f"val/{country}/{k}": v for k, v in table.summary(country, "model", digits=None).items() if v is not None}
        # every rank holds the same values: ``max`` keeps them bit-exact (a mean over ranks may round)
        self.log_dict(values, sync_dist=True, reduce_fx="max")
        validating = self.trainer.state.fn == TrainerFn.VALIDATING
        checkpoint = str(self.trainer.ckpt_path or self.init_from or "") if validating else ""
        report = build_report(table, clips, checkpoint=checkpoint, data=self._val_data, digits=None)
        self.val_report = {**report, "epoch": self.trainer.current_epoch, "global_step": self.trainer.global_step, "loss": values["val/loss"]}

    # --- optimizer -------------------------------------------------------------------------------

    def configure_optimizers(self):
        # decay groups and schedule: fsdtrain/train/optim.py; the AdamW class suits the strategy (DeepSpeed's
        # CPU Adam under ZeRO optimizer offload); clipping by norm is trainer.gradient_clip_val (the strategy's)
        cfg = self.optim_config
        optimizer = adamw_class(self.trainer.strategy)(param_groups(self, cfg.weight_decay), lr=cfg.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))  # optimizer steps of the run
        scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=cfg.warmup_steps, total_steps=total, min_lr_ratio=cfg.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
