"""Head-only weights: the heads a country fine-tune trained, without the backbone they sit on.

A CN fine-tune freezes the backbone (and the ``global`` head), so everything but the CN head is the
starting weights file, bit for bit. ``head-CN.safetensors`` (written beside ``model.safetensors`` at
the end of such a fine-tune, or by ``fsdtrain export --heads CN --head-only``) holds only the CN
head's tensors (of the model and of its ego-status baseline) plus metadata: the run's model config
and lineage, ``trained_on_zones``, and ``backbone_sha256``, a hash of every other tensor of the model
it was trained in. :func:`load_with_head` puts a head back on a weights file and refuses one whose
hash differs, naming the backbone the head needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from fsdtrain.errors import ConfigError
from fsdtrain.model.heads import head_of
from fsdtrain.weights.files import load_weights, save_weights
from fsdtrain.weights.metadata import HEAD_FIELDS, HEAD_KIND, WeightsMeta

__all__ = ["HEAD_KIND", "head_file_name", "backbone_hash", "head_metadata", "save_head", "load_with_head", "path_bytes"]


def head_file_name(heads: list[str]) -> str:
    """``head-CN.safetensors`` (heads joined by ``-``)."""
    return f"head-{'-'.join(heads)}.safetensors"


def backbone_hash(state: dict[str, torch.Tensor], *, without: list[str]) -> str:
    """sha256 over every tensor of ``state`` outside the heads ``without``: names in sorted order,
    each with its dtype, shape and raw bytes (so any change of value, shape or type changes it)."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if head_of(k) not in without):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def head_metadata(meta: WeightsMeta, heads: list[str], *, backbone_sha256: str, backbone_source: str | None) -> WeightsMeta:
    """Metadata of a head-only file cut from a model with metadata ``meta`` (``backbone_source``
    is written even when None: null)."""
    return meta.updated(kind=HEAD_KIND, head_only=list(heads), backbone_sha256=backbone_sha256, backbone_source=backbone_source)


def save_head(
    path: str | os.PathLike, state: dict[str, torch.Tensor], meta: WeightsMeta, heads: list[str], *, backbone_source: str | None
) -> WeightsMeta:  # fmt: skip
    """Writes the ``heads`` of a full model ``state`` (with its metadata ``meta``) as a head-only file;
    returns its metadata."""
    known = sorted({h for k in state if (h := head_of(k))})
    missing = [h for h in heads if h not in known]
    if missing:
        raise ConfigError(f"--heads {','.join(missing)}: not in these weights, whose heads are {','.join(known)}")
    head_state = {k: v for k, v in state.items() if head_of(k) in heads}
    out = head_metadata(meta, heads, backbone_sha256=backbone_hash(state, without=heads), backbone_source=backbone_source)
    save_weights(path, head_state, out)
    return out


def load_with_head(backbone: str | os.PathLike, head: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """A full model from a weights file and a head-only file: -> (state, metadata of the fine-tuned model).

    Raises ConfigError when ``head`` is not a head-only file, or when ``backbone`` is not the weights
    the head was trained on (their backbone hashes differ).
    """
    head_state, head_meta = load_weights(head)
    if not head_meta.is_head_only:
        raise ConfigError(f"{head} is not a head-only weights file (a fine-tune writes <workdir>/head-CN.safetensors; or `fsdtrain export --heads CN --head-only`)")
    if Path(backbone).resolve() == Path(head).resolve():
        raise ConfigError(f"{head} is the head-only file; give the backbone weights (--ckpt) it was fine-tuned from beside it")
    state, _ = load_weights(backbone)
    heads = head_meta.head_only
    want, got = head_meta.backbone_sha256, backbone_hash(state, without=heads)
    if got != want:
        source = head_meta.backbone_source or "its source was not recorded"
        raise ConfigError(
            f"{head} was trained on backbone sha256 {want[:16]} ({source}), but {backbone} has backbone sha256 {got[:16]}; "
            "give the weights file the head was fine-tuned from"
        )
    state = {k: v for k, v in state.items() if head_of(k) not in heads} | head_state
    meta = head_meta.without(*HEAD_FIELDS).updated(weights=str(head), backbone_weights=str(backbone))
    return state, meta


def path_bytes(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder (a sharded checkpoint); symlinks resolved."""
    p = Path(os.path.realpath(path))
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
