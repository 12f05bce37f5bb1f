"""Parameters and FLOPs per window of every model config in configs/model/ (docs/model.md).

Each ``configs/model/*.yaml`` is a ``model.net`` fragment (a ``ModelConfig``); the input it is sized
for (cameras, frames, image size) belongs to the data config, so it is kept here in ``INPUTS``, one
row per YAML, and stated in the YAML's header comment for people (a test checks that the two agree
and that every YAML has a row). For each config this builds ``DrivingTransformer`` at that input and
counts, on a batch of one window:

- parameters: total, backbone (encoder + fusion, everything before the head bank), one head;
- FLOPs of the forward pass, split into encoder / fusion / head bank, and of forward + backward
  (one training step without the optimizer; about 3x the forward), with
  ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; matmuls, convolutions and
  attention; norms, activations and softmax are not counted). Its convolution-backward formula is
  replaced by ``conv_backward_flop`` (torch 2.14 over-counts grouped convolutions there).

The count runs on fake tensors by default (``FakeTensorMode``: shapes only, no arithmetic), so even
ConvNeXt-T at 6 cameras x 4 frames x 256x448 takes a second or two. Attention is counted with SDPA's
math backend (``torch.bmm``), because ``FlopCounterMode`` has no formula for the fused CPU kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) and would count attention as zero on CPU.
``--real`` runs the real arithmetic on the CPU instead; it gives the same counts.

Prints a markdown table, then one JSON object as its last line (DESIGN.md §10).

    python benchmarks/model_flops.py [--out table.md] [--real] [--configs configs/model]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from machine import cpu_name
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from fsdtrain.data.windows import WindowSpec
from fsdtrain.model.driving import DrivingTransformer, ModelConfig

__all__ = [
    "INPUTS",
    "ModelInput",
    "ModelCount",
    "load_config",
    "count",
    "conv_backward_flop",
    "FLOP_FORMULAS",
    "markdown_table",
]

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO / "configs" / "model"


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


#: YAML stem in configs/model/ -> the window it is sized for (the YAML's header comment says the same).
INPUTS: dict[str, ModelInput] = {
    "tiny": ModelInput(cameras=6, history=2, image_size=(96, 160)),  # configs/demo.yaml, synthetic fleet size
    "small": ModelInput(cameras=6, history=2, image_size=(128, 224)),
    "resnet34_6cam": ModelInput(cameras=6, history=4, image_size=(256, 448)),  # configs/pretrain_global.yaml
    "convnext_tiny_6cam4f": ModelInput(cameras=6, history=4, image_size=(256, 448)),
}


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


def load_config(path: str | Path) -> ModelConfig:
    """A ``configs/model/*.yaml`` fragment -> ``ModelConfig`` (unknown keys fail, as in the CLI)."""
    fields = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of ModelConfig fields, got {type(fields).__name__}")
    try:
        return ModelConfig(**fields)
    except TypeError as err:
        raise ValueError(f"{path}: {err}; keys must be ModelConfig fields") from err


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
    grad_weight, which counts a depthwise conv's (ConvNeXt's 7x7) backward ``channels`` times over
    (upstream change: pytorch/pytorch#183405).
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


def _m(n: int) -> str:
    return f"{n / 1e6:.3g} M"


def _g(n: int) -> str:
    return f"{n / 1e9:.0f}" if n >= 1e11 else f"{n / 1e9:.3g}"


def markdown_table(rows: dict[str, tuple[ModelConfig, ModelInput, ModelCount]]) -> str:
    """One row per config: what it is, its input, parameters and GFLOPs per window."""
    lines = [
        "| config | encoder | d_model x depth | input per window | image tokens | params | backbone | per head "
        "| GFLOPs fwd | encoder | fusion | heads | GFLOPs fwd+bwd |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (cfg, inp, c) in rows.items():
        H, W = inp.image_size
        lines.append(
            f"| `{name}.yaml` | `{cfg.encoder}` | {cfg.d_model} x {cfg.depth} | {inp.cameras} cam x {inp.history} frames x {H}x{W} "
            f"| {c.image_tokens} | {_m(c.params_total)} | {_m(c.params_backbone)} | {_m(c.params_per_head)} "
            f"| {_g(c.flops_forward)} | {_g(c.flops_encoder)} | {_g(c.flops_fusion)} | {_g(c.flops_heads)} | {_g(c.flops_train)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=str(MODEL_CONFIGS), help="folder of model.net YAML fragments")
    parser.add_argument(
        "--real",
        action="store_true",
        help="run the real arithmetic on the CPU instead of fake tensors (slow, same counts)",
    )
    parser.add_argument("--out", help="also write the markdown table (and the machine line) to this file")
    args = parser.parse_args()

    paths = sorted(Path(args.configs).glob("*.yaml"))
    missing = [p.name for p in paths if p.stem not in INPUTS]
    if missing:
        raise ValueError(
            f"no input size for {', '.join(missing)}: add a row to INPUTS in {Path(__file__).name}"
        )
    paths.sort(key=lambda p: list(INPUTS).index(p.stem))  # smallest first, as INPUTS lists them
    rows = {
        p.stem: (cfg := load_config(p), INPUTS[p.stem], count(cfg, INPUTS[p.stem], fake=not args.real))
        for p in paths
    }
    machine = f"{cpu_name()}, {platform.system()} {platform.machine()}, torch {torch.__version__}, {'real CPU run' if args.real else 'fake tensors'}"
    text = (
        markdown_table(rows)
        + f"\nForward FLOPs per window (batch of 1), fwd+bwd = one training step without the optimizer. {machine}.\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(json.dumps({"machine": machine, "configs": {name: asdict(c) for name, (_, _, c) in rows.items()}}))


if __name__ == "__main__":
    main()
