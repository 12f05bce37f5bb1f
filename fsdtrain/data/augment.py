"""Training augmentations, applied in the loader worker and deterministic per window.

The random draws of a window come from ``(seed, epoch, clip_id, current frame)`` alone, so a window
gets the same augmentation whatever rank or worker cuts it, and a resumed run repeats it exactly.
All frames of one camera in a window share their colour parameters (the model sees a camera whose
exposure changed, not flicker).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fsdtrain.data.order import hash_seed
from fsdtrain.errors import ConfigError

__all__ = ["Augment"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601


@dataclass(frozen=True)
class Augment:
    """What to vary per window (all off by default).

    Args:
        color_jitter: strength ``s`` of brightness, contrast and saturation jitter: each camera's
            factors are drawn from ``[1 - s, 1 + s]``. 0 disables it.
        camera_dropout: probability that a camera is blacked out for the whole window (at least one
            camera always stays). 0 disables it.
    """

    color_jitter: float = 0.0
    camera_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.color_jitter < 1.0:
            raise ConfigError(f"data.augment.color_jitter must be in [0, 1), got {self.color_jitter}")
        if not 0.0 <= self.camera_dropout < 1.0:
            raise ConfigError(f"data.augment.camera_dropout must be in [0, 1), got {self.camera_dropout}")

    @property
    def enabled(self) -> bool:
        return self.color_jitter > 0 or self.camera_dropout > 0

    def rng(self, seed: int, epoch: int, clip_id: str, current: int) -> np.random.Generator:
        return np.random.default_rng(hash_seed(seed, epoch, "augment", clip_id, current))

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``images`` uint8 [N_cam, T, 3, H, W] -> augmented copy, same shape and dtype."""
        if not self.enabled:
            return images
        n_cam = images.shape[0]
        out = images
        if self.color_jitter > 0:
            s = self.color_jitter
            factors = rng.uniform(1 - s, 1 + s, size=(n_cam, 3)).astype(
                np.float32
            )  # brightness, contrast, saturation
            x = images.astype(np.float32)  # [N, T, 3, H, W]
            x *= factors[:, 0, None, None, None, None]
            gray = np.einsum("ntchw,c->nthw", x, _LUMA)[:, :, None]  # [N, T, 1, H, W]
            mean = gray.mean(axis=(1, 2, 3, 4), keepdims=True)  # [N, 1, 1, 1, 1]
            x = (x - mean) * factors[:, 1, None, None, None, None] + mean
            gray = np.einsum("ntchw,c->nthw", x, _LUMA)[:, :, None]
            x = (x - gray) * factors[:, 2, None, None, None, None] + gray
            out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if self.camera_dropout > 0:
            drop = rng.random(n_cam) < self.camera_dropout
            if drop.all():
                drop[rng.integers(n_cam)] = False
            if drop.any():
                out = out.copy() if out is images else out
                out[drop] = 0
        return out
