"""The checkpoint folder: names, completeness, ``last``, and reading weights without pickle or DeepSpeed.

A checkpoint is ``<workdir>/checkpoints/step=N.ckpt``: a directory of DeepSpeed ZeRO shards (one
optimizer shard per rank), or one file under DDP, with ``config.yaml`` (the run's resolved config)
and ``fsdtrain.json`` (run metadata) inside or beside it. It is written under a hidden temporary
name and renamed into place (:class:`fsdtrain.train.checkpoints.FleetCheckpoint`), then ``last.ckpt``
moves to it; leftovers of an interrupted save are hidden and never resolved as ``last``.

Reading a checkpoint's weights (:func:`read_checkpoint`, for ``fsdtrain export``) never runs
pickled code: files are read with ``torch.load(..., weights_only=True)``; the three DeepSpeed
objects in optimizer shards that are not plain data are read into inert stand-ins, and ZeRO-2/3
shards are consolidated here without importing DeepSpeed (docs/checkpoints.md). Every DeepSpeed file
name, key and pickled class read here is in :mod:`fsdtrain.weights.deepspeed_keys` (checked against
the installed DeepSpeed by tests/test_framework_internals.py).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
import yaml

from fsdtrain.errors import ConfigError
from fsdtrain.weights import deepspeed_keys as ds
from fsdtrain.weights.metadata import WeightsMeta

__all__ = [
    "LAST_NAME",
    "CONFIG_NAME",
    "META_NAME",
    "sidecar",
    "remove_path",
    "complete_checkpoints",
    "is_leftover",
    "last_checkpoint",
    "check_checkpoint",
    "resolve_checkpoint",
    "read_checkpoint",
    "read_checkpoint_metadata",
    "load_torch_file",
    "checkpoint_files",
]

LAST_NAME = "last.ckpt"
CONFIG_NAME = "config.yaml"
META_NAME = "fsdtrain.json"
PARTIAL = ".partial"  # .step=N.ckpt.partial: a save in progress (or interrupted)
OLD = ".old"  # .step=N.ckpt.old: a checkpoint being replaced by one of the same name
_STEP = re.compile(r"^step=(\d+)\.ckpt$")


def sidecar(path: Path, name: str) -> Path:
    """``config.yaml``/``fsdtrain.json`` of a checkpoint: inside a sharded one, beside a single file."""
    return path / name if path.is_dir() else path.with_name(f"{path.name}.{name}")


def remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def complete_checkpoints(dirpath: Path) -> list[Path]:
    """Checkpoints published under their final ``step=N.ckpt`` names, oldest first (by the time their
    save completed: a run started afresh in an old workdir may save lower steps than the old run's)."""
    if not dirpath.is_dir():
        return []
    found = [(p.stat().st_mtime_ns, int(m.group(1)), p) for p in dirpath.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, _, p in sorted(found)]


def is_leftover(p: Path) -> bool:
    """What a crash during a save leaves: the unfinished checkpoint, a half-replaced one, a new
    ``last`` link not yet in place, or the run files of a single-file checkpoint never published."""
    if p.name.startswith(".") and p.name.endswith((PARTIAL, OLD, ".tmp")):
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
    done = complete_checkpoints(dirpath)
    if done:
        return done[-1]
    link = dirpath / LAST_NAME
    return Path(os.path.realpath(link)) if link.exists() else None


def check_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a complete checkpoint (a DeepSpeed directory or a Lightning file); else a one-line ConfigError."""
    p = Path(path)
    if p.name.endswith((PARTIAL, OLD)):
        raise ConfigError(f"{path} is an unfinished checkpoint (its save was interrupted); use the newest complete one (`--ckpt_path last`; the workdir for `fsdtrain export`)")
    if not p.exists():
        raise ConfigError(f"no checkpoint at {path}")
    if p.is_file():
        return p
    latest = p / ds.LATEST_FILE
    if not latest.is_file():
        raise ConfigError(f"{path} is not a complete DeepSpeed checkpoint (no 'latest' file); give a step=N.ckpt folder from <workdir>/checkpoints")
    tag = p / latest.read_text().strip()
    if not any(tag.glob(f"*{ds.MODEL_STATES_SUFFIX}")) or not any(tag.glob(f"*{ds.OPTIM_STATES_SUFFIX}")):
        raise ConfigError(f"{path} is not a complete DeepSpeed checkpoint ({tag.name}/ lacks its model or optimizer shards)")
    return p


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint given as itself, as ``last.ckpt``, as a checkpoints folder or as a run's workdir
    (the last two: their ``last``); one-line ConfigError when there is none or it is incomplete."""
    p = Path(path)
    if p.is_dir() and not p.name.endswith((PARTIAL, OLD)) and not _STEP.match(p.name) and not (p / ds.LATEST_FILE).exists():
        for folder in (p, p / "checkpoints"):
            found = last_checkpoint(folder)
            if found is not None:
                return check_checkpoint(found)
        raise ConfigError(f"no checkpoint in {path} (nor in {p / 'checkpoints'}); give a step=N.ckpt from <workdir>/checkpoints")
    return check_checkpoint(os.path.realpath(p) if p.is_symlink() else p)


# --- reading a checkpoint without pickle or DeepSpeed --------------------------------------------


class _Inert:
    """Stands in for a pickled DeepSpeed object that export does not need: holds its state, runs nothing."""

    def __setstate__(self, state) -> None:
        self.state = state


def _enum_value(value):
    return value


# the only non-data objects DeepSpeed pickles into ZeRO shards; anything else is refused
_DEEPSPEED_GLOBALS = [
    (_Inert, ds.LOSS_SCALER_CLASS),
    (_Inert, ds.DYNAMIC_LOSS_SCALER_CLASS),
    (_Inert, ds.FRAGMENT_ADDRESS_CLASS),
    (_enum_value, ds.ZERO_STAGE_ENUM_CLASS),
]
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")


def load_torch_file(path: str | os.PathLike, *, allowed: list | None = None, map_location="cpu", mmap: bool = True):
    """``torch.load`` of a checkpoint file that never runs pickled code: ``weights_only=True``, with only
    the objects ``allowed`` (``torch.serialization.safe_globals`` entries; default: DeepSpeed's, as inert
    stand-ins) besides plain data and tensors. A refused object, a truncated file or a file that is not a
    torch file is a one-line ConfigError naming the file (and the refused object)."""
    try:
        with torch.serialization.safe_globals(_DEEPSPEED_GLOBALS if allowed is None else allowed):
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as exc:  # a file in torch's legacy (non-zip) format cannot be memory-mapped
                if not (mmap and "mmap can only be used with files saved with" in str(exc)):
                    raise
                return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a pickled object: name it
        found = _REFUSED_GLOBAL.search(str(exc))
        what = f"a pickled {found.group(1)}" if found else "a pickled object that is not plain data"
        raise ConfigError(f"{path} holds {what}; fsdtrain reads checkpoints without unpickling code (docs/checkpoints.md)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated or not a torch file
        text = str(exc).strip()
        raise ConfigError(f"{path}: unreadable checkpoint file ({text.splitlines()[0] if text else type(exc).__name__})") from None


def _load(path: Path) -> dict:
    return load_torch_file(path)


def checkpoint_files(ckpt: str | os.PathLike) -> list[Path]:
    """Every torch file of a checkpoint: the file itself, or each ``*.pt`` under a DeepSpeed folder."""
    p = Path(ckpt)
    return [p] if p.is_file() else sorted(f for f in p.rglob("*.pt") if f.is_file())


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _zero_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed ZeRO checkpoint, consolidated from every rank's shards."""
    tag = ckpt / (ckpt / ds.LATEST_FILE).read_text().strip()
    model_files = sorted(tag.glob(f"*{ds.MODEL_STATES_SUFFIX}"), key=_natural)
    optim_files = sorted(tag.glob(f"*{ds.OPTIM_STATES_SUFFIX}"), key=_natural)
    optims = [_load(f)[ds.OPTIMIZER_STATE_DICT] for f in optim_files]
    stage = int(optims[0][ds.ZERO_STAGE])
    world = optims[0][ds.PARTITION_COUNT]
    world = max(world) if isinstance(world, list) else int(world)
    if len(optims) != world:
        raise ConfigError(f"{ckpt} is incomplete: {len(optims)} of its {world} optimizer shards are there")
    models = [_load(f) for f in (model_files if stage == 3 else model_files[:1])]
    first = models[0]
    buffers = set(first[ds.BUFFER_NAMES])
    state = {k: v.float() if v.is_floating_point() else v for k, v in first[ds.MODULE].items() if k in buffers}
    frozen = first.get(ds.FROZEN_PARAM_SHAPES) or {}
    if stage <= 2:
        state |= {name: first[ds.FROZEN_PARAM_FRAGMENTS][name] for name in frozen}
        groups = [o[ds.SINGLE_PARTITION_OF_FP32_GROUPS] for o in optims]
        _zero2_params(state, first[ds.PARAM_SHAPES], groups, optims[0].get(ds.PARAM_ALIGNMENT_PADDINGS), world, ckpt)
    elif stage == 3:
        for name, shape in frozen.items():
            state[name] = torch.cat([m[ds.FROZEN_PARAM_FRAGMENTS][name] for m in models]).narrow(0, 0, shape.numel()).view(shape)
        _zero3_params(state, first[ds.PARAM_SHAPES], [torch.cat(list(o[ds.FP32_FLAT_GROUPS])) for o in optims], world, ckpt)
    else:
        raise ConfigError(f"{ckpt}: unknown ZeRO stage {stage}")
    for alias, source in first.get(ds.SHARED_PARAMS, {}).items():
        if source in state:
            state[alias] = state[source]
    return {k.removeprefix(ds.LEGACY_LIGHTNING_PREFIX): v.clone() for k, v in state.items()}


def _zero2_params(state: dict, param_shapes: list[dict], groups: list[list[torch.Tensor]], paddings, world: int, ckpt: Path) -> None:
    """ZeRO-1/2: each parameter group is one flat fp32 vector, split evenly over ranks."""
    align = ds.ZERO12_ALIGNMENT_FACTOR * world  # DeepSpeed pads each group's flat vector to a multiple of 2 x world size
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


def read_checkpoint_metadata(path: str | os.PathLike) -> tuple[WeightsMeta, Path]:
    """-> (run metadata with the resolved config under ``config``, the checkpoint path), without
    reading any weights (``fsdtrain export`` checks residency from it first)."""
    ckpt = resolve_checkpoint(path)
    meta_file = sidecar(ckpt, META_NAME)
    if not meta_file.is_file():
        raise ConfigError(f"{ckpt} has no {META_NAME}: it was not written by `fsdtrain fit` (FleetCheckpoint), so its model config is unknown")
    try:
        raw = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{meta_file}: not JSON ({exc})") from None
    config_file = sidecar(ckpt, CONFIG_NAME)
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file}: not YAML ({str(exc).strip().splitlines()[0]})") from None
    return WeightsMeta.from_dict({**raw, "config": config} if isinstance(raw, dict) else raw, str(meta_file)), ckpt


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WeightsMeta, Path]:
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
