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

Reading a checkpoint's weights (:func:`read_checkpoint`, for ``fsdtrain export``) never runs
pickled code: files are read with ``torch.load(..., weights_only=True)``; the three DeepSpeed
objects in optimizer shards that are not plain data are read into inert stand-ins, and ZeRO-2/3
shards are consolidated here without importing DeepSpeed. Resuming (``--ckpt_path``) is DeepSpeed's
own loader, which unpickles: resume only from checkpoints your own runs wrote (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from weakref import proxy

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from fsdtrain.errors import ConfigError
from fsdtrain.train.callbacks import run_metadata

__all__ = [
    "CheckpointConfig",
    "FleetCheckpoint",
    "LAST_NAME",
    "CONFIG_NAME",
    "META_NAME",
    "last_checkpoint",
    "check_checkpoint",
    "resolve_checkpoint",
    "read_checkpoint",
    "read_checkpoint_metadata",
]

LAST_NAME = "last.ckpt"
CONFIG_NAME = "config.yaml"
META_NAME = "fsdtrain.json"
_PARTIAL = ".partial"  # .step=N.ckpt.partial: a save in progress (or interrupted)
_OLD = ".old"  # .step=N.ckpt.old: a checkpoint being replaced by one of the same name
_STEP = re.compile(r"^step=(\d+)\.ckpt$")


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


def _sidecar(path: Path, name: str) -> Path:
    """``config.yaml``/``fsdtrain.json`` of a checkpoint: inside a sharded one, beside a single file."""
    return path / name if path.is_dir() else path.with_name(f"{path.name}.{name}")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


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
        old = final.with_name(f".{final.name}{_OLD}")
        _remove(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _point(link: Path, target: Path) -> None:
    """Moves the ``last`` symlink to ``target`` atomically (a new link, renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    _remove(tmp)
    os.symlink(target.name, tmp)  # relative: the checkpoints folder can be moved or copied whole
    if link.is_dir() and not link.is_symlink():  # a full `last.ckpt` from an older fsdtrain
        shutil.rmtree(link)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _complete(dirpath: Path) -> list[Path]:
    """Checkpoints published under their final ``step=N.ckpt`` names, oldest first (by the time their
    save completed: a run started afresh in an old workdir may save lower steps than the old run's)."""
    if not dirpath.is_dir():
        return []
    found = [(p.stat().st_mtime_ns, int(m.group(1)), p) for p in dirpath.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, _, p in sorted(found)]


def _leftover(p: Path) -> bool:
    """What a crash during a save leaves: the unfinished checkpoint, a half-replaced one, a new
    ``last`` link not yet in place, or the run files of a single-file checkpoint never published."""
    if p.name.startswith(".") and p.name.endswith((_PARTIAL, _OLD, ".tmp")):
        return True
    for name in (CONFIG_NAME, META_NAME):
        if p.name.endswith(f".ckpt.{name}") and not p.with_name(p.name[: -len(name) - 1]).exists():
            return True
    return False


def last_checkpoint(dirpath: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``dirpath`` (None when there is none).

    That is where ``last.ckpt`` points, except after a crash between publishing a checkpoint and
    moving the link: then it is the one just published. Unfinished saves are never candidates.
    """
    dirpath = Path(dirpath)
    done = _complete(dirpath)
    if done:
        return done[-1]
    link = dirpath / LAST_NAME
    return Path(os.path.realpath(link)) if link.exists() else None


def check_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a complete checkpoint (a DeepSpeed directory or a Lightning file); else a one-line ConfigError."""
    p = Path(path)
    if p.name.endswith((_PARTIAL, _OLD)):
        raise ConfigError(f"{path} is an unfinished checkpoint (its save was interrupted); use the newest complete one (`--ckpt_path last`; the workdir for `fsdtrain export`)")
    if not p.exists():
        raise ConfigError(f"no checkpoint at {path}")
    if p.is_file():
        return p
    latest = p / "latest"
    if not latest.is_file():
        raise ConfigError(f"{path} is not a complete DeepSpeed checkpoint (no 'latest' file); give a step=N.ckpt folder from <workdir>/checkpoints")
    tag = p / latest.read_text().strip()
    if not any(tag.glob("*_model_states.pt")) or not any(tag.glob("*_optim_states.pt")):
        raise ConfigError(f"{path} is not a complete DeepSpeed checkpoint ({tag.name}/ lacks its model or optimizer shards)")
    return p


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint given as itself, as ``last.ckpt``, as a checkpoints folder or as a run's workdir
    (the last two: their ``last``); one-line ConfigError when there is none or it is incomplete."""
    p = Path(path)
    if p.is_dir() and not p.name.endswith((_PARTIAL, _OLD)) and not _STEP.match(p.name) and not (p / "latest").exists():
        for folder in (p, p / "checkpoints"):
            found = last_checkpoint(folder)
            if found is not None:
                return check_checkpoint(found)
        raise ConfigError(f"no checkpoint in {path} (nor in {p / 'checkpoints'}); give a step=N.ckpt from <workdir>/checkpoints")
    return check_checkpoint(os.path.realpath(p) if p.is_symlink() else p)


class FleetCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that publishes checkpoints atomically (see the module docstring).

    Args:
        dirpath: the checkpoints folder.
        every_n_steps: save every this many optimizer steps; 0 saves at the end of every epoch.
        keep: newest checkpoints kept; 0 keeps all.
        config_yaml: the run's resolved config, written as ``config.yaml`` with every checkpoint.
        metadata: ``(trainer, module) -> dict`` for ``fsdtrain.json`` (model config, data, zones...),
            plus epoch, step and world size; None writes only those.
    """

    def __init__(
        self,
        dirpath: str,
        *,
        every_n_steps: int = 0,
        keep: int = 2,
        config_yaml: str | None = None,
        metadata: Callable[[pl.Trainer, pl.LightningModule], dict] | None = run_metadata,
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
                if _leftover(p):
                    _remove(p)
        trainer.strategy.barrier()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # a resumed run does not save again the step it resumed from (that would replace `last` itself)
        self._last_global_step_saved = trainer.global_step

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
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        final = Path(filepath)
        tmp = final.with_name(f".{final.name}{_PARTIAL}")
        if trainer.is_global_zero:
            _remove(tmp)
        trainer.strategy.barrier()
        trainer.save_checkpoint(str(tmp), self.save_weights_only)  # every rank writes its shards
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self._write_run_files(trainer, tmp, final)
            _commit(tmp, final)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = str(final)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _write_run_files(self, trainer: pl.Trainer, tmp: Path, final: Path) -> None:
        meta = self.metadata(trainer, trainer.lightning_module) if self.metadata is not None else {}
        meta |= {
            "epoch": trainer.current_epoch, "global_step": trainer.global_step, "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
        }  # fmt: skip
        where = tmp if tmp.is_dir() else final  # a single-file checkpoint gets its files beside the final name
        if self.config_yaml is not None:
            _sidecar(where, CONFIG_NAME).write_text(self.config_yaml, encoding="utf-8")
        _sidecar(where, META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not self._last_checkpoint_saved:
            return
        link = self._dir / LAST_NAME
        self.last_model_path = str(link)
        if trainer.is_global_zero:
            _point(link, Path(self._last_checkpoint_saved))
            self._prune()
        trainer.strategy.barrier()

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        target = Path(os.path.realpath(self._dir / LAST_NAME))
        for path in _complete(self._dir)[: -self.keep]:
            if path != target:
                for p in (path, _sidecar(path, CONFIG_NAME), _sidecar(path, META_NAME)):
                    _remove(p)


# --- reading a checkpoint without pickle or DeepSpeed --------------------------------------------


class _Inert:
    """Stands in for a pickled DeepSpeed object that export does not need: holds its state, runs nothing."""

    def __setstate__(self, state) -> None:
        self.state = state


def _enum_value(value):
    return value


# the only non-data objects DeepSpeed pickles into ZeRO shards; anything else is refused
_DEEPSPEED_GLOBALS = [
    (_Inert, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (_Inert, "deepspeed.utils.tensor_fragment.fragment_address"),
    (_enum_value, "deepspeed.runtime.zero.config.ZeroStageEnum"),
]


def _load(path: Path) -> dict:
    try:
        with torch.serialization.safe_globals(_DEEPSPEED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a pickled object: name it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = found.group(1) if found else "an object that is not plain data"
        raise ConfigError(f"{path} holds a pickled {what}; fsdtrain reads checkpoints without unpickling code (docs/checkpoints.md)") from None
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or not a torch file
        text = str(exc).strip()
        raise ConfigError(f"{path}: unreadable checkpoint file ({text.splitlines()[0] if text else type(exc).__name__})") from None


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _zero_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed ZeRO checkpoint, consolidated from every rank's shards."""
    tag = ckpt / (ckpt / "latest").read_text().strip()
    model_files = sorted(tag.glob("*_model_states.pt"), key=_natural)
    optim_files = sorted(tag.glob("*_optim_states.pt"), key=_natural)
    optims = [_load(f)["optimizer_state_dict"] for f in optim_files]
    stage = int(optims[0]["zero_stage"])
    world = optims[0]["partition_count"]
    world = max(world) if isinstance(world, list) else int(world)
    if len(optims) != world:
        raise ConfigError(f"{ckpt} is incomplete: {len(optims)} of its {world} optimizer shards are there")
    models = [_load(f) for f in (model_files if stage == 3 else model_files[:1])]
    first = models[0]
    buffers = set(first["buffer_names"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in first["module"].items() if k in buffers}
    frozen = first.get("frozen_param_shapes") or {}
    if stage <= 2:
        state |= {name: first["frozen_param_fragments"][name] for name in frozen}
        _zero2_params(state, first["param_shapes"], [o["single_partition_of_fp32_groups"] for o in optims], optims[0].get("param_alignment_paddings"), world, ckpt)
    elif stage == 3:
        for name, shape in frozen.items():
            state[name] = torch.cat([m["frozen_param_fragments"][name] for m in models]).narrow(0, 0, shape.numel()).view(shape)
        _zero3_params(state, first["param_shapes"], [torch.cat(list(o["fp32_flat_groups"])) for o in optims], world, ckpt)
    else:
        raise ConfigError(f"{ckpt}: unknown ZeRO stage {stage}")
    for alias, source in first.get("shared_params", {}).items():
        if source in state:
            state[alias] = state[source]
    return {k.removeprefix("_forward_module."): v.clone() for k, v in state.items()}


def _zero2_params(state: dict, param_shapes: list[dict], groups: list[list[torch.Tensor]], paddings, world: int, ckpt: Path) -> None:
    """ZeRO-1/2: each parameter group is one flat fp32 vector, split evenly over ranks."""
    align = 2 * world  # DeepSpeed pads each group's flat vector to a multiple of 2 x world size
    for g, shapes in enumerate(param_shapes):
        flat = torch.cat([rank_groups[g] for rank_groups in groups])
        pads = paddings[g] if paddings is not None else [0] * len(shapes)
        offset = 0
        for (name, shape), pad in zip(shapes.items(), pads):
            n = math.prod(shape)
            state[name] = flat.narrow(0, offset, n).view(shape)
            offset += n + pad
        if align * math.ceil(offset / align) != align * math.ceil(flat.numel() / align):
            raise ConfigError(f"{ckpt}: parameter group {g} holds {flat.numel()} values, its parameters {offset}; the shards do not match the model")


def _zero3_params(state: dict, param_shapes: list[dict], flats: list[torch.Tensor], world: int, ckpt: Path) -> None:
    """ZeRO-3: every parameter is split over the ranks (padded to a multiple of the world size)."""
    offset = 0
    for name, shape in ((n, s) for shapes in param_shapes for n, s in shapes.items()):
        n = math.prod(shape)
        part = math.ceil(n / world)
        state[name] = torch.cat([flat.narrow(0, offset, part) for flat in flats]).narrow(0, 0, n).view(shape)
        offset += part
    if offset != flats[0].numel():
        raise ConfigError(f"{ckpt}: each shard holds {flats[0].numel()} values, the parameters {offset}; the shards do not match the model")


def read_checkpoint_metadata(path: str | os.PathLike) -> tuple[dict, Path]:
    """-> (run metadata with the resolved config under ``config``, the checkpoint path), without
    reading any weights (``fsdtrain export`` checks residency from it first)."""
    ckpt = resolve_checkpoint(path)
    meta_file = _sidecar(ckpt, META_NAME)
    if not meta_file.is_file():
        raise ConfigError(f"{ckpt} has no {META_NAME}: it was not written by `fsdtrain fit` (FleetCheckpoint), so its model config is unknown")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    config_file = _sidecar(ckpt, CONFIG_NAME)
    meta["config"] = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None
    return meta, ckpt


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """-> (fp32 weights, run metadata with the resolved config under ``config``, the checkpoint path).

    ``path`` is a checkpoint, a checkpoints folder or a run's workdir (its ``last``).
    """
    meta, ckpt = read_checkpoint_metadata(path)
    if ckpt.is_dir():
        state = _zero_state(ckpt)
    else:
        state = _load(ckpt).get("state_dict")
        if state is None:
            raise ConfigError(f"{ckpt} holds no state_dict: not a Lightning checkpoint")
        state = {k: v.clone() for k, v in state.items()}
    return state, meta, ckpt
