"""Validation metrics do not depend on the number of ranks: the same weights validated through the
CLI on 1 rank and on 2 gloo ranks (DDP, 2 loader workers each, uneven shards, batches that do not
divide the windows) give the same per-country and overall numbers, read back from
``<workdir>/val_metrics.json`` and from the logged ``val/*`` metrics."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsdtrain.eval.metrics import METRIC_KEYS
from helpers.fleet import TINY_WINDOW

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def validate(fleet: dict, workdir: Path, *, devices: int, workers: int) -> tuple[dict, dict]:
    """``fsdtrain validate`` of the seeded initial weights -> (val_metrics.json, logged val/* values)."""
    val = f"[{fleet['US']['train']},{fleet['DE']['train']},{fleet['DE']['val']}]"  # 5 one-clip shards: 3 + 2 on 2 ranks
    args = [
        "validate", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml", "--workdir", str(workdir),
        "--data.train", "[]", "--data.val", val, "--data.window.window_stride", "2", "--data.batch_size", "3",
        "--data.num_workers", str(workers), "--data.image_size", "null", "--trainer.strategy", "ddp",
        "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("FSDTRAIN_SITE_ZONE", None)
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    report = json.loads((workdir / "val_metrics.json").read_text())
    with (workdir / "metrics" / "version_0" / "metrics.csv").open() as f:
        (logged,) = [{k: float(v) for k, v in row.items() if k.startswith("val/") and v} for row in csv.DictReader(f)]
    return report, logged


def flat(entry: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in entry.items():
        out |= flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_validation_metrics_are_identical_on_one_and_two_ranks(tiny_fleet, tmp_path):
    one, one_logged = validate(tiny_fleet, tmp_path / "one", devices=1, workers=0)
    two, two_logged = validate(tiny_fleet, tmp_path / "two", devices=2, workers=2)

    windows = TINY_WINDOW.count(50, 10.0)
    for report in (one, two):  # every window exactly once: no tail dropped, no padding counted
        assert (report["overall"]["clips"], report["overall"]["windows"]) == (5, 5 * windows)
        per_country = {c: (e["clips"], e["windows"]) for c, e in report["per_country"].items()}
        assert per_country == {"US": (2, 2 * windows), "DE": (3, 3 * windows)}
        assert set(report["overall"]["model"]) == set(report["overall"]["ego_mlp"]) == set(METRIC_KEYS)
    a, b = (flat({k: r[k] for k in ("per_country", "overall", "loss")}) for r in (one, two))
    assert set(a) == set(b) and len(a) > 100
    # the same windows summed in the same order; constant velocity is exact arithmetic per window, the
    # networks' float32 kernels depend on which windows share a batch (measured: up to ~2e-7 m)
    classic = [k for k in a if "/constant_velocity/" in k or "/ctra/" in k]
    assert len(classic) > 20 and {k: a[k] for k in classic} == {k: b[k] for k in classic}
    assert a == pytest.approx(b, rel=0, abs=1e-6)

    expected = {"val/loss", "val/l2_3s_ego_mlp", "val/l2_3s_constant_velocity", "val/l2_3s_ctra"} | {f"val/{k}" for k in METRIC_KEYS}
    expected |= {f"val/{c}/{k}" for c in ("US", "DE") for k in METRIC_KEYS}
    assert set(one_logged) == set(two_logged) == expected
    assert all(math.isfinite(v) for v in one_logged.values())
    assert one_logged == pytest.approx(two_logged, rel=0, abs=1e-6)
    for key, value in {
        "val/l2_3s": one["overall"]["model"]["l2_3s"],
        "val/DE/miss_rate": one["per_country"]["DE"]["model"]["miss_rate"],
        "val/l2_3s_constant_velocity": one["overall"]["constant_velocity"]["l2_3s"],
        "val/l2_3s_ctra": one["overall"]["ctra"]["l2_3s"],
        "val/loss": one["loss"],
    }.items():
        assert one_logged[key] == pytest.approx(value, rel=1e-6)  # the logs hold float32
