"""Weights files: one safetensors file with JSON metadata, loadable without DeepSpeed or pickle.

Metadata (``fsdtrain`` key, JSON): model config, data shapes (cameras, window), head names, zones
the weights were trained on, data manifest digests, git SHA, and the checkpoint it came from.
``fsdtrain export`` (:func:`export_weights`) writes one from a training checkpoint, with the run's
resolved config in the metadata and, optionally, only some heads or only the heads
(head-only files: fsdtrain/train/head_only.py), after the export policy allowed it (docs/residency.md).
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


def export_weights(
    ckpt: str | os.PathLike, out: str | os.PathLike, *, heads: list[str] | None = None, head_only: bool = False,
    head: str | os.PathLike | None = None, site_zone: str | None = None, dest_zone: str | None = None, policy=None,
) -> dict:  # fmt: skip
    """``fsdtrain export``: a checkpoint -> one safetensors file with metadata; returns the metadata.

    Residency first: from the metadata alone (before any tensor is read), every exported part
    (``backbone`` and each head) must be allowed at ``site_zone`` and for ``dest_zone`` by ``policy``
    (:func:`fsdtrain.residency.check_export`).

    Args:
        ckpt: a checkpoint (``<workdir>/checkpoints/step=N.ckpt``, sharded or not, or ``last.ckpt``),
            a run's workdir or checkpoints folder (their last checkpoint), or a weights file.
        out: the ``.safetensors`` file to write.
        heads: heads to keep (e.g. ``["CN"]``); ``global`` always stays, as the head bank routes
            countries without their own head to it. None keeps every head.
        head_only: write only ``heads`` (a head-only file with the hash of the backbone they need,
            :mod:`fsdtrain.train.head_only`); the backbone is not exported.
        head: a head-only file to put back on ``ckpt`` (then the backbone weights it was trained on).
        site_zone: zone this job runs in (default ``$FSDTRAIN_SITE_ZONE`` or ``global``).
        dest_zone: zone the written file is for (default: the site zone).
        policy: :class:`fsdtrain.residency.ExportPolicy`; None allows nothing restricted to leave its zone.
    """
    from fsdtrain.model.heads import GLOBAL_HEAD
    from fsdtrain.residency import ExportPolicy, check_export, part_zones, resolve_site_zone, validate_zone
    from fsdtrain.train.finetune import BACKBONE

    src = Path(ckpt)
    is_file = src.is_file() and src.suffix == ".safetensors"
    if head is not None and not is_file:
        raise ConfigError(f"--head needs --ckpt to be the weights file (.safetensors) the head was fine-tuned from, not {ckpt}")
    if head_only and not heads:
        raise ConfigError("--head-only needs --heads, e.g. --heads CN")
    if is_file:
        meta = read_metadata(head if head is not None else src)
        if head is None and meta.get("kind") == "head":
            raise ConfigError(f"{src} is a head-only file; give --ckpt BACKBONE.safetensors --head {src}")
    else:
        from fsdtrain.train.checkpoints import read_checkpoint_metadata

        meta, src = read_checkpoint_metadata(src)
    known = list(meta["heads"])
    unknown = [h for h in heads or [] if h not in known]
    if unknown:
        raise ConfigError(f"--heads {','.join(unknown)}: not in this checkpoint, whose heads are {','.join(known)}")
    kept = heads if head_only else [BACKBONE, *(h for h in known if not heads or h == GLOBAL_HEAD or h in heads)]
    site = resolve_site_zone(site_zone)
    dest = validate_zone(dest_zone, "--dest-zone") if dest_zone else site
    check_export(part_zones(meta, kept), site_zone=site, dest_zone=dest, policy=policy or ExportPolicy(), source=str(head or src))

    if head is not None:
        from fsdtrain.train.head_only import load_with_head

        state, meta = load_with_head(src, head)
    elif is_file:
        state, meta = load_weights(src)
    else:
        from fsdtrain.train.checkpoints import read_checkpoint

        state, meta, src = read_checkpoint(src)
        meta["checkpoint"] = str(src)
    meta = {**meta, "exported_from": str(src), "weights": str(out), "exported_for_zone": dest}
    if head_only:
        from fsdtrain.train.head_only import save_head

        parent = meta.get("parent") or {}
        return save_head(out, state, meta, heads, backbone_source=parent.get("weights") or str(src))
    if heads:
        state, meta = _select_heads(state, meta, heads)
    save_weights(out, state, meta)
    return meta


def _select_heads(state: dict[str, torch.Tensor], meta: dict, heads: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    from fsdtrain.model.heads import GLOBAL_HEAD
    from fsdtrain.train.finetune import head_of

    known = list(meta["heads"])
    keep = [h for h in known if h == GLOBAL_HEAD or h in heads]
    state = {k: v for k, v in state.items() if head_of(k) is None or head_of(k) in keep}
    meta = {**meta, "heads": keep, "net": {**meta["net"], "heads": keep}}
    meta["trained_heads"] = [h for h in meta.get("trained_heads", keep) if h in keep]
    return state, meta
