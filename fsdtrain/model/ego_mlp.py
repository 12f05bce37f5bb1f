"""Baselines reported beside the model (docs/model.md): constant velocity, constant turn rate and
acceleration (CTRA) and an ego-status MLP.

The ego-status MLP sees exactly what the model sees except the cameras (ego history + command),
is trained on the same windows in the same run, and has the same head bank and routing, so a
country head is compared with a country head. When the model does not beat it, the model is not
reading the cameras. CTRA is the stronger of the two classic kinematic baselines: it keeps the
current yaw rate and acceleration where constant velocity goes straight at the current speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fsdtrain.model.driving import N_COMMANDS, constant_velocity, kinematic_anchor
from fsdtrain.model.heads import HeadBank

__all__ = ["EgoStatusMLP", "constant_velocity", "ctra"]

_SERIES_BELOW_RAD = 1e-2  # turn angles below this use the Taylor series: the closed form divides by angle^2


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


def ctra(ego_hist: torch.Tensor, future_steps: int, future_dt: float) -> torch.Tensor:
    """Constant turn rate and acceleration: ``ego_hist`` [B, T, 6] -> [B, S, 3] (x, y, yaw).

    From the window's ego history (columns ``t, x, y, yaw, speed, yaw_rate``, in the ego frame of the
    current frame: x forward, y left, yaw 0 now): speed ``v0`` and yaw rate ``w`` of the current
    (last) frame, and acceleration ``a`` from the speeds of the last two history frames (0 with one
    frame: constant turn rate and velocity). The path is integrated in closed form from the origin
    heading along x, so a path of exactly constant turn rate and acceleration comes back exactly
    (float64 inside). Point ``i`` (from 1) is ``i * future_dt`` s ahead. A braking car stops rather
    than reversing: where the speed reaches 0 within the horizon, the path stays at that point.
    """
    h = ego_hist.double()
    v0, w = h[:, -1, 4], h[:, -1, 5]  # [B] m/s, rad/s
    a = torch.zeros_like(v0)
    if h.shape[1] >= 2:
        dt = h[:, -1, 0] - h[:, -2, 0]  # [B] s, > 0 in any window
        a = torch.where(dt > 0, (v0 - h[:, -2, 4]) / torch.where(dt > 0, dt, 1.0), a)
    t = torch.arange(1, future_steps + 1, device=h.device, dtype=h.dtype) * future_dt  # [S]
    stops = v0 * a < 0  # speed heading for 0: v0 + a t = 0 at t = -v0 / a
    t_stop = torch.where(stops, -v0 / torch.where(stops, a, 1.0), math.inf)  # [B]
    tau = torch.minimum(t[None, :], t_stop[:, None])  # [B, S] seconds moved
    theta = w[:, None] * tau  # [B, S] heading change
    small = theta.abs() < _SERIES_BELOW_RAD
    th = torch.where(small, 1.0, theta)  # no division by ~0 in the branch not taken
    sin, cos = torch.sin(th), torch.cos(th)
    q = theta * theta
    # x = v0 tau f1 + a tau^2 f2, y = v0 tau g1 + a tau^2 g2: integrals of (v0 + a s)(cos, sin)(w s) ds
    f1 = torch.where(small, 1 - q / 6 + q * q / 120, sin / th)
    f2 = torch.where(small, 0.5 - q / 8 + q * q / 144, (th * sin + cos - 1) / (th * th))
    g1 = torch.where(small, theta * (0.5 - q / 24 + q * q / 720), (1 - cos) / th)
    g2 = torch.where(small, theta * (1 / 3 - q / 30 + q * q / 840), (sin - th * cos) / (th * th))
    vt, at2 = v0[:, None] * tau, a[:, None] * tau * tau
    yaw = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi  # wrapped to [-pi, pi), as the ground truth
    return torch.stack([vt * f1 + at2 * f2, vt * g1 + at2 * g2, yaw], dim=-1).to(ego_hist.dtype)
