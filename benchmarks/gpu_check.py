"""The CUDA path in one command, in minutes: the production model trained on one GPU through the real loader.

On a machine with CUDA it:

1. writes a small synthetic fleet (``fsdtrain data synth``, US and DE, 10 s clips at the production
   config's image size, 6 cameras) to a local ``file://`` folder, enough windows for ``--steps`` steps;
2. measures decoding alone: frames/s of ``decode_video`` (the loader's decoder) on one CPU core;
3. with 2 or more GPUs, times a 2-process NCCL all-reduce (bus bandwidth, as nccl-tests reports it);
4. trains ``configs/pretrain_global.yaml`` as it is (ResNet-34 6-camera model, bf16-mixed, DeepSpeed
   ZeRO-2, its micro batch and loader workers) on one GPU for ``--steps`` steps through ``fsdtrain fit``
   in this process, reading the synthetic shards through the real loader, and reads back the figures
   the ``Throughput`` callback logged (fsdtrain/train/callbacks.py): MFU, windows/s per GPU, the
   fraction of step time spent waiting for data; plus the peak GPU memory torch allocated.

It prints one JSON line (the last line) and stays under ``--budget-s`` (default 450 s: training gets
what synthesis and the other measurements leave, as ``trainer.max_time``). On a machine without CUDA
it prints one line saying so and exits 0. Record a run's figures in benchmarks/README.md.

    python benchmarks/gpu_check.py [--steps 60] [--budget-s 450] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pretrain_global.yaml"
COUNTRIES = ("US", "DE")
CLIP_SECONDS = 10.0
LOG_EVERY = 10  # steps per logged Throughput row
SKIP_ROWS = 2  # logged rows left out of the medians: cuDNN autotuning, first decodes, the FLOP count
NO_CUDA = "gpu_check: no CUDA device is visible to torch, so there is nothing to measure here; run it on a machine with an NVIDIA GPU"


def production() -> dict:
    """What configs/pretrain_global.yaml trains with: model file, image size, micro batch, workers, window, precision, strategy."""
    config = yaml.safe_load(CONFIG.read_text())
    data, trainer = config["data"], config["trainer"]
    return {
        "config": str(CONFIG.relative_to(REPO)), "model": str((CONFIG.parent / config["model"]["net"]).relative_to(REPO)),
        "image_size": list(data["image_size"]), "micro_batch": int(data["batch_size"]), "loader_workers": int(data["num_workers"]),
        "window": dict(data["window"]), "precision": trainer["precision"], "strategy": trainer["strategy"],
    }  # fmt: skip


def clips_per_country(steps: int, settings: dict) -> int:
    """Clips per country so that one epoch holds ``steps`` micro batches (no epoch boundary inside the measurement)."""
    from fsdtrain.format.windows import WindowSpec

    per_clip = WindowSpec(**settings["window"]).count(int(CLIP_SECONDS * 10), 10.0)
    return math.ceil(steps * settings["micro_batch"] / per_clip / len(COUNTRIES)) + 2


def synth_args(out: str, clips: int, settings: dict, workers: int) -> list[str]:
    """``fsdtrain data synth`` of the fleet the check trains on, at the production image size (no resizing in the loader)."""
    height, width = settings["image_size"]
    return ["data", "synth", "--out", out, "--countries", ",".join(COUNTRIES), "--clips", str(clips), "--clips-per-shard", "8",
            "--width", str(width), "--height", str(height), "--seconds", str(CLIP_SECONDS), "--workers", str(workers)]  # fmt: skip


def fit_args(workdir: str, train: list[str], *, steps: int, max_time_s: int) -> list[str]:
    """``fsdtrain fit`` of the production config on one GPU: only the data, the length, and what would
    write or draw beside the measurement (validation, W&B, the progress bar) differ from the file."""
    hours, rest = divmod(max(60, max_time_s), 3600)
    return [
        "fit", "--config", str(CONFIG), "--workdir", workdir, "--site.zone", "global",
        "--data.train", json.dumps(train), "--data.val", "[]",
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
        "--trainer.max_steps", str(steps), "--trainer.max_time", f"00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}",
        "--trainer.log_every_n_steps", str(LOG_EVERY), "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--model.optim.warmup_steps", "10",
    ]  # fmt: skip


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a CSVLogger metrics file, with the values present in each (empty cells left out)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def summarize(rows: list[dict[str, float]], *, skip: int = SKIP_ROWS) -> dict:
    """Medians of the Throughput rows after the first ``skip`` (MFU is absent where the GPU's peak is unknown)."""
    perf = [r for r in rows if "perf/windows_per_s_per_rank" in r][skip:]
    if not perf:
        raise RuntimeError(f"no Throughput rows after the first {skip}: train more steps (--steps) or give it more time (--budget-s)")

    def median(key: str) -> float | None:
        values = [r[key] for r in perf if key in r]
        return statistics.median(values) if values else None

    return {
        "mfu": median("perf/mfu"), "windows_per_s_per_gpu": median("perf/windows_per_s_per_rank"),
        "data_wait_fraction": median("perf/data_wait_fraction"), "step_time_s": median("perf/step_time_s"),
        "measured_steps": f"{int(perf[0].get('step', 0)) + 1}-{int(perf[-1].get('step', 0)) + 1}", "rows": len(perf),
    }  # fmt: skip


def decode_rate(shards: Path, seconds: float) -> dict:
    """Frames/s of ``decode_video`` (every frame of each camera video, channels first as the loader asks)
    in this one thread: one CPU core's decoding, the loader's main cost."""
    from fsdtrain.format.samples import read_tar
    from fsdtrain.format.video import decode_video

    frames = videos = 0
    start = time.perf_counter()
    for shard in sorted(shards.glob("shard-*.tar")):
        for sample in read_tar(shard.read_bytes()):
            count = json.loads(sample.members["meta.json"])["frames"]
            for name, data in sample.members.items():
                if name.endswith(".mp4"):
                    frames += len(decode_video(data, frames=count, where=f"{shard.name}/{sample.key}/{name}", channels_first=True))
                    videos += 1
            if time.perf_counter() - start >= seconds:
                break
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    return {"decode_frames_per_s_per_core": frames / elapsed, "decode_videos": videos}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_rank(rank: int, world: int, backend: str, port: int, numel: int, iters: int, out) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        x = torch.ones(numel, dtype=torch.float32, device=device)
        for _ in range(3):  # warm-up: communicator set-up and the first transfers
            dist.all_reduce(x)
        if backend == "nccl":
            torch.cuda.synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        if backend == "nccl":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if rank == 0:
            out.put(elapsed / iters)
    finally:
        dist.destroy_process_group()


def allreduce(world: int = 2, *, backend: str = "nccl", mib: float = 256, iters: int = 20, timeout_s: float = 120) -> dict:
    """Seconds per all-reduce of ``mib`` MiB of float32 over ``world`` processes (one GPU each with NCCL), as
    nccl-tests reports it: algorithm bandwidth = bytes / time, bus bandwidth = that x 2 (world - 1) / world."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    numel = int(mib * 2**20) // 4
    port = _free_port()
    procs = [ctx.Process(target=_allreduce_rank, args=(r, world, backend, port, numel, iters, out)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if hung or any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"{backend} all-reduce over {world} processes failed (exit codes {[p.exitcode for p in procs]})")
    seconds = out.get(timeout=5)
    algbw = numel * 4 / seconds / 1e9
    return {"backend": backend, "processes": world, "mib": mib, "seconds": seconds, "algbw_gb_s": algbw, "busbw_gb_s": algbw * 2 * (world - 1) / world}


def assemble(*, settings: dict, device: str, gpus: int, train: dict, peak: dict, decode: dict, nccl: dict | None, seconds: float, machine: dict) -> dict:
    """The one JSON object the check prints: the figures first, then what produced them."""
    return {
        "benchmark": "gpu_check",
        "mfu": train["mfu"],
        "windows_per_s_per_gpu": train["windows_per_s_per_gpu"],
        "data_wait_fraction": train["data_wait_fraction"],
        "peak_gpu_memory_gib": peak["allocated_gib"],
        "peak_gpu_memory_reserved_gib": peak["reserved_gib"],
        "decode_frames_per_s_per_core": decode["decode_frames_per_s_per_core"],
        "nccl_allreduce_busbw_gb_s": None if nccl is None else nccl["busbw_gb_s"],
        "step_time_s": train["step_time_s"],
        "measured_steps": train["measured_steps"],
        "notes": ([] if train["mfu"] is not None else [f"no MFU: the bf16 peak of {device!r} is not in fsdtrain/train/mfu.py"])
        + ([] if nccl is not None else [f"no all-reduce figure: {gpus} GPU visible, it needs 2"]),
        "device": device,
        "gpus": gpus,
        "nccl": nccl,
        **{k: settings[k] for k in ("config", "model", "precision", "strategy", "micro_batch", "image_size", "loader_workers")},
        "seconds": round(seconds, 1),
        **machine,
    }


def _cli(argv: list[str]) -> None:
    from fsdtrain.cli import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"fsdtrain {' '.join(argv[:2])} exited {code} (its error is above)")


def run(args: argparse.Namespace) -> dict:
    """The measurements on a CUDA machine; returns the JSON object."""
    import torch
    from machine import describe

    start, load_before = time.monotonic(), os.getloadavg()[0]
    settings = production()
    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name(0)
    nccl = allreduce(2, backend="nccl") if gpus >= 2 else None
    root = Path(args.workdir or tempfile.mkdtemp(prefix="fsdtrain-gpu-check-")).resolve()
    try:
        clips = clips_per_country(args.steps, settings)
        _cli(synth_args(f"file://{root}/fleet", clips, settings, workers=os.cpu_count() or 1))
        decode = decode_rate(root / "fleet" / "train" / COUNTRIES[0], seconds=10.0)
        left = int(args.budget_s - (time.monotonic() - start) - 60)  # start-up, weights export and exit need about a minute
        if left < 120:
            raise RuntimeError(f"only {left} s of --budget-s {args.budget_s} left for training after synthesis: raise --budget-s")
        torch.cuda.reset_peak_memory_stats()
        train_urls = [f"file://{root}/fleet/train/{c}" for c in COUNTRIES]
        _cli(fit_args(str(root / "run"), train_urls, steps=args.steps, max_time_s=left))
        peak = {"allocated_gib": torch.cuda.max_memory_allocated() / 2**30, "reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
        train = summarize(read_metrics(root / "run" / "metrics" / "version_0" / "metrics.csv"))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return assemble(settings=settings, device=device, gpus=gpus, train=train, peak=peak, decode=decode, nccl=nccl,
                    seconds=time.monotonic() - start, machine=describe(load_before=load_before))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps (figures: the median of the rows logged after the first two)")
    parser.add_argument("--budget-s", type=int, default=450, help="wall-clock seconds for everything; training gets what is left")
    parser.add_argument("--workdir", default=None, help="keep the synthetic fleet and the run here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.steps < (SKIP_ROWS + 1) * LOG_EVERY:
        parser.error(f"--steps must be >= {(SKIP_ROWS + 1) * LOG_EVERY}: the figures are medians of rows logged every {LOG_EVERY} steps after the first {SKIP_ROWS}")
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py beside it
    sys.exit(main())
