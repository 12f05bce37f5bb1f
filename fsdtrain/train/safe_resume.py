"""Resuming without pickle: every checkpoint file ``--ckpt_path`` names is read with ``weights_only=True``.

DeepSpeed reads its ZeRO checkpoints through a replaceable checkpoint engine whose default
(``TorchCheckpointEngine``) calls ``torch.load(..., weights_only=False)``: a crafted
``mp_rank_00_model_states.pt`` would run code on ``fsdtrain fit --ckpt_path``. fsdtrain therefore

- replaces the engine's ``load`` (:func:`install_safe_loading`, called by
  :class:`fsdtrain.train.strategies.FleetDeepSpeedStrategy` right after ``deepspeed.initialize``) with a
  ``weights_only=True`` load that allows, by name, only the DeepSpeed classes a ZeRO checkpoint holds
  (:data:`fsdtrain.weights.deepspeed_keys` ``*_CLASS``; the real classes here, as DeepSpeed's optimizer
  uses them), and
- reads every torch file of the checkpoint the same way before DeepSpeed or Lightning opens it
  (:func:`check_checkpoint_files`), which also covers DeepSpeed's own readers that bypass the engine
  (ZeRO-3 weights without optimizer states, for ``fsdtrain validate``).

A file holding any other object is refused in one line naming the file and the object
(:func:`fsdtrain.weights.checkpoint_files.load_torch_file`); nothing of it runs. Lightning's own
single-file checkpoints are loaded with ``weights_only=True`` (the CLI sets and enforces it).
The DeepSpeed names relied on are listed in :mod:`fsdtrain.train.deepspeed_internals`.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

from fsdtrain.errors import ConfigError
from fsdtrain.weights import deepspeed_keys as ds
from fsdtrain.weights.checkpoint_files import checkpoint_files, load_torch_file

__all__ = ["PICKLED_CLASSES", "deepspeed_safe_globals", "check_checkpoint_files", "install_safe_loading"]

PICKLED_CLASSES = (ds.LOSS_SCALER_CLASS, ds.DYNAMIC_LOSS_SCALER_CLASS, ds.FRAGMENT_ADDRESS_CLASS, ds.ZERO_STAGE_ENUM_CLASS)
"""The only classes a ZeRO checkpoint may hold besides plain data and tensors."""


def _class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def deepspeed_safe_globals() -> list[type]:
    """The real DeepSpeed classes of :data:`PICKLED_CLASSES` (imports DeepSpeed), for ``safe_globals``."""
    return [_class(name) for name in PICKLED_CLASSES]


def check_checkpoint_files(ckpt: str | os.PathLike) -> None:
    """Reads every torch file of ``ckpt`` (a file, or a DeepSpeed folder) without unpickling code;
    one-line ConfigError naming the file when one holds anything but plain data, tensors and
    DeepSpeed's :data:`PICKLED_CLASSES` (read as inert stand-ins here), or is unreadable."""
    files = checkpoint_files(ckpt)
    if not files:
        raise ConfigError(f"{ckpt}: no checkpoint file (*.pt) in it; give a step=N.ckpt from <workdir>/checkpoints")
    for path in files:
        load_torch_file(path)


@functools.cache
def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True`` (saving unchanged)."""

        def load(self, path: str, map_location=None):
            return load_torch_file(path, allowed=deepspeed_safe_globals(), map_location=map_location, mmap=False)

    return WeightsOnlyCheckpointEngine


def install_safe_loading(engine: Any) -> None:
    """Replaces the checkpoint engine of the DeepSpeed ``engine`` by one that reads checkpoints with
    ``weights_only=True`` (DeepSpeed's classes allowed by name) and saves as before. Only DeepSpeed's
    default torch checkpoint engine can be replaced: the others (Nebula, fast, decoupled writers) are
    refused in one line."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise ConfigError(
            f"the DeepSpeed config selects the {type(current).__name__} checkpoint engine, which loads checkpoints with "
            "pickle; fsdtrain resumes only through DeepSpeed's default (torch) engine: remove the checkpoint writer settings"
        )
    safe = _safe_engine_class()()
    vars(safe).update(vars(current))  # the same serialization settings
    engine.checkpoint_engine = safe
