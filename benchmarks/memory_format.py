"""The encoder's images channels last vs contiguous: training step time of a model config on CPU.

Builds the ``DrivingModule`` of a model config (default: the demo's, configs/model/demo_net.yaml, one
camera x 2 frames at 96x160) once per layout (``model.memory_format``), and times forward + backward
+ AdamW step on random uint8 images, in alternating rounds (benchmarks/rounds.py) on ``--threads``
torch threads. Prints one JSON line: seconds per step of each side (median over rounds) and
``ratio`` = channels_last / contiguous (median, min, max; lower is better).

    python benchmarks/memory_format.py [--config configs/model/demo_net.yaml] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import yaml
from machine import describe
from rounds import alternate, ratio_summary

from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import ModelConfig
from fsdtrain.train.module import DrivingModule

REPO = Path(__file__).resolve().parents[1]


def batch(B: int, cameras: int, window: WindowSpec, size: tuple[int, int]) -> dict:
    """A training batch of random values with the shapes the loader gives (ego in its current frame)."""
    g = torch.Generator().manual_seed(0)
    H, W = size
    K = torch.tensor([[W * 0.6, 0.0, W / 2], [0.0, W * 0.6, H / 2], [0.0, 0.0, 1.0]])
    return {
        "images": torch.randint(0, 256, (B, cameras, window.history, 3, H, W), dtype=torch.uint8, generator=g),
        "ego_hist": torch.randn(B, window.history, 6, generator=g),
        "future": torch.randn(B, window.future_steps, 3, generator=g) * 3,
        "command": torch.zeros(B, dtype=torch.long),
        "country": ["US"] * B,
        "intrinsics": K.expand(B, cameras, 3, 3).clone(),
        "cam_to_ego": torch.eye(4).expand(B, cameras, 4, 4).clone(),
    }


def stepper(memory_format: str, net: dict, cameras: list[str], data: dict, steps: int):
    """A side: ``steps`` training steps of a module built with ``memory_format`` -> seconds per step."""
    torch.manual_seed(0)
    module = DrivingModule(net=ModelConfig(**net), cameras=cameras, window=WindowSpec(), memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def one() -> None:
        losses, *_ = module._losses(data)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: oneDNN picks its kernels
        one()

    def side() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            one()
        return (time.perf_counter() - start) / steps

    return side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/model/demo_net.yaml", help="model config (a model.net YAML)")
    parser.add_argument("--cameras", default="CAM_FRONT_NARROW", help="comma-separated camera names")
    parser.add_argument("--size", default="96x160", help="image HxW")
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument("--steps", type=int, default=5, help="steps per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    net = yaml.safe_load((REPO / args.config).read_text())
    cameras = args.cameras.split(",")
    H, W = (int(v) for v in args.size.split("x"))
    data = batch(args.batch, len(cameras), WindowSpec(), (H, W))
    sides = {name: stepper(name, net, cameras, data, args.steps) for name in ("contiguous", "channels_last")}
    per_round = alternate(sides, args.rounds, log=lambda line: print(line, flush=True))
    print(json.dumps({
        "config": args.config, "size": args.size, "batch": args.batch, "threads": args.threads,
        "s_per_step": {k: round(statistics.median(v), 4) for k, v in per_round.items()},
        "ratio": ratio_summary(per_round["channels_last"], per_round["contiguous"]),
        **describe(load_before=load_before),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
