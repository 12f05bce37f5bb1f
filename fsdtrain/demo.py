"""``fsdtrain demo``: the whole story on one machine, on CPU, in minutes.

1. start a local SeaweedFS store (buckets ``fleet-global`` and ``fleet-cn``, as two zones would have);
2. synthesize CN, US and DE clips (CN lands in the CN bucket with zone ``cn``), the one camera the demo trains on;
3. pretrain the global model on US + DE at a ``global`` site (DeepSpeed ZeRO-2, 2 CPU ranks);
4. fine-tune a CN head on CN clips at a ``cn`` site, backbone frozen;
5. evaluate on held-out clips of every country against the baselines, write ``report.json``;
6. stop the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fsdtrain.errors import ConfigError, FsdtrainError
from fsdtrain.eval.evaluate import evaluate
from fsdtrain.eval.report import format_table, write_report
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


def _step(n: int, text: str) -> None:
    print(f"\n[demo {n}/6] {text}", flush=True)


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
    report_path = root / "report.json"
    report_path.unlink(missing_ok=True)  # never leave an old report looking like this run's
    splits = dict(SPLITS, train=train_clips or SPLITS["train"])
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
        report = evaluate(str(finetune_dir / "model.safetensors"), test_urls, site_zone="cn", audit_log=str(root / "eval-audit.jsonl"))
        _step(6, "stopping the store")
    write_report(report, report_path)
    print("\n" + format_table(report))
    print(f"\ndemo finished in {time.time() - started:.0f} s; W&B offline runs under {pretrain_dir / 'wandb'} and {finetune_dir / 'wandb'}")
    print(f"report: {report_path}")
    return 0
