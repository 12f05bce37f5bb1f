"""Trajectory heads and the head bank: one head per country plus ``global`` (docs/model.md)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fsdtrain.errors import ConfigError

__all__ = ["GLOBAL_HEAD", "BACKBONE", "head_of", "part_of", "in_head", "TrajectoryHead", "HeadBank"]

GLOBAL_HEAD = "global"
BACKBONE = "backbone"  # every parameter outside the head bank (and the baseline's shared trunk)
_HEAD_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?heads\.heads\.)(?P<head>[A-Za-z]+)\.(?P<rest>.+)$")


def head_of(name: str) -> str | None:
    """The head a parameter name belongs to, or None for backbone parameters."""
    m = _HEAD_KEY.match(name)
    return m.group("head") if m else None


def part_of(name: str) -> str:
    """The part of the model a parameter belongs to: its head's name, or ``backbone``."""
    return head_of(name) or BACKBONE


def in_head(name: str, head: str) -> str | None:
    """The name of the same parameter in head ``head`` (None for backbone parameters)."""
    m = _HEAD_KEY.match(name)
    return f"{m.group('prefix')}{head}.{m.group('rest')}" if m else None


class TrajectoryHead(nn.Module):
    """K mode queries cross-attend to the fused tokens and decode K trajectories with mode logits.

    Outputs are residuals over a kinematic anchor (see ``DrivingTransformer``), in metres / radians.
    """

    def __init__(self, *, d_model: int, num_heads: int, modes: int, future_steps: int) -> None:
        super().__init__()
        self.modes, self.future_steps = modes, future_steps
        self.queries = nn.Parameter(torch.randn(modes, d_model) * 0.02)
        self.attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, future_steps * 3))
        # no bias: one bias shared by every mode shifts all logits alike, which softmax ignores (a dead
        # parameter); and no layer at all for one mode, whose classification loss is always zero
        self.logit = nn.Linear(d_model, 1, bias=False) if modes > 1 else None
        self.register_load_state_dict_pre_hook(_drop_dead_logit_parameters)

    def forward(self, memory: torch.Tensor, query_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``memory`` [B, L, D], ``query_bias`` [B, D] -> trajectories [B, K, S, 3], logits [B, K]."""
        B = memory.shape[0]
        q = self.queries[None] + query_bias[:, None]  # [B, K, D]
        q = q + self.attn(q, memory, memory, need_weights=False)[0]
        q = self.norm(q)
        traj = self.mlp(q).view(B, self.modes, self.future_steps, 3)
        logits = self.logit(q).squeeze(-1) if self.logit is not None else q.new_zeros(B, 1)  # [B, K]
        return traj, logits


def _drop_dead_logit_parameters(module: TrajectoryHead, state_dict: dict, prefix: str, *_args) -> None:
    """Weight files written before the logit layer lost its bias (and, for one mode, the layer) still
    load: those parameters never changed a prediction (softmax ignores a shift of every logit; one
    mode's logit is never used), so they are dropped, not loaded."""
    dead = ["logit.bias"] + (["logit.weight"] if module.logit is None else [])
    for name in dead:
        state_dict.pop(prefix + name, None)


class HeadBank(nn.Module):
    """Heads keyed by name (``global`` plus ISO country codes); samples are routed per country.

    Every head runs on the whole batch and each sample takes its own head's output by a gather, so
    routing has no Python loop over samples and every head sees a gradient (zero when unused),
    which keeps DDP/DeepSpeed gradient reduction identical on every rank.
    """

    def __init__(self, names: Sequence[str], make_head: Callable[[], nn.Module]) -> None:
        super().__init__()
        names = list(dict.fromkeys(names))
        if GLOBAL_HEAD not in names:
            names.insert(0, GLOBAL_HEAD)
        for n in names:
            if n != GLOBAL_HEAD and not (len(n) == 2 and n.isupper() and n.isalpha()):
                raise ConfigError(f"model.heads: '{n}' is not 'global' or an ISO 3166-1 alpha-2 country code like 'CN'")
        self.names = names
        self.heads = nn.ModuleDict({n: make_head() for n in names})

    def route(self, countries: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Head index per sample: its country's head, or ``global`` for countries without one."""
        index = {n: i for i, n in enumerate(self.names)}
        return torch.tensor([index.get(c, 0) for c in countries], dtype=torch.long, device=device)

    def forward(self, route: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Runs every head on the batch; returns, per output, each sample's own head's value."""
        outs = [self.heads[n](*args) for n in self.names]  # per head: tuple of [B, ...]
        batch = torch.arange(route.shape[0], device=route.device)
        return tuple(torch.stack(o)[route, batch] for o in zip(*outs))

    def run_head(self, name: str, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One named head on the whole batch (e.g. the global head on CN clips, for comparison)."""
        if name not in self.heads:
            raise ConfigError(f"no head '{name}'; this model has {self.names}")
        return self.heads[name](*args)
