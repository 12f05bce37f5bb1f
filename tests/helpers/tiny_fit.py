"""A tiny LightningModule (an MLP on fixed random data) trained through a named strategy on CPU ranks.

    python tests/helpers/tiny_fit.py --strategy deepspeed_stage_2 --devices 2 --micro 2 --accumulation 2 --steps 2 --out r.json

Lightning starts the other ranks by running this script again. Each rank trains on its own contiguous
slice of the data, in order, so two runs that see the same windows per optimizer step must end with
the same weights. Rank 0 writes JSON: the batch and clipping settings the DeepSpeed engine actually
runs with (absent for ``ddp``), the optimizer steps, and the final weights.
"""

from __future__ import annotations

import argparse
import json
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fsdtrain.train.strategies import adamw_class, register_strategies

WINDOWS_PER_RANK = 32


class Slice(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class TinyModule(pl.LightningModule):
    def __init__(self, micro: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.micro = micro

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return adamw_class(self.trainer.strategy)(self.parameters(), lr=0.05, weight_decay=0.0)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        world = self.trainer.world_size
        x, y = torch.randn(world * WINDOWS_PER_RANK, 8, generator=g), torch.randn(world * WINDOWS_PER_RANK, 1, generator=g)
        rank = slice(self.global_rank * WINDOWS_PER_RANK, (self.global_rank + 1) * WINDOWS_PER_RANK)
        return DataLoader(Slice(x[rank], y[rank]), batch_size=self.micro, shuffle=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--micro", type=int, required=True)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    register_strategies()
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, max_steps=args.steps, accumulate_grad_batches=args.accumulation,
        gradient_clip_val=args.clip, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
    )  # fmt: skip
    module = TinyModule(args.micro)
    trainer.fit(module)
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            weights = [p.detach().clone() for p in module.parameters()]
    else:
        weights = [p.detach().clone() for p in module.parameters()]
    if trainer.is_global_zero:
        result = {"global_step": trainer.global_step, "weights": torch.cat([w.flatten() for w in weights]).tolist()}
        if engine is not None:
            result |= {
                "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
                "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
                "train_batch_size": engine.train_batch_size(),
                "gradient_clipping": engine.gradient_clipping(),
                "optimizer": type(engine.optimizer.optimizer if hasattr(engine.optimizer, "optimizer") else engine.optimizer).__name__,
            }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    if torch.distributed.is_initialized():  # leave together: a rank exiting with live gloo threads can abort
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
