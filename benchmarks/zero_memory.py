"""Per-rank parameter + optimizer bytes under DDP and DeepSpeed ZeRO-1/2/3 on 2 CPU ranks (docs/contributing.md).

For each strategy, ``DrivingModule`` (default: configs/model/resnet34_6cam.yaml, the model of
configs/pretrain_global.yaml, 25 M parameters) trains one optimizer step through ``Trainer.fit`` on 2
gloo ranks, on in-memory batches (random windows; small images, since the bytes do not depend on
them). Right after that step every rank measures what it actually holds, from the tensors:

- ``params``: the module's parameters as the rank stores them (ZeRO-1/2: the flat buffer the
  parameters are views of; ZeRO-3: this rank's partitions, plus the small parameters it keeps whole
  below DeepSpeed's ``stage3_param_persistence_threshold``);
- ``optimizer``: the torch optimizer DeepSpeed steps (ZeRO: the fp32 master partition it updates)
  and its state (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``).

Tensors are counted by their storages, each once (a view into a flat buffer counts the buffer once).
Gradients and activations are not counted. The figure is ``ratio`` = ZeRO-3 / DDP of the per-rank
total (the larger of the two ranks), in fp32 as the CPU trains; ``--precision bf16-mixed`` also
measures the GPU's precision (DDP keeps fp32 weights under autocast; DeepSpeed keeps bf16 weights
and an fp32 master copy). The last line printed is one JSON object.

    python benchmarks/zero_memory.py [--model resnet34_6cam] [--precision 32-true [bf16-mixed]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from machine import describe

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(Path(__file__).resolve())
STRATEGIES = ("ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")
GOAL = 0.6
RANKS = 2
HISTORY, IMAGE, BATCH = 4, (64, 128), 1


def held_bytes(trainer, module) -> dict[str, int]:
    """Bytes of parameters and optimizer state this rank holds, each storage counted once."""
    seen: dict[int, tuple[str, int]] = {}

    def add(kind: str, t) -> None:
        if not torch.is_tensor(t) or t.numel() == 0:
            return
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), (kind, storage.nbytes()))

    for p in module.parameters():
        add("params", p.data)  # DDP, ZeRO-1/2 (views of the flat buffer), ZeRO-3 persistent ones; else empty
        add("params", getattr(p, "ds_tensor", None))  # ZeRO-3: this rank's partition
    optimizer = trainer.optimizers[0]
    inner = getattr(optimizer, "optimizer", optimizer)  # a ZeRO optimizer wraps the torch one it steps
    for group in inner.param_groups:
        for p in group["params"]:
            add("optimizer", p)  # ZeRO: the fp32 master partition; DDP: the module's own (counted above)
    for state in inner.state.values():
        for value in state.values():
            add("optimizer", value)
    out = {"params": 0, "optimizer": 0}
    for kind, nbytes in seen.values():
        out[kind] += nbytes
    out["total"] = out["params"] + out["optimizer"]
    out["param_count"] = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
    return out


def run_worker(strategy: str, precision: str, model: str, out: Path) -> None:
    """One rank of one measurement (Lightning starts the second rank by running this script again)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset

    from fsdtrain.format.windows import WindowSpec
    from fsdtrain.model.driving import ModelConfig
    from fsdtrain.train.module import DrivingModule
    from fsdtrain.train.strategies import register_strategies

    class Windows(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            H, W = IMAGE
            return {
                "images": torch.randint(0, 256, (6, HISTORY, 3, H, W), dtype=torch.uint8, generator=g),  # [N, T, 3, H, W]
                "ego_hist": torch.randn(HISTORY, 6, generator=g),
                "command": torch.tensor(i % 3),
                "intrinsics": torch.tensor([[W / 2, 0.0, W / 2], [0.0, W / 2, H / 2], [0.0, 0.0, 1.0]]).expand(6, 3, 3).clone(),
                "cam_to_ego": torch.eye(4).expand(6, 4, 4).clone(),
                "future": torch.randn(WindowSpec().future_steps, 3, generator=g),
                "country": "US",
            }

    class Measure(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 1:  # after the first optimizer step: Adam's state exists
                (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(held_bytes(trainer, pl_module)))

    register_strategies()
    torch.manual_seed(0)
    net = ModelConfig(**yaml.safe_load((REPO / "configs" / "model" / f"{model}.yaml").read_text()))
    module = DrivingModule(net=net, window=WindowSpec(history=HISTORY))
    trainer = pl.Trainer(
        accelerator="cpu", devices=RANKS, strategy=strategy, precision=precision, max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Measure()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(Windows(), batch_size=BATCH))


def measure(strategy: str, precision: str, model: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, SCRIPT, "--worker", strategy, "--precision", precision, "--model", model, "--out", tmp]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{strategy} {precision} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(RANKS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet34_6cam", help="configs/model/NAME.yaml")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"], help="Lightning precisions to measure (the first gives `ratio`)")
    parser.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.precision[0], args.model, Path(args.out))
        return

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    figures: dict[str, dict] = {}
    for precision in args.precision:
        rows = {}
        for strategy in STRATEGIES:
            ranks = measure(strategy, precision, args.model)
            worst = max(ranks, key=lambda r: r["total"])
            rows[strategy] = {"params_mb": round(worst["params"] / 2**20, 2), "optimizer_mb": round(worst["optimizer"] / 2**20, 2),
                              "total_mb": round(worst["total"] / 2**20, 2), "ranks_total_mb": [round(r["total"] / 2**20, 2) for r in ranks]}  # fmt: skip
            print(f"{precision} {strategy}: {json.dumps(rows[strategy])}", flush=True)
        ddp = rows["ddp"]["total_mb"]
        figures[precision] = {
            "per_rank": rows,
            "param_count": ranks[0]["param_count"],
            **{f"{s.replace('deepspeed_stage_', 'zero')}_vs_ddp": round(rows[s]["total_mb"] / ddp, 4) for s in STRATEGIES[1:]},
        }
    first = figures[args.precision[0]]
    result = {
        "ratio": first["zero3_vs_ddp"],
        "goal": GOAL,
        "precision": args.precision[0],
        **({f"ratio_{p}": figures[p]["zero3_vs_ddp"] for p in args.precision[1:]}),
        "model": args.model,
        "ranks": RANKS,
        "figures": figures,
        "seconds": round(time.perf_counter() - t0, 1),
        **describe(load_before=load_before[0]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
