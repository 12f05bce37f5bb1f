"""Weights files: one safetensors file with JSON metadata, loadable without DeepSpeed or pickle.

Metadata (``fsdtrain`` key, JSON): model config, data shapes (cameras, window), head names, zones
the weights were trained on, data manifest digests, git SHA, and the checkpoint it came from
(docs/checkpoints.md); read and written as one typed record, :class:`fsdtrain.weights.metadata.WeightsMeta`.
Files are written atomically (temp file, then rename).
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
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["save_weights", "load_weights", "read_metadata", "git_sha"]

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


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: WeightsMeta) -> None:
    """Writes ``state`` + ``metadata`` (as JSON with sorted keys) atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(metadata.to_dict(), sort_keys=True)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(path: str | os.PathLike) -> WeightsMeta:
    """The metadata of a weights file, parsed and checked (a one-line ConfigError naming the file
    and the field when a value is wrong); reads no tensor."""
    from safetensors import safe_open

    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except SafetensorError as exc:
        raise ConfigError(f"{path}: not a safetensors weights file ({exc})") from None
    if raw is None:
        raise ConfigError(f"{path}: has no fsdtrain metadata; was it written by fsdtrain?")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: its fsdtrain metadata is not JSON ({exc})") from None
    return WeightsMeta.from_dict(data, str(path))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """-> (state dict, metadata). Never unpickles."""
    meta = read_metadata(path)
    return load_file(str(path)), meta


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path} is a directory; give the .safetensors weights file written at the end of fit (<workdir>/model.safetensors)")
    if not p.is_file():
        raise ConfigError(f"no weights file at {path}")
