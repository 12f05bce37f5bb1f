"""`fsdtrain demo`, smaller: the same story end to end (store, synth, pretrain, fine-tune, eval)."""

import json
import re
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
    last = proc.stdout.strip().splitlines()[-2:]
    assert last == [f"eval report: {work.resolve() / 'report.json'}", f"report: {work.resolve() / 'report.html'}"]
    for step in range(1, 7):  # each step with the time it should take, and then the time it took
        assert re.search(rf"\[demo {step}/6\] .* \(~\d+ (s|min) on a 2-core CPU\)", proc.stdout), proc.stdout[-3000:]
    took = [int(s) for s in re.findall(r"^   step (\d) took \d+ s$", proc.stdout, flags=re.M)]
    assert took == [1, 2, 3, 4, 5]
    report = json.loads((work / "report.json").read_text())
    assert report["metric_version"] == 1 and set(report["per_country"]) == {"CN", "US", "DE"}
    assert set(report["per_country"]["CN"]) >= {"model", "constant_velocity", "ego_mlp", "global_head"}
    assert report["per_country"]["CN"]["clips"] == SPLITS["test"]  # the held-out test split
    # the page for reviewers: the three runs, every country's pictures (camera frames: it is made for zone cn)
    page = (work / "report.html").read_text(encoding="utf-8")
    assert 'id="dest-zone">cn<' in page and 'id="report-' in page and page.count("<svg") >= 10
    pictures = sorted((work / "plots").glob("*.png"))
    assert {p.name[:2] for p in pictures} == {"CN", "US", "DE"} and page.count('data-camera="true"') >= len(pictures)
    cards = ["1. pretrain", "2. finetune-cn", f"3. {work.name}"]
    assert [c for c in cards if f"<b>{c}</b>" in page] == cards  # lineage: pretrain -> fine-tune -> eval
    for name in ("pretrain", "finetune-cn"):
        history = read_run(offline_runs(work / name)[-1])["history"]
        assert any("train/loss" in h for h in history)
    runs = [read_run(offline_runs(folder)[-1])["run"] for folder in (work / "pretrain", work / "finetune-cn", work)]
    assert [(r.job_type, r.project, r.run_group) for r in runs] == [
        ("pretrain", "fsdtrain-demo", "demo"), ("finetune", "fsdtrain-demo", "demo"), ("eval", "fsdtrain-demo", "demo")
    ]  # one project and group: the three runs side by side in W&B
    store_dir = str((work / "store").resolve())
    assert not [p for p in psutil.process_iter(["cmdline"]) if any(store_dir in a for a in p.info["cmdline"] or [])]
