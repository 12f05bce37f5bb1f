"""``fsdtrain demo``: the whole story on one machine, on CPU, in minutes.

1. start a local SeaweedFS store (buckets ``fleet-global`` and ``fleet-cn``, as two zones would have);
2. synthesize CN, US and DE clips (CN lands in the CN bucket with zone ``cn``), the one camera the demo trains on;
3. pretrain the global model on US + DE at a ``global`` site (DeepSpeed ZeRO-2, 2 CPU ranks);
4. fine-tune a CN head on CN clips at a ``cn`` site, backbone frozen;
5. evaluate on held-out clips of every country against the baselines (``fsdtrain eval --plots``), write
   ``report.json``, pictures in ``plots/`` and the eval's W&B offline run;
6. stop the store, and write ``report.html`` (``fsdtrain report``): curves, tables, pictures and lineage
   of the three runs, one file a reviewer opens in a browser.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fsdtrain.errors import ConfigError, FsdtrainError
from fsdtrain.eval.report import format_table
from fsdtrain.review.page import write_page
from fsdtrain.review.runs import read_report_json
from fsdtrain.review.wandb_files import offline_runs, wait_finished
from fsdtrain.stopping import received, stop_child
from fsdtrain.store.local.seaweed import LocalStore

__all__ = ["run_demo", "config_path"]

DATASET = "demo"
BUCKETS = {"global": "fleet-global", "cn": "fleet-cn"}
COUNTRIES = {"US": "global", "DE": "global", "CN": "cn"}
SPLITS = {"train": 240, "val": 4, "test": 32}  # clips per country; a test split of 8 moved DE by +-10 %
RIG = "surround6_narrow"  # surround cameras + a long-range front camera, which the demo's model reads
CAMERAS = ("CAM_FRONT_NARROW",)  # the cameras configs/demo.yaml and finetune_cn.yaml read: only these are rendered
CLIPS_PER_SHARD = {"val": 1, "test": 4}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def config_path(name: str) -> Path:
    """A YAML of the repo's ``configs/``."""
    path = Path(__file__).resolve().parents[1] / "configs" / name
    if not path.is_file():
        raise ConfigError(f"config {name} not found at {path}; run the demo from an fsdtrain checkout (pip install -e .)")
    return path


def dataset_url(country: str) -> str:
    return f"s3://{BUCKETS[COUNTRIES[country]]}/{DATASET}"


#: Seconds each step took on the reference machine (2-core AMD EPYC VM, 2026-12-06, 517 s in all, nothing else
#: running): a fixed part (process start-up, DeepSpeed set-up) and a part that grows with the clips
#: synthesized, at the full 240 training clips per country.
STEP_SECONDS = {1: (5, 0), 2: (5, 75), 3: (30, 310), 4: (25, 42), 5: (15, 4), 6: (5, 0)}


class _Steps:
    """Prints each step with the time it is expected to take and, when the next begins, what it took."""

    def __init__(self, scale: float) -> None:
        self.scale = scale  # training clips / the full demo's
        self.begun: float | None = None

    def __call__(self, n: int, text: str) -> None:
        now = time.monotonic()
        if self.begun is not None:
            print(f"   step {n - 1} took {now - self.begun:.0f} s", flush=True)
        self.begun = now
        fixed, full = STEP_SECONDS[n]
        expected = fixed + full * self.scale
        about = f"~{expected / 60:.0f} min" if expected >= 90 else f"~{expected:.0f} s"
        print(f"\n[demo {n}/6] {text} ({about} on a 2-core CPU)", flush=True)


def _fsdtrain(args: list[str], *, env: dict[str, str], log: Path) -> None:
    """Runs an fsdtrain command in a child process (Lightning relaunches it once per rank),
    streaming its output to the terminal and to ``log``."""
    cmd = [sys.executable, "-m", "fsdtrain", *args]
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                f.write(line)
                if line.startswith("fsdtrain") or "Error" in line:
                    print("   " + line.rstrip(), flush=True)
            code = proc.wait()
        except BaseException:  # stopped (SIGTERM, Ctrl-C): the child stops its ranks and workers, then exits
            stop_child(proc, received() or signal.SIGTERM)
            raise
    if code != 0:
        raise FsdtrainError(f"`fsdtrain {args[0]}` failed with exit code {code}; see {log}")


def run_demo(workdir: str, *, train_clips: int | None = None) -> int:
    from fsdtrain.synth.fleet import ClipSpec, synth_fleet

    started = time.time()
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    report_path, page_path = root / "report.json", root / "report.html"
    for old in (report_path, page_path):
        old.unlink(missing_ok=True)  # never leave an old report looking like this run's
    splits = dict(SPLITS, train=train_clips or SPLITS["train"])
    _step = _Steps(splits["train"] / SPLITS["train"])
    _step(1, f"starting a local SeaweedFS store in {root / 'store'}")
    with LocalStore(root / "store", zones=BUCKETS) as store:
        store.apply_env()
        print(f"   S3 endpoint {store.endpoint}; buckets {', '.join(BUCKETS.values())}, one key per zone", flush=True)

        _step(2, "synthesizing CN, US and DE clips: " + ", ".join(f"{n} {s}" for s, n in splits.items()) + " per country")
        for country in COUNTRIES:
            for split, clips in splits.items():
                per_shard = max(1, clips // 6) if split == "train" else CLIPS_PER_SHARD[split]  # several shards per rank
                synth_fleet(
                    dataset_url(country), [country], clips, clips_per_shard=per_shard, split=split,
                    seed=SPLIT_SEEDS[split], clip=ClipSpec(rig=RIG, only=CAMERAS), workers=2, replace=True,
                )  # fmt: skip
            print(f"   {country}: written to {dataset_url(country)}/<split>/{country} (zone {COUNTRIES[country]})", flush=True)

        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "FSDTRAIN_JOB": "demo"}
        # each site holds only its own zone's key: the store refuses the global job any CN object
        global_site, cn_site = {**env, **store.zone_env("global")}, {**env, **store.zone_env("cn")}
        pretrain_dir, finetune_dir = root / "pretrain", root / "finetune-cn"
        _step(3, "pretraining the global model on US + DE (site zone global, DeepSpeed ZeRO-2, 2 CPU ranks)")
        _fsdtrain(
            ["fit", "--config", str(config_path("demo.yaml")), "--workdir", str(pretrain_dir), "--site.zone", "global",
             "--trainer.enable_progress_bar", "false"],
            env=global_site, log=root / "pretrain.log",
        )  # fmt: skip

        _step(4, "fine-tuning the CN head on CN clips (site zone cn, backbone frozen)")
        _fsdtrain(
            ["finetune", "--config", str(config_path("finetune_cn.yaml")), "--from", str(pretrain_dir / "model.safetensors"),
             "--workdir", str(finetune_dir), "--site.zone", "cn", "--trainer.enable_progress_bar", "false"],
            env=cn_site, log=root / "finetune-cn.log",
        )  # fmt: skip

        _step(5, "evaluating on held-out clips of every country (site zone cn, reviewer key for both buckets)")
        test_urls = [f"{dataset_url(c)}/test/{c}" for c in COUNTRIES]
        plots = root / "plots"
        if plots.is_dir():  # the pictures of an earlier demo in this workdir are not this run's
            for old in plots.glob("*.png"):
                old.unlink()
        _fsdtrain(
            ["eval", "--ckpt", str(finetune_dir / "model.safetensors"), "--data", *test_urls, "--site.zone", "cn",
             "--audit-log", str(root / "eval-audit.jsonl"), "--out", str(report_path), "--plots", str(plots),
             "--wandb.project", "fsdtrain-demo", "--wandb.group", "demo"],  # beside the training runs
            env=env, log=root / "eval.log",
        )  # fmt: skip
        for run_dir in offline_runs(root):  # the eval's W&B writer may still be flushing its file
            wait_finished(run_dir)
        _step(6, "stopping the store; writing the report page")
    print("\n" + format_table(read_report_json(report_path)))
    # the eval folder is the workdir itself: report.json, plots/ and the eval's wandb/ are there
    write_page([str(pretrain_dir), str(finetune_dir), str(root)], page_path, dest_zone="cn")
    print(f"\ndemo finished in {time.time() - started:.0f} s; W&B offline runs under {pretrain_dir / 'wandb'}, {finetune_dir / 'wandb'} and {root / 'wandb'}")
    print(f"eval report: {report_path}")
    print(f"report: {page_path}")
    return 0
