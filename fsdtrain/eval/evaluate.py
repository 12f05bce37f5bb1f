"""``fsdtrain eval``: a weights file + shard directories -> per-country metrics vs baselines."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader

from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.stream import FleetStream, Source, init_loader_worker
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.eval.metrics import MetricTable, sample_errors
from fsdtrain.eval.report import build_report
from fsdtrain.eval.viz import save_plots
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.ego_mlp import EgoStatusMLP
from fsdtrain.model.heads import GLOBAL_HEAD
from fsdtrain.residency import resolve_site_zone
from fsdtrain.store.gate import AuditLog, ZoneGate
from fsdtrain.weights.files import load_weights, read_metadata
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["load_predictors", "evaluate"]


def load_predictors(weights: str, head: str | None = None) -> tuple[DrivingTransformer, EgoStatusMLP, WeightsMeta]:
    """Model and ego-status baseline from a weights file (plus, optionally, a head-only file fine-tuned
    on it: fsdtrain/weights/head_only.py), in eval mode, plus its metadata."""
    if head is not None:
        from fsdtrain.weights.head_only import load_with_head

        state, meta = load_with_head(weights, head)
    else:
        state, meta = load_weights(weights)
        if meta.is_head_only:
            raise ConfigError(f"{weights} is a head-only file; give the backbone weights as --ckpt and it as --head")
    meta.require("net", "cameras", "window")
    window = WindowSpec(**meta.window)
    dt = 1.0 / window.future_hz
    # every weight is in the file: the encoder's starting-weights file of the run is not needed (and
    # is usually not on the machine that evaluates)
    config = ModelConfig(**{**meta.net, "encoder_weights": None})
    net = DrivingTransformer(config, cameras=len(meta.cameras), history=window.history, future_steps=window.future_steps, future_dt=dt)
    base = EgoStatusMLP(history=window.history, future_steps=window.future_steps, future_dt=dt, heads=net.heads.names)
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    base.load_state_dict({k[len("baseline.") :]: v for k, v in state.items() if k.startswith("baseline.")})
    return net.eval(), base.eval(), meta


@torch.no_grad()
def evaluate(
    weights: str, data: list[str], *, batch_size: int = 8, site_zone: str | None = None, audit_log: str | None = None,
    num_workers: int = 1, plots: str | None = None, plots_per_country: int = 4, head: str | None = None,
) -> dict:  # fmt: skip
    """Every window of ``data`` through the model (routed heads), the global head (for countries
    with their own head), the ego-status MLP and constant velocity.

    Args:
        weights: weights file written by fit/finetune.
        data: shard directory URLs.
        batch_size: windows per batch.
        site_zone: zone this job runs in (default ``$FSDTRAIN_SITE_ZONE`` or ``global``).
        audit_log: JSONL file that records every clip and shard index read.
        num_workers: loader processes.
        plots: local folder for PNG pictures of the model's prediction (bird's-eye plot + front
            camera, :func:`fsdtrain.eval.viz.window_figure`), or None for none. They hold camera
            frames, which stay at this site: every shard was checked against the site zone before
            it was read, and the pictures are written only to this local folder.
        plots_per_country: pictures per country: its first windows in stream order.
        head: head-only file to put on ``weights`` (the backbone weights it was fine-tuned from).

    Returns:
        The report dict (docs/report-format.md).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    if plots_per_country < 0:
        raise ConfigError(f"plots_per_country={plots_per_country} must be >= 0")
    if plots is not None and "://" in str(plots):
        raise ConfigError(f"plots={plots}: give a local folder, not a URL (the pictures hold camera frames)")
    gate = ZoneGate(site_zone, audit=AuditLog(audit_log, job="eval") if audit_log else None)
    gate.check_urls(data)  # before anything is read: no request to a bucket of a zone this site may not read
    site = resolve_site_zone(site_zone)
    for path in (weights, head) if head is not None else (weights,):  # from the metadata, before any tensor is read
        read_metadata(path).check_site(site, "fsdtrain eval")
    net, base, meta = load_predictors(weights, head)
    manifests = load_manifests(data, gate)  # each manifest's zone, before the first shard byte
    window = WindowSpec(**meta.window)
    # every window once, in one process: the default reading (no shuffle, no balancing across ranks)
    stream = FleetStream(Source.all(manifests), window, cameras=meta.cameras, batch_size=batch_size, gate=gate)
    stream.set_distributed(0, 1, num_workers)
    table = MetricTable()
    clips: dict[str, set[str]] = defaultdict(set)
    hz = window.future_hz
    own_heads = set(net.heads.names) - {GLOBAL_HEAD}
    plotted: dict[str, int] = defaultdict(int)
    for batch in DataLoader(stream, batch_size=batch_size, num_workers=num_workers, worker_init_fn=init_loader_worker):
        batch = _real_windows(batch)
        if not batch["valid"].numel():
            continue
        _check_finite(batch)
        countries = list(batch["country"])
        for c, clip in zip(countries, batch["clip_id"]):
            clips[c].add(clip)
        route = net.heads.route(countries)
        fused, ego_token = net.encode(
            batch["images"],
            batch["ego_hist"],
            batch["command"],
            intrinsics=batch["intrinsics"],
            cam_to_ego=batch["cam_to_ego"],
        )
        target = batch["future"]
        traj, logits = net.decode(fused, ego_token, batch["ego_hist"], route)  # [B, K, S, 3], [B, K]
        table.add(countries, "model", sample_errors(traj, logits, target, hz))
        if plots is not None:
            take = _plot_indices(countries, plotted, plots_per_country)
            if take:
                save_plots(plots, batch, traj, logits, indices=take, cameras=meta.cameras)
        has_own = np.array([c in own_heads for c in countries])
        if has_own.any():
            g_traj, g_logits = net.decode(fused, ego_token, batch["ego_hist"], route, head=GLOBAL_HEAD)
            table.add(countries, "global_head", sample_errors(g_traj, g_logits, target, hz), mask=has_own)
        b_traj, b_logits = base(batch["ego_hist"], batch["command"], route)
        table.add(countries, "ego_mlp", sample_errors(b_traj, b_logits, target, hz))
        cv = constant_velocity(batch["ego_hist"], window.future_steps, 1.0 / hz)[:, None]
        table.add(countries, "constant_velocity", sample_errors(cv, torch.zeros(cv.shape[:2]), target, hz))
    return build_report(table, clips, checkpoint=weights if head is None else f"{weights} + {head}", data=data)


def _real_windows(batch: dict) -> dict:
    """The batch without the repeats a stream makes up (``valid`` False), so each window counts once.
    The stream here is neither equalized nor skipping bad clips, so it makes none; this keeps the
    report right should that change."""
    valid = batch["valid"]
    if bool(valid.all()):
        return batch
    keep = valid.nonzero().flatten().tolist()
    return {k: v[valid] if isinstance(v, torch.Tensor) else [v[i] for i in keep] for k, v in batch.items()}


def _check_finite(batch: dict) -> None:
    """A window whose ego history or ground truth holds NaN or inf would make every metric NaN: one line naming its clip."""
    for name, what in (("ego_hist", "ego history"), ("future", "future path (ground truth)")):
        bad = ~torch.isfinite(batch[name].flatten(1)).all(1)  # [B]
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise DataError(f"clip {batch['clip_id'][i]} (frame {int(batch['frame'][i])}): its {what} holds NaN or inf (ego.npy); fix or drop the clip")


def _plot_indices(countries: list[str], plotted: dict[str, int], limit: int) -> list[int]:
    """Windows of a batch still to be drawn, at most ``limit`` per country; counts them in ``plotted``."""
    take = []
    for i, c in enumerate(countries):
        if plotted[c] < limit:
            plotted[c] += 1
            take.append(i)
    return take
