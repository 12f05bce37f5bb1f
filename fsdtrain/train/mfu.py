"""Model FLOPs utilisation (MFU): the model FLOP/s a rank achieves over its device's peak.

MFU counts the FLOPs the model needs per training window (forward + backward, from
:func:`fsdtrain.model.flops.count`; recomputation and the optimizer are not model FLOPs), times the
windows per second a rank trains, over the dense peak of its accelerator at the training precision.
Peaks are known for a few NVIDIA GPUs at bf16/fp16 (tensor cores, no sparsity); anywhere else (the
CPU, fp32, an unknown GPU) the peak is unknown and no MFU is logged, rather than a made-up one.
"""

from __future__ import annotations

import dataclasses

import torch

from fsdtrain.model.flops import ModelInput, count

__all__ = ["PEAK_FLOPS_16BIT", "peak_flops", "mfu", "training_flops_per_window"]

#: (substring of ``torch.cuda.get_device_name()``, dense bf16/fp16 tensor-core FLOP/s), from NVIDIA's
#: datasheets (the figures "with sparsity" are twice these). The first match wins, so variants come
#: before the plain name (an H100 SXM reports itself as "NVIDIA H100 80GB HBM3"), and a name that is
#: part of another comes after it ("H20" is in "H200", "L4" in "L40S").
#: The China-market parts are from their NVIDIA datasheets too: H800 SXM as H100 SXM (1979 sparse),
#: H800 PCIe as H100 PCIe (1513 sparse), A800 as A100 (624 sparse), H20 148 (296 sparse), L20 119.5
#: (239 sparse) TFLOPS.
PEAK_FLOPS_16BIT: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4e12),
    ("H200 NVL", 835.5e12),
    ("H200", 989.4e12),
    ("H100 PCIe", 756.5e12),
    ("H100 NVL", 835.5e12),
    ("H100", 989.4e12),
    ("H800 PCIe", 756.5e12),
    ("H800", 989.4e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362.05e12),
    ("L20", 119.5e12),
    ("L4", 121e12),
)
_16BIT_PRECISIONS = ("bf16-mixed", "bf16-true", "16-mixed", "16-true", "bf16", "16")


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device at a Lightning ``precision``, or ``None`` where it is not known."""
    if str(precision) not in _16BIT_PRECISIONS:
        return None
    name = device_name.lower()
    for key, flops in PEAK_FLOPS_16BIT:
        if key.lower() in name:
            return flops
    return None


def mfu(flops_per_window: float, windows_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation of one rank: ``flops_per_window x windows_per_s / peak``."""
    if peak <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak}")
    return flops_per_window * windows_per_s / peak


def training_flops_per_window(module, image_size: tuple[int, int]) -> int:
    """Model FLOPs of one training window of a ``DrivingModule`` at ``image_size`` ``(H, W)``.

    Forward + backward of the whole model when everything trains; with the backbone frozen
    (fine-tuning), the backbone's forward plus the head bank's forward and backward (about twice its
    forward). The ego-status baseline trained beside it is a few MFLOPs and left out.
    """
    window = module.window
    # no weights file to read, and no recomputation: activation checkpointing's extra forward is not a model FLOP
    config = dataclasses.replace(module.net_config, encoder_weights=None, activation_checkpointing=False)
    with torch.random.fork_rng(devices=[]):  # count() seeds the CPU generator: keep the run's own state
        c = count(
            config,
            ModelInput(
                cameras=len(module.cameras),
                history=window.history,
                image_size=(int(image_size[0]), int(image_size[1])),
                future_steps=window.future_steps,
                future_dt=1.0 / window.future_hz,
            ),
        )
    if getattr(module, "backbone_frozen", False):
        return c.flops_forward + 2 * c.flops_heads
    return c.flops_train
