"""`fsdtrain demo`, smaller: the same story end to end (store, synth, pretrain, fine-tune, eval)."""

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fsdtrain.demo import SPLITS
from helpers.wandb_files import offline_runs, read_run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_demo_leaves_a_report_and_wandb_runs(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "demo", "--workdir", str(work), "--clips", "6"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == f"report: {work.resolve() / 'report.json'}"
    for step in range(1, 7):
        assert f"[demo {step}/6]" in proc.stdout
    report = json.loads((work / "report.json").read_text())
    assert report["metric_version"] == 1 and set(report["per_country"]) == {"CN", "US", "DE"}
    assert set(report["per_country"]["CN"]) >= {"model", "constant_velocity", "ego_mlp", "global_head"}
    assert report["per_country"]["CN"]["clips"] == SPLITS["test"]  # the held-out test split
    for name in ("pretrain", "finetune-cn"):
        history = read_run(offline_runs(work / name)[-1])["history"]
        assert any("train/loss" in h for h in history)
    store_dir = str((work / "store").resolve())
    assert not [p for p in psutil.process_iter(["cmdline"]) if any(store_dir in a for a in p.info["cmdline"] or [])]
