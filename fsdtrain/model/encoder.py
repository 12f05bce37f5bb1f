"""Image encoder: any timm model as a feature extractor, pooled to a token grid per image."""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import nn

from fsdtrain.errors import ConfigError

__all__ = ["ImageEncoder", "load_encoder_weights"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# Containers that training scripts commonly wrap a state dict in (timm, torchvision, Lightning).
_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
# Prefixes that wrappers add to parameter names: DDP/DeepSpeed ("module."), timm's FeatureGetterNet ("model.").
_PREFIXES = ("module.", "model.")


class ImageEncoder(nn.Module):
    """uint8 images -> ``d_model`` tokens on a ``grid`` per image.

    Args:
        name: timm model name (``timm.list_models()``), e.g. ``test_resnet``, ``resnet18``, ``convnext_tiny``.
        d_model: token width.
        grid: ``(h, w)`` token grid each feature map is pooled to.
        feature_level: which of the timm model's feature maps to use (``feature_info`` index; -1 is
            the last, stride 32 for ResNets; -2 the one before, stride 16, with twice the rows and
            columns, and the stages after it are not built). Finer maps keep the far road, a few
            rows under the horizon, apart from the near road.
        weights: optional local weights file (safetensors or a weights-only torch file) for the
            timm model; there is no hub access, so the default is random init.
        freeze_bn: replace every BatchNorm of the timm model by a frozen one (timm's
            ``freeze_batch_norm_2d``): running statistics never update and the affine parameters
            become buffers, so they neither train nor depend on the (small, per-GPU) batch.
    """

    def __init__(
        self,
        name: str,
        *,
        d_model: int,
        grid: tuple[int, int],
        feature_level: int = -1,
        weights: str | None = None,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if name not in timm.list_models():
            known = ", ".join(timm.list_models("test_*")[:8])
            raise ConfigError(
                f"model.encoder '{name}' is not a timm model name (e.g. {known}, resnet18, convnext_tiny)"
            )
        try:
            self.backbone = timm.create_model(name, pretrained=False, features_only=True, out_indices=(feature_level,))
        except IndexError:
            raise ConfigError(f"model.feature_level {feature_level} is not a feature map of {name}; use -1 (last), -2, ...") from None
        if weights:
            load_encoder_weights(self.backbone, weights)
        if freeze_bn:  # after loading, so the frozen statistics are the loaded ones
            self.backbone = freeze_batch_norm_2d(self.backbone)
        channels = self.backbone.feature_info.channels()[-1]
        self.grid = tuple(grid)
        self.proj = nn.Linear(channels, d_model)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def tokens_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` uint8 [M, 3, H, W] -> tokens [M, grid_h*grid_w, d_model] (row-major over the grid)."""
        # the buffers' dtype follows the module (fp32, or bf16 when a strategy casts the weights)
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        fmap = self.backbone(x)[-1]  # [M, C, h, w]
        fmap = F.adaptive_avg_pool2d(fmap, self.grid)  # [M, C, gh, gw]
        return self.proj(fmap.flatten(2).transpose(1, 2))  # [M, gh*gw, D]


def load_encoder_weights(model: nn.Module, path: str) -> None:
    """Loads a local weights file into a timm feature extractor.

    The file is a ``.safetensors`` file or a weights-only torch file (``torch.save`` of a state
    dict, possibly under ``state_dict``/``model``); nothing is unpickled. Keys the extractor does
    not have (a classifier, say) are ignored; ``module.``/``model.`` prefixes are matched either way.

    Raises:
        ConfigError: no such file, not a weights file, none of the encoder's names, a name the file
            lacks, or a tensor of another shape (weights of another architecture).
    """
    state = _read_state(Path(path), path)
    own = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _own_name(key, own)
        if name is not None:
            matched[name] = value
    if not matched:
        raise ConfigError(
            f"model.encoder_weights: {path} has none of the encoder's parameter names "
            f"(it has e.g. '{next(iter(state), '')}', the encoder e.g. '{next(iter(own))}'); "
            "save the state_dict of the same timm model"
        )
    for name, value in matched.items():
        if value.shape != own[name].shape:
            raise ConfigError(
                f"model.encoder_weights: {path}: '{name}' has shape {list(value.shape)}, the encoder has "
                f"{list(own[name].shape)}; the file is for another architecture than model.encoder"
            )
    # BatchNorm counters are not weights; checkpoints from other tools often lack them.
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"model.encoder_weights: {path} lacks {len(missing)} of the encoder's tensors (e.g. '{missing[0]}'); "
            "the file is for another architecture than model.encoder"
        )
    model.load_state_dict(matched, strict=False)


def _read_state(p: Path, path: str) -> dict[str, torch.Tensor]:
    if not p.is_file():
        raise ConfigError(f"model.encoder_weights: no file at {path}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except SafetensorError as e:
            raise ConfigError(f"model.encoder_weights: {path} is not a valid safetensors file: {e}") from e
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
    ) as e:  # torch reports non-weights content this way
        raise ConfigError(
            f"model.encoder_weights: {path} is not a weights-only torch file (a state dict of tensors) "
            f"nor .safetensors: {str(e).splitlines()[0]}"
        ) from e
    for key in _STATE_KEYS:  # unwrap a training checkpoint
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ConfigError(f"model.encoder_weights: {path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _own_name(key: str, own: dict[str, torch.Tensor]) -> str | None:
    """The encoder's name for a file's ``key``, trying the wrapper prefixes both ways."""
    if key in own:
        return key
    for prefix in _PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in own:
            return key[len(prefix) :]
        if prefix + key in own:
            return prefix + key
    return None
