"""``fsdtrain eval``: a weights file + shard directories -> per-country metrics vs baselines."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader

from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.stream import FleetStream
from fsdtrain.data.windows import WindowSpec
from fsdtrain.eval.baselines import EgoStatusMLP
from fsdtrain.eval.metrics import MetricTable, sample_errors
from fsdtrain.eval.report import build_report
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.heads import GLOBAL_HEAD
from fsdtrain.residency import AuditLog, resolve_site_zone
from fsdtrain.train.export import load_weights

__all__ = ["load_predictors", "evaluate"]


def load_predictors(weights: str) -> tuple[DrivingTransformer, EgoStatusMLP, dict]:
    """Model and ego-status baseline from a weights file, in eval mode, plus its metadata."""
    state, meta = load_weights(weights)
    window = WindowSpec(**meta["window"])
    dt = 1.0 / window.future_hz
    net = DrivingTransformer(ModelConfig(**meta["net"]), cameras=len(meta["cameras"]), history=window.history, future_steps=window.future_steps, future_dt=dt)
    base = EgoStatusMLP(history=window.history, future_steps=window.future_steps, future_dt=dt, heads=net.heads.names)
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    base.load_state_dict({k[len("baseline.") :]: v for k, v in state.items() if k.startswith("baseline.")})
    return net.eval(), base.eval(), meta


@torch.no_grad()
def evaluate(weights: str, data: list[str], *, batch_size: int = 8, site_zone: str | None = None, audit_log: str | None = None, num_workers: int = 1) -> dict:
    """Every window of ``data`` through the model (routed heads), the global head (for countries
    with their own head), the ego-status MLP and constant velocity. Returns the report dict."""
    net, base, meta = load_predictors(weights)
    window = WindowSpec(**meta["window"])
    zone = resolve_site_zone(site_zone)
    stream = FleetStream(
        load_manifests(data, zone),
        window,
        cameras=meta["cameras"],
        batch_size=batch_size,
        shuffle=False,
        equalize=False,
        site_zone=zone,
        audit=AuditLog(audit_log, job="eval") if audit_log else None,
    )
    stream.set_distributed(0, 1, num_workers)
    table = MetricTable()
    clips: dict[str, set[str]] = defaultdict(set)
    hz = window.future_hz
    own_heads = set(net.heads.names) - {GLOBAL_HEAD}
    for batch in DataLoader(stream, batch_size=batch_size, num_workers=num_workers):
        countries = list(batch["country"])
        for c, clip in zip(countries, batch["clip_id"]):
            clips[c].add(clip)
        route = net.heads.route(countries)
        fused, ego_token = net.encode(batch["images"], batch["ego_hist"], batch["command"])
        target = batch["future"]
        traj, logits = net.decode(fused, ego_token, batch["ego_hist"], route)
        table.add(countries, "model", sample_errors(traj, logits, target, hz))
        has_own = np.array([c in own_heads for c in countries])
        if has_own.any():
            g_traj, g_logits = net.decode(fused, ego_token, batch["ego_hist"], route, head=GLOBAL_HEAD)
            table.add(countries, "global_head", sample_errors(g_traj, g_logits, target, hz), mask=has_own)
        b_traj, b_logits = base(batch["ego_hist"], batch["command"], route)
        table.add(countries, "ego_mlp", sample_errors(b_traj, b_logits, target, hz))
        cv = constant_velocity(batch["ego_hist"], window.future_steps, 1.0 / hz)[:, None]
        table.add(countries, "constant_velocity", sample_errors(cv, torch.zeros(cv.shape[:2]), target, hz))
    return build_report(table, clips, checkpoint=weights, data=data)
