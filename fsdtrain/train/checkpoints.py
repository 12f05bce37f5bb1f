"""Checkpoints: written atomically, with a ``last`` alias and the run's resolved config beside each.

A checkpoint is ``<workdir>/checkpoints/step=N.ckpt``: a directory of DeepSpeed ZeRO shards (one
optimizer shard per rank), or one file under DDP. :class:`FleetCheckpoint` writes it under a hidden
temporary name (``.step=N.ckpt.partial``), adds ``config.yaml`` (the resolved config) and
``fsdtrain.json`` (model config, data shapes, heads, zones and countries trained on, manifest
digests, git SHA, step), then renames it into place: a rename is atomic on POSIX file systems, so
``step=N.ckpt`` is always complete. Only then does the ``last.ckpt`` symlink move to it (replaced
atomically too), and only then are older checkpoints beyond ``keep`` deleted. A crash at any point
leaves the previous checkpoint (or the one just published) loadable as ``last``; leftovers of an
interrupted save are hidden, never resolved as ``last``, and removed when the next run starts.

The folder's names and how a checkpoint is found and read back (without pickle) are
:mod:`fsdtrain.weights.checkpoint_files`. Resuming (``--ckpt_path``) reads every file with
``weights_only=True``, DeepSpeed's shards included (:mod:`fsdtrain.train.safe_resume`).

A checkpoint is never saved with weights that are not finite (:func:`fsdtrain.train.finite.check_finite_weights`),
and a save that fails on the disk (full: ENOSPC) is a one-line :class:`CheckpointWriteError` naming the path;
the previous checkpoint stays ``last``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from fsdtrain.errors import ConfigError, FsdtrainError
from fsdtrain.train.callbacks import run_metadata
from fsdtrain.train.finite import check_finite_weights
from fsdtrain.train.lightning_internals import last_checkpoint_saved, mark_saved, save_as_model_checkpoint
from fsdtrain.weights.checkpoint_files import (
    CONFIG_NAME,
    LAST_NAME,
    META_NAME,
    OLD,
    PARTIAL,
    complete_checkpoints,
    is_leftover,
    remove_path,
    sidecar,
)
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["CheckpointConfig", "CheckpointWriteError", "FleetCheckpoint"]

@dataclass
class CheckpointConfig:
    """Checkpoints in ``<workdir>/checkpoints``; every one can resume the run exactly.

    Args:
        every_n_steps: save every this many optimizer steps; 0 saves at the end of every epoch.
            A checkpoint is always saved when training ends.
        keep: how many of the newest checkpoints to keep (older ones are deleted once a newer one is
            complete and ``last`` points to it); 0 keeps all.
    """

    every_n_steps: int = 0
    keep: int = 2

    def __post_init__(self) -> None:
        if self.every_n_steps < 0:
            raise ConfigError(f"checkpoint.every_n_steps must be >= 0, got {self.every_n_steps}")
        if self.keep < 0:
            raise ConfigError(f"checkpoint.keep must be >= 0 (0 keeps all), got {self.keep}")


def _fsync_tree(path: Path) -> None:
    """Flushes a checkpoint's files to disk before the rename publishes it (power loss, not only crashes)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, final: Path) -> None:
    """Publishes a complete checkpoint under its final name (replacing one of the same name)."""
    _fsync_tree(tmp)
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}{OLD}")
        remove_path(old)
        os.replace(final, old)
        os.replace(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _point(link: Path, target: Path) -> None:
    """Moves the ``last`` symlink to ``target`` atomically (a new link, renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    remove_path(tmp)
    os.symlink(target.name, tmp)  # relative: the checkpoints folder can be moved or copied whole
    if link.is_dir() and not link.is_symlink():  # a full `last.ckpt` from an older fsdtrain
        shutil.rmtree(link)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


class CheckpointWriteError(FsdtrainError):
    """A checkpoint could not be written (disk full, no permission...); the previous one is still ``last``."""


# what torch.save says when its file cannot be written (it raises RuntimeError, not the OSError beneath)
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed")


@contextmanager
def _disk_errors(final: Path) -> Iterator[None]:
    """An OSError (disk full: ENOSPC) while saving ``final`` -> one line naming the path and the reason."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(final) else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = "free space on its disk or lower checkpoint.keep" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
        raise CheckpointWriteError(f"could not save checkpoint {final}{where}: {reason}; {hint}. The previous checkpoint is still `last`") from None
    except RuntimeError as exc:
        if not any(text in str(exc) for text in _TORCH_WRITE_FAILED):
            raise
        raise CheckpointWriteError(
            f"could not save checkpoint {final}: writing its files failed (is the disk full?); free space on its disk or lower "
            "checkpoint.keep. The previous checkpoint is still `last`"
        ) from None


class FleetCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that publishes checkpoints atomically (see the module docstring).

    Overrides Lightning's private ``_save_checkpoint`` and ``_save_last_checkpoint`` and uses more of
    ModelCheckpoint's internals (through helpers): all listed, with why, in
    :mod:`fsdtrain.train.lightning_internals` and checked by tests/test_framework_internals.py.

    Args:
        dirpath: the checkpoints folder.
        every_n_steps: save every this many optimizer steps; 0 saves at the end of every epoch.
        keep: newest checkpoints kept; 0 keeps all.
        config_yaml: the run's resolved config, written as ``config.yaml`` with every checkpoint.
        metadata: ``(trainer, module) -> WeightsMeta`` for ``fsdtrain.json`` (model config, data, zones...),
            plus epoch, step, world size and strategy; None writes only those.
    """

    def __init__(
        self,
        dirpath: str,
        *,
        every_n_steps: int = 0,
        keep: int = 2,
        config_yaml: str | None = None,
        metadata: Callable[[pl.Trainer, pl.LightningModule], WeightsMeta] | None = run_metadata,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="{step}",
            save_last=True,
            save_top_k=-1,  # pruning is ours: after the `last` link has moved
            every_n_train_steps=every_n_steps or None,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.keep = keep
        self.config_yaml = config_yaml
        self.metadata = metadata

    @property
    def _dir(self) -> Path:
        assert self.dirpath is not None
        return Path(self.dirpath)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.last_model_path = str(self._dir / LAST_NAME)
        if trainer.is_global_zero and stage == "fit" and self._dir.is_dir():
            for p in self._dir.iterdir():
                if is_leftover(p):
                    remove_path(p)
        trainer.strategy.barrier()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # a resumed run does not save again the step it resumed from (that would replace `last` itself)
        mark_saved(self, trainer.global_step)

    # The last checkpoint of a run is saved where the loops' and the data's positions are those of any
    # step or epoch checkpoint (at on_train_end, Lightning has already moved the epoch on), so that a
    # run continued with a higher max_steps or max_epochs resumes exactly too.

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 < trainer.max_steps <= trainer.global_step:
            self.save_now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1:
            self.save_now(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training stopped otherwise (early stopping, max_time) after the last save: saves once more."""
        self.save_now(trainer)

    def save_now(self, trainer: pl.Trainer) -> None:
        """Saves a checkpoint of the current step now (every rank calls it: ZeRO shards are collective)."""
        save_as_model_checkpoint(self, trainer)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        final = Path(filepath)
        tmp = final.with_name(f".{final.name}{PARTIAL}")
        check_finite_weights(trainer, trainer.lightning_module, str(final))  # never a checkpoint of NaN weights
        with _disk_errors(final):
            if trainer.is_global_zero:
                remove_path(tmp)
            trainer.strategy.barrier()
            trainer.save_checkpoint(str(tmp), self.save_weights_only)  # every rank writes its shards
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                self._write_run_files(trainer, tmp, final)
                _commit(tmp, final)
        trainer.strategy.barrier()
        mark_saved(self, trainer.global_step, str(final))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _write_run_files(self, trainer: pl.Trainer, tmp: Path, final: Path) -> None:
        meta = self.metadata(trainer, trainer.lightning_module) if self.metadata is not None else WeightsMeta()
        meta = meta.updated(
            epoch=trainer.current_epoch, global_step=trainer.global_step, world_size=trainer.world_size,
            strategy=type(trainer.strategy).__name__,
        )  # fmt: skip
        where = tmp if tmp.is_dir() else final  # a single-file checkpoint gets its files beside the final name
        if self.config_yaml is not None:
            sidecar(where, CONFIG_NAME).write_text(self.config_yaml, encoding="utf-8")
        sidecar(where, META_NAME).write_text(json.dumps(meta.to_dict(), indent=1, sort_keys=True), encoding="utf-8")

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        saved = last_checkpoint_saved(self)
        if not saved:
            return
        link = self._dir / LAST_NAME
        self.last_model_path = str(link)
        if trainer.is_global_zero:
            _point(link, Path(saved))
            self._prune()
        trainer.strategy.barrier()

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        target = Path(os.path.realpath(self._dir / LAST_NAME))
        for path in complete_checkpoints(self._dir)[: -self.keep]:
            if path != target:
                for p in (path, sidecar(path, CONFIG_NAME), sidecar(path, META_NAME)):
                    remove_path(p)


