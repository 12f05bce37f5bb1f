"""Image encoder: any timm model as a feature extractor, pooled to a token grid per image."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from fsdtrain.errors import ConfigError

__all__ = ["ImageEncoder"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """uint8 images -> ``d_model`` tokens on a ``grid`` per image.

    Args:
        name: timm model name (``timm.list_models()``), e.g. ``test_resnet``, ``resnet18``, ``convnext_tiny``.
        d_model: token width.
        grid: ``(h, w)`` token grid each feature map is pooled to.
        weights: optional local weights file (safetensors or a weights-only torch file) for the
            timm model; there is no hub access, so the default is random init.
    """

    def __init__(self, name: str, *, d_model: int, grid: tuple[int, int], weights: str | None = None) -> None:
        super().__init__()
        if name not in timm.list_models():
            known = ", ".join(timm.list_models("test_*")[:8])
            raise ConfigError(f"model.encoder '{name}' is not a timm model name (e.g. {known}, resnet18, convnext_tiny)")
        self.backbone = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,))
        if weights:
            _load_weights(self.backbone, weights)
        channels = self.backbone.feature_info.channels()[-1]
        self.grid = tuple(grid)
        self.proj = nn.Linear(channels, d_model)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def tokens_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` uint8 [M, 3, H, W] -> tokens [M, grid_h*grid_w, d_model]."""
        x = (images.float() - self.mean) / self.std
        fmap = self.backbone(x)[-1]  # [M, C, h, w]
        fmap = F.adaptive_avg_pool2d(fmap, self.grid)  # [M, C, gh, gw]
        return self.proj(fmap.flatten(2).transpose(1, 2))  # [M, gh*gw, D]


def _load_weights(model: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.encoder_weights: no file at {path}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(missing) == len(model.state_dict()):
        raise ConfigError(f"model.encoder_weights: {path} has none of the encoder's parameter names")
