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
``--real`` runs the real arithmetic on the CPU instead; it gives the same counts. The counting itself
lives in fsdtrain/model/flops.py (the training's MFU figure uses it too); this script re-exports it.

Prints a markdown table, then one JSON object as its last line (docs/contributing.md, "Benchmarks").

    python benchmarks/model_flops.py [--out table.md] [--real] [--configs configs/model]
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from machine import cpu_name

from fsdtrain.model.driving import ModelConfig
from fsdtrain.model.flops import FLOP_FORMULAS, ModelCount, ModelInput, conv_backward_flop, count

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

#: YAML stem in configs/model/ -> the window it is sized for (the YAML's header comment says the same).
INPUTS: dict[str, ModelInput] = {
    "demo_net": ModelInput(cameras=1, history=2, image_size=(96, 160)),  # configs/demo.yaml: CAM_FRONT_NARROW, synthetic fleet size
    "tiny": ModelInput(cameras=6, history=2, image_size=(96, 160)),  # CI, synthetic fleet size
    "small": ModelInput(cameras=6, history=2, image_size=(128, 224)),
    "resnet34_6cam": ModelInput(cameras=6, history=4, image_size=(256, 448)),  # configs/pretrain_global.yaml
    "convnext_tiny_6cam4f": ModelInput(cameras=6, history=4, image_size=(256, 448)),
}


def load_config(path: str | Path) -> ModelConfig:
    """A ``configs/model/*.yaml`` fragment -> ``ModelConfig`` (unknown keys fail, as in the CLI)."""
    fields = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of ModelConfig fields, got {type(fields).__name__}")
    try:
        return ModelConfig(**fields)
    except TypeError as err:
        raise ValueError(f"{path}: {err}; keys must be ModelConfig fields") from err


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
