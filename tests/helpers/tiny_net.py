"""The smallest DrivingTransformer settings the model tests build: a timm ``test_resnet`` encoder,
width 32, one fusion layer, a 1x2 token grid, 3 modes. Only fields that every version of
``ModelConfig`` had, so older ``net`` dicts can be made from it too."""

from __future__ import annotations


def tiny_net(**overrides) -> dict:
    """A fresh ``net`` dict (a new ``grid`` list each call), with ``overrides`` applied."""
    return {"encoder": "test_resnet", "d_model": 32, "depth": 1, "num_heads": 2, "grid": [1, 2], "modes": 3, **overrides}
