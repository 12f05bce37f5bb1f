"""A tiny LightningModule on fixed random data, for tests of the Trainer's plumbing (checkpoints, signals)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader


class Tiny(pl.LightningModule):
    """One Linear layer; ``windows`` fixed samples, micro-batches of 2 (``windows // 2`` steps per epoch)."""

    def __init__(self, windows: int = 16) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.windows = windows

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(self.windows, 4, generator=torch.Generator().manual_seed(0)), batch_size=2)
