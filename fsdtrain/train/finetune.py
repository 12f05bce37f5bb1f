"""Country fine-tuning policy: which parameters train, and how new country heads start.

Fine-tuning is the same training loop as pretraining (docs/contributing.md: no second loop); only this policy
differs: ``freeze`` says which modules stay fixed (``backbone``, ``none``, or module-name patterns)
and ``train_heads`` which heads train (the others are frozen). A head that the starting weights lack
is initialized as a copy of another head (``global`` by default, or another country's head), so the
fine-tune starts exactly at that head's predictions and can only move away by learning. Modules whose
parameters are all frozen run in eval mode during training (BatchNorm statistics fixed, no dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import nn

from fsdtrain.errors import ConfigError
from fsdtrain.model.heads import BACKBONE, GLOBAL_HEAD, head_of, in_head, part_of
from fsdtrain.weights.metadata import WeightsMeta

__all__ = [
    "FinetuneConfig",
    "merge_initial_weights",
    "apply_freeze",
    "frozen_modules",
    "trained_on_zones",
]

_FREEZE_WORDS = ("backbone", "none")


@dataclass
class FinetuneConfig:
    """What a fine-tune trains.

    Args:
        train_heads: heads that train (e.g. ``[CN]``); every other head is frozen. Empty: every head
            trains (pretraining).
        init_head_from: head that new heads (absent from ``init_from``) are copied from: ``global``
            or a country's head (e.g. ``DE``).
        freeze: what else stays fixed: ``backbone`` (everything outside the head bank), ``none``, or
            a list of module-name patterns (``fnmatch``, e.g. ``[net.encoder, "net.fusion.layers.0*"]``;
            a pattern matching a module freezes all its parameters). Empty: ``backbone`` when
            ``train_heads`` is set, else ``none``.
    """

    train_heads: list[str] = field(default_factory=list)
    init_head_from: str = "global"
    freeze: str | list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.freeze, str) and self.freeze not in _FREEZE_WORDS:
            raise ConfigError(
                f"model.finetune.freeze: {self.freeze!r} is not one of {', '.join(_FREEZE_WORDS)}; "
                "for module patterns give a list, e.g. [net.encoder]"
            )
        if isinstance(self.freeze, list) and not all(isinstance(p, str) and p for p in self.freeze):
            raise ConfigError(f"model.finetune.freeze: patterns must be non-empty strings, got {self.freeze}")

    @property
    def policy(self) -> str | list[str]:
        """``freeze`` with its default applied."""
        if self.freeze is None or self.freeze == []:
            return BACKBONE if self.train_heads else "none"
        return self.freeze


def merge_initial_weights(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], *, init_head_from: str, source: str) -> dict[str, torch.Tensor]:
    """Weights to start from: ``loaded``, plus new heads copied from ``init_head_from``.

    Raises ConfigError when ``loaded`` does not fit this model (other encoder, width, cameras...).
    """
    merged = {}
    donors = sorted({h for k in loaded if (h := head_of(k))})
    for key, tensor in own.items():
        if key in loaded:
            value = loaded[key]
        else:
            donor = in_head(key, init_head_from)
            if donor is not None and init_head_from not in donors:
                raise ConfigError(
                    f"model.finetune.init_head_from: {source} has no head '{init_head_from}' to start head '{head_of(key)}' from; "
                    f"its heads are {', '.join(donors)}"
                )
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


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` matches the parameter ``name`` or one of the modules holding it."""
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def apply_freeze(module: nn.Module, train_heads: list[str], freeze: str | list[str] | None = None) -> list[str]:
    """Sets ``requires_grad`` from the policy (``freeze`` as in :class:`FinetuneConfig`); returns the trainable names.

    A parameter trains unless ``freeze`` covers it or it belongs to a head outside ``train_heads``.
    """
    policy = FinetuneConfig(train_heads=list(train_heads), freeze=freeze).policy
    names = [n for n, _ in module.named_parameters()]
    if train_heads and not any(head_of(n) in train_heads for n in names):
        raise ConfigError(f"model.finetune.train_heads {train_heads} match no head; add them to model.net.heads")
    if isinstance(policy, list):
        unmatched = [p for p in policy if not any(_matches(n, p) for n in names)]
        if unmatched:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"model.finetune.freeze: {unmatched[0]!r} matches no module; modules are named like {', '.join(tops)}")
    if policy == "none" and not train_heads:
        return names  # pretraining: leave requires_grad as the model set it (e.g. model.net.freeze_bn)
    trainable = []
    for name, p in module.named_parameters():
        head = head_of(name)
        if policy == BACKBONE:
            frozen = head is None
        elif policy == "none":
            frozen = False
        else:
            frozen = any(_matches(name, pat) for pat in policy)
        frozen = frozen or (bool(train_heads) and head is not None and head not in train_heads)
        p.requires_grad_(not frozen)
        if p.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ConfigError(f"model.finetune: freeze {policy!r} with train_heads {train_heads} leaves nothing to train")
    return trainable


def frozen_modules(module: nn.Module) -> list[str]:
    """The outermost submodules whose parameters are all frozen: they run in eval mode while the
    rest trains, so their BatchNorm statistics stay fixed and their dropout is off."""
    out: list[str] = []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(f"{o}.") for o in out):
            continue
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def trained_on_zones(
    parameters: list[tuple[str, nn.Parameter]], *, init_head_from: str, zones_by_country: dict[str, set[str]], parent: WeightsMeta | None
) -> dict[str, list[str]]:
    """Zones of the data each part of the model (``backbone`` and each head) was trained on.

    A part starts with its zones in the starting weights (``parent`` metadata; a new head takes its
    donor head's); a part that trains in this run adds the zones it reads here: the backbone and the
    ``global`` head learn from every window, a country head from its own country's windows.

    Args:
        parameters: the module's named parameters (``requires_grad`` says which train in this run).
        init_head_from: donor of new heads.
        zones_by_country: zones of this run's training data, per country.
        parent: metadata of the starting weights, or None.
    """
    parent = parent or WeightsMeta()
    before: dict[str, list[str]] = dict(parent.trained_on_zones or {})
    if not before and parent.zones:  # weights from before per-part zones: every part had them all
        before = {p: list(parent.zones) for p in {part_of(n) for n, _ in parameters} | {BACKBONE}}
    every = set().union(*zones_by_country.values()) if zones_by_country else set()
    out: dict[str, set[str]] = {}
    for name, p in parameters:
        part = part_of(name)
        zones = out.setdefault(part, set(before.get(part, before.get(init_head_from, [])) if part != BACKBONE else before.get(BACKBONE, [])))
        if p.requires_grad:
            zones |= every if part in (BACKBONE, GLOBAL_HEAD) else zones_by_country.get(part, set())
    return {part: sorted(z) for part, z in sorted(out.items())}
