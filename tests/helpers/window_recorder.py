"""A test callback that records, per rank, which windows each training step received."""

import json

import lightning.pytorch as pl


class RecordWindows(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        windows = [f"{c}@{int(f)}" for c, f in zip(batch["clip_id"], batch["frame"])]
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch, "windows": windows}) + "\n")


def read_steps(path: str, ranks: int) -> dict[tuple[int, int], set[str]]:
    """(epoch, step) -> the windows of all ranks at that step."""
    steps: dict[tuple[int, int], set[str]] = {}
    for rank in range(ranks):
        with open(f"{path}.rank{rank}.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                steps.setdefault((row["epoch"], row["step"]), set()).update(row["windows"])
    return steps
