"""Weights files: one safetensors file with JSON metadata, loadable without DeepSpeed or pickle.

Metadata (``fsdtrain`` key, JSON): model config, data shapes (cameras, window), head names, zones
the weights were trained on, data manifest digests, git SHA, and the checkpoint it came from.
``fsdtrain export`` (:func:`export_weights`) writes one from a training checkpoint, with the run's
resolved config in the metadata and, optionally, only some heads.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fsdtrain.errors import ConfigError

__all__ = ["save_weights", "load_weights", "read_metadata", "git_sha", "export_weights"]

_META_KEY = "fsdtrain"


def git_sha() -> str | None:
    """SHA of the source tree fsdtrain runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict) -> None:
    """Writes ``state`` + ``metadata`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(metadata, sort_keys=True)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except SafetensorError as exc:
        raise ConfigError(f"{path}: not a safetensors weights file ({exc})") from None
    if raw is None:
        raise ConfigError(f"{path}: has no fsdtrain metadata; was it written by fsdtrain?")
    return json.loads(raw)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (state dict, metadata). Never unpickles."""
    meta = read_metadata(path)
    return load_file(str(path)), meta


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path} is a directory; give the .safetensors weights file written at the end of fit (<workdir>/model.safetensors)")
    if not p.is_file():
        raise ConfigError(f"no weights file at {path}")


def export_weights(ckpt: str | os.PathLike, out: str | os.PathLike, *, heads: list[str] | None = None) -> dict:
    """``fsdtrain export``: a checkpoint -> one safetensors file with metadata; returns the metadata.

    Args:
        ckpt: a checkpoint (``<workdir>/checkpoints/step=N.ckpt``, sharded or not, or ``last.ckpt``),
            a run's workdir or checkpoints folder (their last checkpoint), or a weights file.
        out: the ``.safetensors`` file to write.
        heads: heads to keep (e.g. ``["CN"]``); ``global`` always stays, as the head bank routes
            countries without their own head to it. None keeps every head.
    """
    src = Path(ckpt)
    if src.is_file() and src.suffix == ".safetensors":
        state, meta = load_weights(src)
    else:
        from fsdtrain.train.checkpoints import read_checkpoint

        state, meta, src = read_checkpoint(src)
        meta["checkpoint"] = str(src)
    if heads:
        state, meta = _select_heads(state, meta, heads)
    meta["exported_from"], meta["weights"] = str(src), str(out)
    save_weights(out, state, meta)
    return meta


def _select_heads(state: dict[str, torch.Tensor], meta: dict, heads: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    from fsdtrain.model.heads import GLOBAL_HEAD
    from fsdtrain.train.finetune import head_of

    known = list(meta["heads"])
    unknown = [h for h in heads if h not in known]
    if unknown:
        raise ConfigError(f"--heads {','.join(unknown)}: not in this checkpoint, whose heads are {','.join(known)}")
    keep = [h for h in known if h == GLOBAL_HEAD or h in heads]
    state = {k: v for k, v in state.items() if head_of(k) is None or head_of(k) in keep}
    meta = {**meta, "heads": keep, "net": {**meta["net"], "heads": keep}}
    meta["trained_heads"] = [h for h in meta.get("trained_heads", keep) if h in keep]
    return state, meta
