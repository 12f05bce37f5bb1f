"""The memory layout of the images entering the convolutional encoder, applied to the model from outside.

Convolutions run faster on images stored channels last (NHWC): oneDNN's CPU kernels and the GPUs'
tensor-core kernels both prefer it, and PyTorch picks a convolution's output layout from its input,
so converting the encoder's input once keeps every feature map of the encoder channels last. The
demo model's training step (configs/model/demo_net.yaml, 16 windows, one CPU thread) takes 0.75-0.81x
the time it takes on contiguous images (benchmarks/memory_format.py, docs/model.md).

The layout is applied to the input and not to the weights: DeepSpeed's ZeRO flattens parameters
into one contiguous buffer, which would undo a channels-last weight, while a pre-hook on the input
survives any strategy. The model (``fsdtrain/model``) knows nothing of it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fsdtrain.errors import ConfigError

__all__ = ["MEMORY_FORMATS", "check_memory_format", "apply_memory_format"]

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def check_memory_format(name: str) -> str:
    """``name`` if it is one of :data:`MEMORY_FORMATS`, else a :class:`ConfigError` listing them."""
    if name not in MEMORY_FORMATS:
        raise ConfigError(f"model.memory_format: unknown layout {name!r}; use one of {', '.join(MEMORY_FORMATS)}")
    return name


def apply_memory_format(encoder: nn.Module, name: str) -> RemovableHandle:
    """Makes every 4-d input of ``encoder`` (images [M, 3, H, W]) use the layout ``name``.

    Returns the hook's handle (``.remove()`` restores the module's own behaviour).
    """
    memory_format = MEMORY_FORMATS[check_memory_format(name)]

    def to_layout(module: nn.Module, args: tuple) -> tuple:
        images, *rest = args
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = images.contiguous(memory_format=memory_format)
        return (images, *rest)

    return encoder.register_forward_pre_hook(to_layout)
