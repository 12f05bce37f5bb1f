"""A test callback that slows training steps down, so a test can act between two of them."""

import time

import lightning.pytorch as pl


class SlowSteps(pl.Callback):
    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class HoldRankZero(pl.Callback):
    """At ``step``, rank 0 writes ``marker`` and then waits in Python (a signal handler runs at once),
    while the other ranks go on into the step checkpoint's barrier: a test signals rank 0 then."""

    def __init__(self, marker: str, step: int = 3, seconds: float = 120.0) -> None:
        self.marker, self.step, self.seconds = marker, step, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and trainer.global_step == self.step:
            with open(self.marker, "w") as f:
                f.write(str(trainer.global_step))
            time.sleep(self.seconds)
