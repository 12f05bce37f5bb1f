"""Country fine-tuning policy: which parameters train, and how new country heads start.

Fine-tuning is the same training loop as pretraining (STYLE.md: no second loop); only this policy
differs: the backbone (and every other head) is frozen and the named heads train. A head that the
starting weights lack is initialized as a copy of another head (``global`` by default), so the
fine-tune starts exactly at the global model's predictions and can only move away by learning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from fsdtrain.errors import ConfigError

__all__ = ["FinetuneConfig", "head_of", "merge_initial_weights", "apply_freeze"]

_HEAD_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?heads\.heads\.)(?P<head>[A-Za-z]+)\.(?P<rest>.+)$")


@dataclass
class FinetuneConfig:
    """What a fine-tune trains.

    Args:
        train_heads: heads that train (e.g. ``[CN]``); everything else is frozen. Empty trains all
            parameters (pretraining).
        init_head_from: head that new heads (absent from ``init_from``) are copied from.
    """

    train_heads: list[str] = field(default_factory=list)
    init_head_from: str = "global"


def head_of(name: str) -> str | None:
    """The head a parameter name belongs to, or None for backbone parameters."""
    m = _HEAD_KEY.match(name)
    return m.group("head") if m else None


def merge_initial_weights(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], *, init_head_from: str, source: str) -> dict[str, torch.Tensor]:
    """Weights to start from: ``loaded``, plus new heads copied from ``init_head_from``.

    Raises ConfigError when ``loaded`` does not fit this model (other encoder, width, cameras...).
    """
    merged = {}
    for key, tensor in own.items():
        if key in loaded:
            value = loaded[key]
        else:
            m = _HEAD_KEY.match(key)
            donor = f"{m.group('prefix')}{init_head_from}.{m.group('rest')}" if m else None
            if donor is None or donor not in loaded:
                raise ConfigError(f"{source} lacks parameter '{key}': it was trained with another model config; use the same model.net settings")
            value = loaded[donor]
        if value.shape != tensor.shape:
            raise ConfigError(f"{source}: parameter '{key}' has shape {list(value.shape)}, this model has {list(tensor.shape)}; use the same model.net settings")
        merged[key] = value
    extra = sorted(set(loaded) - set(own))
    if extra:
        raise ConfigError(f"{source} has parameters this model lacks (e.g. '{extra[0]}'); add its heads to model.net.heads")
    return merged


def apply_freeze(module: nn.Module, train_heads: list[str]) -> list[str]:
    """Freezes every parameter outside ``train_heads`` (no-op when empty); returns the trainable names."""
    if not train_heads:
        return [n for n, _ in module.named_parameters()]
    trainable = []
    for name, p in module.named_parameters():
        p.requires_grad_(head_of(name) in train_heads)
        if p.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ConfigError(f"model.finetune.train_heads {train_heads} match no head; add them to model.net.heads")
    return trainable
