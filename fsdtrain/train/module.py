"""``DrivingModule``: the LightningModule that trains the driving model (and its ego-status baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from fsdtrain.data.schema import DEFAULT_CAMERAS
from fsdtrain.data.windows import WindowSpec
from fsdtrain.eval.baselines import EgoStatusMLP
from fsdtrain.eval.metrics import METRIC_KEYS, sample_errors
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.losses import LossConfig, wta_loss
from fsdtrain.train.export import load_weights
from fsdtrain.train.finetune import FinetuneConfig, apply_freeze, merge_initial_weights

__all__ = ["OptimConfig", "DrivingModule"]

_L2_3S = METRIC_KEYS.index("l2_3s")
_ADE = METRIC_KEYS.index("ade")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, stepped every optimizer step.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decay on weights (not on norms, biases and embeddings).
        warmup_steps: optimizer steps of linear warmup.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1


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
    ) -> None:
        super().__init__()
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
        self.parent_metadata: dict | None = None
        if init_from:
            loaded, self.parent_metadata = load_weights(init_from)
            self.load_state_dict(merge_initial_weights(self.state_dict(), loaded, init_head_from=finetune.init_head_from, source=init_from))
        apply_freeze(self, finetune.train_heads)
        self.backbone_frozen = bool(finetune.train_heads)

    # --- steps -----------------------------------------------------------------------------------

    def _predict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        route = self.net.heads.route(batch["country"], device=self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            fused, ego_token = self.net.encode(batch["images"], batch["ego_hist"], batch["command"])
        traj, logits = self.net.decode(fused, ego_token, batch["ego_hist"], route)
        base_traj, _ = self.baseline(batch["ego_hist"], batch["command"], route)
        return traj, logits, base_traj, route

    def _losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        traj, logits, base_traj, _ = self._predict(batch)
        target = batch["future"]
        losses = wta_loss(traj, logits, target, self.loss_config)
        base = F.smooth_l1_loss(base_traj[:, 0, :, :2], target[..., :2]) + self.loss_config.yaw_weight * F.l1_loss(base_traj[:, 0, :, 2], target[..., 2])
        losses["ego_mlp"] = base.detach()
        losses["loss"] = losses["loss"] + base
        return losses, traj, logits, base_traj

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.backbone_frozen:  # frozen BatchNorm statistics and no dropout in the backbone
            self.net.encoder.eval()
            self.net.fusion.eval()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, traj, logits, _ = self._losses(batch)
        B = batch["future"].shape[0]
        err = sample_errors(traj.detach(), logits.detach(), batch["future"], self.window.future_hz)
        self.log("train/loss", losses["loss"].detach(), batch_size=B, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=B)
        self.log("train/ade", float(err[:, _ADE].mean()), batch_size=B)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses, traj, logits, base_traj = self._losses(batch)
        B = batch["future"].shape[0]
        hz = self.window.future_hz
        target = batch["future"]
        model_err = sample_errors(traj, logits, target, hz)
        base_err = sample_errors(base_traj, torch.zeros_like(base_traj[:, :, 0, 0]), target, hz)
        cv = constant_velocity(batch["ego_hist"], self.window.future_steps, 1.0 / hz)[:, None]
        cv_err = sample_errors(cv, torch.zeros_like(cv[:, :, 0, 0]), target, hz)
        values = {"val/loss": losses["loss"], "val/ade": model_err[:, _ADE].mean()}
        if not math.isnan(model_err[0, _L2_3S]):
            values |= {
                "val/l2_3s": model_err[:, _L2_3S].mean(),
                "val/l2_3s_ego_mlp": base_err[:, _L2_3S].mean(),
                "val/l2_3s_constant_velocity": cv_err[:, _L2_3S].mean(),
            }
        self.log_dict({k: float(v) for k, v in values.items()}, batch_size=B, sync_dist=True, prog_bar=False)

    # --- optimizer -------------------------------------------------------------------------------

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "emb" in name or name.endswith("queries") else decay).append(p)
        groups = [g for g in ({"params": decay, "weight_decay": self.optim_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.optim_config.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.optim_config.warmup_steps, max(1, total // 5))
        floor = self.optim_config.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
