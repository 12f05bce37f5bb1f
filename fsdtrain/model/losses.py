"""Winner-takes-all trajectory loss: regress the best mode, classify which mode is best."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossConfig", "wta_loss"]


@dataclass
class LossConfig:
    """Loss weights.

    Args:
        regression: ``l1`` or ``smooth_l1`` on x, y.
        yaw_weight: weight of the yaw error against the x, y error.
        cls_weight: weight of the mode classification loss.
    """

    regression: str = "smooth_l1"
    yaw_weight: float = 1.0
    cls_weight: float = 0.5


def wta_loss(
    traj: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, config: LossConfig, *, reduction: str = "mean"
) -> dict[str, torch.Tensor]:
    """``traj`` [B, K, S, 3], ``logits`` [B, K], ``target`` [B, S, 3] -> loss terms: scalars (batch
    means), or [B] per sample with ``reduction="none"`` (validation averages those over real windows)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    err_xy = (traj[..., :2] - target[:, None, :, :2]).norm(dim=-1).mean(-1)  # [B, K] ADE per mode
    best = err_xy.argmin(dim=1)  # [B]
    chosen = traj[torch.arange(traj.shape[0], device=traj.device), best]  # [B, S, 3]
    if config.regression == "l1":
        reg = F.l1_loss(chosen[..., :2], target[..., :2], reduction="none")
    elif config.regression == "smooth_l1":
        reg = F.smooth_l1_loss(chosen[..., :2], target[..., :2], reduction="none")
    else:
        raise ValueError(f"loss.regression must be 'l1' or 'smooth_l1', got {config.regression!r}")
    reg = reg.mean((1, 2))  # [B]
    yaw = F.l1_loss(chosen[..., 2], target[..., 2], reduction="none").mean(1)  # [B]
    cls = F.cross_entropy(logits, best, reduction="none")  # [B]
    if reduction == "mean":
        reg, yaw, cls = reg.mean(), yaw.mean(), cls.mean()
    total = reg + config.yaw_weight * yaw + config.cls_weight * cls
    return {"loss": total, "reg": reg.detach(), "yaw": yaw.detach(), "cls": cls.detach()}
