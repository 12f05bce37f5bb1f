"""Parameters and FLOPs of ``DrivingTransformer`` per window, counted on fake tensors (no arithmetic).

Used by ``benchmarks/model_flops.py`` (the table in docs/model.md) and by the training's MFU figure
(fsdtrain/train/mfu.py). :func:`count` runs the model once in training mode under
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; matmuls, convolutions and
attention; norms, activations and softmax are not counted), forward and backward, on fake copies of its
parameters and of one window (``FakeTensorMode``: shapes only), so even ConvNeXt-T at 6 cameras x 4
frames x 256x448 costs a second or two. Attention is counted with SDPA's math backend (``torch.bmm``),
because ``FlopCounterMode`` has no formula for the fused CPU kernel and would count it as zero.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import DrivingTransformer, ModelConfig

__all__ = ["ModelInput", "ModelCount", "count", "conv_backward_flop", "FLOP_FORMULAS"]


@dataclass(frozen=True)
class ModelInput:
    """One window as a model config is sized for it.

    Args:
        cameras: cameras per window (``data.cameras``; 6 = the default rig).
        history: frames per camera (``data.window.history``).
        image_size: ``(H, W)`` of each frame (``data.image_size``, or the stored size).
        future_steps: trajectory points per mode (``horizon_s * future_hz``; 3 s at 2 Hz).
        future_dt: seconds between trajectory points.
    """

    cameras: int
    history: int
    image_size: tuple[int, int]
    future_steps: int = WindowSpec().future_steps
    future_dt: float = 1.0 / WindowSpec().future_hz


@dataclass(frozen=True)
class ModelCount:
    """Sizes of one model at one input; FLOPs are per window (batch of one)."""

    params_total: int
    params_backbone: int
    params_encoder: int
    params_per_head: int
    heads: int
    image_tokens: int
    flops_forward: int
    flops_encoder: int
    flops_fusion: int
    flops_heads: int
    flops_train: int


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward's count for each of grad_input and grad_weight.

    Both gradients pair every multiply-add of the forward with one of their own, so each costs what
    the forward did. torch 2.14's own formula equals this for ``groups=1`` but ignores ``groups`` in
    grad_weight, which counts a depthwise conv's (ConvNeXt's 7x7) backward ``channels`` times over.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


#: FlopCounterMode(custom_mapping=...): our formulas in place of torch's.
FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flop}


def count(config: ModelConfig, inputs: ModelInput, *, fake: bool = True) -> ModelCount:
    """Parameters and FLOPs of ``DrivingTransformer(config)`` on one window of ``inputs``.

    The model is built for real on the CPU (timm's constructors compute on their tensors), then run
    in training mode, as a training step would, with fake copies of its parameters and inputs
    (``FakeTensorMode``: shapes, dtypes and the CPU device, no data), so the count costs no
    arithmetic. ``fake=False`` runs the real arithmetic instead.
    """
    torch.manual_seed(0)
    model = DrivingTransformer(
        config,
        cameras=inputs.cameras,
        history=inputs.history,
        future_steps=inputs.future_steps,
        future_dt=inputs.future_dt,
    )
    model.train()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    if fake:
        tensors = {name: mode.from_tensor(t) for name, t in tensors.items()}
    H, W, N, T = *inputs.image_size, inputs.cameras, inputs.history
    with mode, sdpa_kernel([SDPBackend.MATH]):
        images = torch.zeros(1, N, T, 3, H, W, dtype=torch.uint8)  # [B, N, T, 3, H, W]
        ego_hist = torch.zeros(1, T, 6)  # [B, T, 6]
        command = route = torch.zeros(1, dtype=torch.long)  # route 0: the global head
        # pinhole cameras at the ego origin; only read with model.ray_embedding
        intrinsics = torch.tensor([[W / 2, 0.0, W / 2], [0.0, W / 2, H / 2], [0.0, 0.0, 1.0]]).expand(
            1, N, 3, 3
        )
        calib = {"intrinsics": intrinsics, "cam_to_ego": torch.eye(4).expand(1, N, 4, 4)}
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as forward:
            traj, logits = functional_call(model, tensors, (images, ego_hist, command, route), calib)
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as backward:
            (traj.sum() + logits.sum()).backward()
    by_module = {name: sum(ops.values()) for name, ops in forward.get_flop_counts().items()}
    total = forward.get_total_flops()
    encoder, heads = (
        by_module.get("DrivingTransformer.encoder", 0),
        by_module.get("DrivingTransformer.heads", 0),
    )
    params_heads = sum(p.numel() for p in model.heads.parameters())
    return ModelCount(
        params_total=sum(p.numel() for p in model.parameters()),
        params_backbone=sum(p.numel() for p in model.backbone_parameters()),
        params_encoder=sum(p.numel() for p in model.encoder.parameters()),
        params_per_head=params_heads // len(model.heads.names),
        heads=len(model.heads.names),
        image_tokens=N * T * model.encoder.tokens_per_image,
        flops_forward=total,
        flops_encoder=encoder,
        flops_fusion=total - encoder - heads,  # ego/command/ray embeddings + fusion transformer
        flops_heads=heads,
        flops_train=total + backward.get_total_flops(),
    )
