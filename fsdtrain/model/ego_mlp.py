"""Baselines reported beside the model (docs/model.md): constant velocity and an ego-status MLP.

The ego-status MLP sees exactly what the model sees except the cameras (ego history + command),
is trained on the same windows in the same run, and has the same head bank and routing, so a
country head is compared with a country head. When the model does not beat it, the model is not
reading the cameras.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fsdtrain.model.driving import N_COMMANDS, constant_velocity, kinematic_anchor
from fsdtrain.model.heads import HeadBank

__all__ = ["EgoStatusMLP", "constant_velocity"]


class _LinearTrajectoryHead(nn.Module):
    def __init__(self, hidden: int, future_steps: int) -> None:
        super().__init__()
        self.future_steps = future_steps
        self.out = nn.Linear(hidden, future_steps * 3)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` [B, hidden] -> one mode: [B, 1, S, 3] and logits [B, 1]."""
        traj = self.out(h).view(h.shape[0], 1, self.future_steps, 3)
        return traj, h.new_zeros(h.shape[0], 1)


class EgoStatusMLP(nn.Module):
    """Ego history + command -> future path, no images."""

    def __init__(self, *, history: int, future_steps: int, future_dt: float, heads: Sequence[str], hidden: int = 256) -> None:
        super().__init__()
        self.future_steps, self.future_dt = future_steps, future_dt
        self.trunk = nn.Sequential(
            nn.Linear(history * 6 + N_COMMANDS, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.heads = HeadBank(heads, lambda: _LinearTrajectoryHead(hidden, future_steps))

    def forward(self, ego_hist: torch.Tensor, command: torch.Tensor, route: torch.Tensor, *, head: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> trajectories [B, 1, S, 3], logits [B, 1]."""
        x = torch.cat([ego_hist.flatten(1), nn.functional.one_hot(command, N_COMMANDS).to(ego_hist.dtype)], dim=1)
        h = self.trunk(x)  # [B, hidden]
        residual, logits = self.heads(route, h) if head is None else self.heads.run_head(head, h)
        anchor = constant_velocity(ego_hist, self.future_steps, self.future_dt)
        return kinematic_anchor(residual, anchor), logits
