"""A test callback that slows training steps down, so a test can act between two of them."""

import time

import lightning.pytorch as pl


class SlowSteps(pl.Callback):
    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
