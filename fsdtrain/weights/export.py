"""``fsdtrain export`` (:func:`export_weights`): a training checkpoint -> one weights file (fsdtrain/weights/files.py), with the run's
resolved config in the metadata and, optionally, only some heads or only the heads
(head-only files: fsdtrain/weights/head_only.py), after the export policy allowed it (docs/residency.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fsdtrain.errors import ConfigError
from fsdtrain.model.heads import BACKBONE, GLOBAL_HEAD, head_of
from fsdtrain.residency import ExportPolicy, check_export, resolve_site_zone, validate_zone
from fsdtrain.weights.checkpoint_files import read_checkpoint, read_checkpoint_metadata
from fsdtrain.weights.files import load_weights, read_metadata, save_weights
from fsdtrain.weights.head_only import load_with_head, save_head
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["export_weights"]


def export_weights(
    ckpt: str | os.PathLike, out: str | os.PathLike, *, heads: list[str] | None = None, head_only: bool = False,
    head: str | os.PathLike | None = None, site_zone: str | None = None, dest_zone: str | None = None, policy=None,
) -> WeightsMeta:  # fmt: skip
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
            :mod:`fsdtrain.weights.head_only`); the backbone is not exported.
        head: a head-only file to put back on ``ckpt`` (then the backbone weights it was trained on).
        site_zone: zone this job runs in (default ``$FSDTRAIN_SITE_ZONE`` or ``global``).
        dest_zone: zone the written file is for (default: the site zone).
        policy: :class:`fsdtrain.residency.ExportPolicy`; None allows nothing restricted to leave its zone.
    """
    src = Path(ckpt)
    is_file = src.is_file() and src.suffix == ".safetensors"
    if head is not None and not is_file:
        raise ConfigError(f"--head needs --ckpt to be the weights file (.safetensors) the head was fine-tuned from, not {ckpt}")
    if head_only and not heads:
        raise ConfigError("--head-only needs --heads, e.g. --heads CN")
    if is_file:
        meta = read_metadata(head if head is not None else src)
        if head is None and meta.is_head_only:
            raise ConfigError(f"{src} is a head-only file; give --ckpt BACKBONE.safetensors --head {src}")
    else:
        meta, src = read_checkpoint_metadata(src)
    meta.require("heads")
    known = list(meta.heads)
    unknown = [h for h in heads or [] if h not in known]
    if unknown:
        raise ConfigError(f"--heads {','.join(unknown)}: not in this checkpoint, whose heads are {','.join(known)}")
    kept = heads if head_only else [BACKBONE, *(h for h in known if not heads or h == GLOBAL_HEAD or h in heads)]
    site = resolve_site_zone(site_zone)
    dest = validate_zone(dest_zone, "--dest-zone") if dest_zone else site
    check_export(meta.part_zones(kept), site_zone=site, dest_zone=dest, policy=policy or ExportPolicy(), source=str(head or src))

    if head is not None:
        state, meta = load_with_head(src, head)
    elif is_file:
        state, meta = load_weights(src)
    else:
        state, meta, src = read_checkpoint(src)
        meta = meta.updated(checkpoint=str(src))
    meta = meta.updated(exported_from=str(src), weights=str(out), exported_for_zone=dest)
    if head_only:
        parent_weights = meta.parent.weights if meta.parent is not None else None
        return save_head(out, state, meta, heads, backbone_source=parent_weights or str(src))
    if heads:
        state, meta = _select_heads(state, meta, heads)
    save_weights(out, state, meta)
    return meta


def _select_heads(state: dict[str, torch.Tensor], meta: WeightsMeta, heads: list[str]) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    meta.require("heads")
    keep = [h for h in meta.heads if h == GLOBAL_HEAD or h in heads]
    state = {k: v for k, v in state.items() if head_of(k) is None or head_of(k) in keep}
    trained = [h for h in (meta.trained_heads if meta.trained_heads is not None else keep) if h in keep]
    net = {"net": {**meta.net, "heads": keep}} if meta.net is not None else {}
    return state, meta.updated(heads=keep, trained_heads=trained, **net)
