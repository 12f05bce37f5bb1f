"""Our training step (Lightning + FleetDeepSpeedStrategy ZeRO-2) vs a bare PyTorch loop (docs/contributing.md).

Both sides train the same ``DrivingModule`` (the tiny ``DrivingTransformer`` of configs/model/tiny.yaml
plus the ego-status baseline trained beside it, fp32) on the same CPU, with the same in-memory
batches (random windows of the synthetic fleet's shapes, 6 cameras x 2 frames x 96x160; no loader,
so only the training step is compared), the same AdamW parameter groups, warmup + cosine schedule
and gradient clipping by norm:

- ``ours``: ``Trainer.fit`` with ``strategy="deepspeed_stage_2"`` on 1 CPU rank (gloo; DeepSpeed's
  ZeRO-2 optimizer, its flat buffers and gradient reduction), the ``Throughput`` callback, and
  ``DrivingModule.training_step`` with its logged metrics;
- ``bare``: ``loss = module._losses(batch)["loss"]; loss.backward(); clip_grad_norm_; opt.step();
  sched.step(); opt.zero_grad()``.

Each measurement runs in its own process (so neither inherits the other's threads or allocator
state), with the same number of torch threads; the time of a step is the time between the starts of
two consecutive steps, after ``--warmup`` steps. The sides alternate for ``--rounds`` rounds (bare,
ours; ours, bare; ...) so load from other processes on a shared machine hits both; the figure is the
ratio of the median step times (``ratio_rounds``: the per-round ratios' median, min and max, and
whether that spread leaves the goal undecided, benchmarks/rounds.py; ``ratio_mean``: of the means; ``ratio_cpu``: of the median CPU
seconds per step of the process, which other processes on a shared machine change much less). The
last line printed is one JSON object.

    python benchmarks/step_overhead.py [--steps 20] [--warmup 3] [--batch 4] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from machine import describe
from rounds import alternate, ratio_summary

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "model" / "tiny.yaml"
GOAL = 1.10
CAMERAS, HISTORY, IMAGE = 6, 2, (96, 160)
LR, WEIGHT_DECAY, WARMUP, CLIP = 2e-3, 0.01, 2, 1.0


def _module():
    from fsdtrain.model.driving import ModelConfig
    from fsdtrain.train.module import DrivingModule, OptimConfig

    torch.manual_seed(0)
    return DrivingModule(net=ModelConfig(**yaml.safe_load(TINY.read_text())), optim=OptimConfig(lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=WARMUP))


def _batches(n: int, batch: int) -> list[dict]:
    """``n`` distinct in-memory batches with the loader's keys, shapes and dtypes."""
    from fsdtrain.format.windows import WindowSpec

    g = torch.Generator().manual_seed(1)
    steps = WindowSpec().future_steps
    H, W = IMAGE
    out = []
    for _ in range(n):
        K = torch.tensor([[W / 2, 0.0, W / 2], [0.0, W / 2, H / 2], [0.0, 0.0, 1.0]])
        out.append({
            "images": torch.randint(0, 256, (batch, CAMERAS, HISTORY, 3, H, W), dtype=torch.uint8, generator=g),  # [B, N, T, 3, H, W]
            "ego_hist": torch.randn(batch, HISTORY, 6, generator=g),  # [B, T, 6]
            "command": torch.randint(0, 3, (batch,), generator=g),
            "intrinsics": K.expand(batch, CAMERAS, 3, 3).clone(),
            "cam_to_ego": torch.eye(4).expand(batch, CAMERAS, 4, 4).clone(),
            "future": torch.randn(batch, steps, 3, generator=g),  # [B, S, 3]
            "country": ["US"] * batch,
        })  # fmt: skip
    return out


def _step_times(starts: list[tuple[float, float]], warmup: int) -> dict[str, list[float]]:
    """Wall and CPU seconds between consecutive step starts, after ``warmup`` steps."""
    pairs = list(zip(starts[warmup:], starts[warmup + 1 :]))
    return {"step_times": [b[0] - a[0] for a, b in pairs], "cpu_times": [b[1] - a[1] for a, b in pairs]}


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def run_bare(args) -> dict:
    from fsdtrain.train.optim import param_groups, warmup_cosine_scheduler

    module = _module().train()
    batches = _batches(4, args.batch)
    total = args.warmup + args.steps + 1
    optimizer = torch.optim.AdamW(param_groups(module, WEIGHT_DECAY), lr=LR)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=WARMUP, total_steps=total, min_lr_ratio=0.1)
    params = [p for p in module.parameters() if p.requires_grad]
    starts = []
    for i in range(total):
        starts.append(_now())
        batch = batches[i % len(batches)]
        loss = module._losses(batch)[0]["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    starts.append(_now())
    return {**_step_times(starts, args.warmup), "threads": torch.get_num_threads()}


def run_ours(args) -> dict:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset

    from fsdtrain.train.callbacks import Throughput
    from fsdtrain.train.strategies import register_strategies

    class InMemory(Dataset):
        def __init__(self, batches: list[dict], n: int) -> None:
            self.batches, self.n = batches, n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict:
            return self.batches[i % len(self.batches)]

    class StepStarts(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[tuple[float, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.threads = torch.get_num_threads()
            self.starts.append(_now())

        def on_train_end(self, trainer, pl_module) -> None:
            self.starts.append(_now())

    register_strategies()
    total = args.warmup + args.steps + 1
    timer = StepStarts()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy=args.strategy, precision="32-true", max_steps=total, gradient_clip_val=CLIP,
        log_every_n_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Throughput(), timer],
    )  # fmt: skip
    loader = DataLoader(InMemory(_batches(4, args.batch), total), batch_size=None, shuffle=False)
    trainer.fit(_module(), train_dataloaders=loader)
    assert trainer.global_step == total, trainer.global_step
    return {**_step_times(timer.starts, args.warmup), "threads": timer.threads}


def _worker(side: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--out", str(out), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch", str(args.batch), "--threads", str(args.threads), "--strategy", args.strategy]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}  # before torch starts
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring")
    parser.add_argument("--batch", type=int, default=4, help="windows per step")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (1: two threads on a shared 2-core machine stall whenever a core is busy)")
    parser.add_argument("--strategy", default="deepspeed_stage_2", help="our side's strategy (e.g. auto: Lightning without DeepSpeed)")
    parser.add_argument("--worker", choices=["ours", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        result = run_ours(args) if args.worker == "ours" else run_bare(args)
        Path(args.out).write_text(json.dumps(result))
        return

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    cpu: dict[str, list[float]] = {"bare": [], "ours": []}
    threads = {}

    def side(name: str):
        def run() -> float:
            res = _worker(name, args)
            times[name] += res["step_times"]
            cpu[name] += res["cpu_times"]
            threads[name] = res["threads"]
            return statistics.median(res["step_times"])

        return run

    per_round = alternate({"bare": side("bare"), "ours": side("ours")}, args.rounds, log=lambda line: print(line, flush=True))
    median = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    result = {
        "ratio": round(median["ours"] / median["bare"], 4),
        "goal": GOAL,
        "ratio_rounds": ratio_summary(per_round["ours"], per_round["bare"], goal=GOAL, at_least=False),
        "ratio_mean": round(mean["ours"] / mean["bare"], 4),
        "ratio_cpu": round(statistics.median(cpu["ours"]) / statistics.median(cpu["bare"]), 4),
        "ours_step_ms": round(median["ours"] * 1e3, 2),
        "bare_step_ms": round(median["bare"] * 1e3, 2),
        "steps_per_side": len(times["ours"]),
        "batch": args.batch,
        "input": f"{CAMERAS} cam x {HISTORY} frames x {IMAGE[0]}x{IMAGE[1]}",
        "strategy": f"{args.strategy}, 1 CPU rank, fp32",
        "threads": threads,
        "seconds": round(time.perf_counter() - t0, 1),
        **describe(load_before=load_before[0]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
