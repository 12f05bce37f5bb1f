"""AdamW parameter groups (which weights decay) and the warmup + cosine learning-rate schedule.

Weight decay pulls weights towards zero. That regularises the matrices of linear and convolution
layers, but on a norm's scale and shift, on a bias, or on an embedding table it only fights the
values the layer needs (an embedding row a batch does not use would still shrink), so those get
none, as in GPT-2/nanoGPT, timm and most transformer codebases.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

__all__ = ["no_decay_reason", "decay_split", "param_groups", "warmup_steps_for", "warmup_cosine", "warmup_cosine_scheduler"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
#: parameters that are embedding tables held directly by a module: fusion's ``cam_emb``, ``frame_emb``,
#: ``pos_emb``, a ``*_embed``/``*_embedding`` table, the heads' learned mode ``queries``
_EMBEDDING_NAME = re.compile(r"(^|_)(emb|embed|embedding|embeddings)$|^queries$|^(cls|mask)_token$")


def no_decay_reason(owner: nn.Module, leaf: str, param: torch.Tensor) -> str | None:
    """Why a parameter gets no weight decay (``norm``, ``bias``, ``embedding``, ``scale``), or ``None``.

    Args:
        owner: the module that holds the parameter directly.
        leaf: the parameter's name in ``owner`` (``weight``, ``in_proj_bias``, ``cam_emb``...).
        param: the parameter.
    """
    if isinstance(owner, _NORMS):
        return "norm"
    if leaf.endswith("bias"):
        return "bias"
    if isinstance(owner, _EMBEDDINGS) or _EMBEDDING_NAME.search(leaf):
        return "embedding"
    if param.ndim <= 1:  # per-channel scales of norms timm/others define themselves (LayerScale gamma...)
        return "scale"
    return None


def decay_split(module: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters of ``module`` that decay and that do not, in module order."""
    decay, no_decay = [], []
    for owner_name, owner in module.named_modules():
        for leaf, p in owner.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            name = f"{owner_name}.{leaf}" if owner_name else leaf
            (no_decay if no_decay_reason(owner, leaf, p) else decay).append(name)
    return decay, no_decay


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on the weights of :func:`decay_split`, 0 on the rest;
    empty groups are left out (a frozen backbone can leave one empty)."""
    params = dict(module.named_parameters())
    decay, no_decay = decay_split(module)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def warmup_steps_for(warmup_steps: int, total_steps: int) -> int:
    """The warmup actually used: ``warmup_steps``, but at most a fifth of a short run (at least 1 step
    when there is any warmup), so a few-step test or demo run still reaches the peak rate."""
    return min(warmup_steps, max(1, total_steps // 5))


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear warmup ``1/warmup .. 1`` over the
    first ``warmup`` steps (none for 0), then a half cosine from 1 down to ``min_ratio`` at step ``total``
    (and after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine` as a scheduler stepped once per optimizer step."""
    warmup = warmup_steps_for(warmup_steps, total_steps)

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup=warmup, total=total_steps, min_ratio=min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
