"""benchmarks/gpu_check.py without a GPU: the one-line exit where there is no CUDA, the fit it runs (the
production config, parsed by the real CLI), the synthetic fleet it writes, its decode and all-reduce
measurements (the all-reduce over gloo, the same code NCCL runs), and the JSON line it assembles from a
metrics file as Lightning's CSVLogger writes it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from fsdtrain.cli import _parser, main
from fsdtrain.launch.jobs import resolve_config

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def check():
    """The script as a module (it imports its sibling ``machine`` module; spawned ranks import it by name)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, "gpu_check", module)
        spec.loader.exec_module(module)
        yield module


def test_without_cuda_it_says_so_in_one_line_and_exits_0(check):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, on any machine
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == check.NO_CUDA + "\n"
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--steps", "20"])  # too few steps for the medians: refused before anything runs
    assert exit_info.value.code == 2


def test_it_trains_the_production_config_with_only_data_length_and_output_changed(check, tmp_path):
    train = [f"file://{tmp_path}/fleet/train/US", f"file://{tmp_path}/fleet/train/DE"]
    args = check.fit_args(str(tmp_path / "run"), train, steps=60, max_time_s=300)
    assert args[:3] == ["fit", "--config", str(check.CONFIG)]
    ran = resolve_config(str(check.CONFIG), args[3:], nodes=1, gpus_per_node=1)
    production = resolve_config(str(check.CONFIG), [], nodes=1, gpus_per_node=1)

    def changed(a, b, path=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return {p for k in a.keys() | b.keys() for p in changed(a.get(k), b.get(k), f"{path}.{k}" if path else k)}
        return set() if a == b else {path}

    assert changed(ran, production) == {
        "data.train", "data.val", "workdir", "wandb.mode", "model.optim.warmup_steps", "trainer.accelerator",
        "trainer.max_steps", "trainer.max_time", "trainer.log_every_n_steps", "trainer.limit_val_batches", "trainer.enable_progress_bar",
    }  # fmt: skip
    assert ran["data"]["train"] == train and ran["trainer"]["max_steps"] == 60 and ran["trainer"]["max_time"] == "00:00:05:00"
    assert (ran["trainer"]["strategy"], ran["trainer"]["precision"], ran["trainer"]["devices"]) == ("deepspeed_stage_2", "bf16-mixed", 1)
    assert ran["model"]["net"]["encoder"] == "resnet34" and ran["data"]["image_size"] == [256, 448]


def test_the_fleet_it_writes_holds_one_epoch_of_its_steps_at_the_production_size(check, tmp_path):
    settings = check.production()
    clips = check.clips_per_country(60, settings)
    synth = _parser().parse_args(check.synth_args(f"file://{tmp_path}/fleet", clips, settings, workers=16))
    assert (synth.height, synth.width) == tuple(settings["image_size"]) and synth.countries == ["US", "DE"]
    from fsdtrain.format.windows import WindowSpec

    windows = 2 * clips * WindowSpec(**settings["window"]).count(int(synth.seconds * synth.fps), synth.fps)
    assert 60 * settings["micro_batch"] <= windows <= 2 * 60 * settings["micro_batch"]


def test_decode_rate_and_the_all_reduce_code_path(check, tmp_path, capsys):
    args = ["--countries", "US", "--clips", "1", "--width", "64", "--height", "48", "--seconds", "5"]
    assert main(["data", "synth", "--out", f"file://{tmp_path}/fleet", *args]) == 0
    decode = check.decode_rate(tmp_path / "fleet" / "train" / "US", seconds=30)
    assert decode["decode_videos"] == 6 and decode["decode_frames_per_s_per_core"] > 0  # one clip of 6 cameras, every video once
    reduced = check.allreduce(2, backend="gloo", mib=1, iters=3, timeout_s=120)
    assert reduced["backend"] == "gloo" and reduced["processes"] == 2 and reduced["seconds"] > 0
    assert reduced["busbw_gb_s"] == pytest.approx(reduced["algbw_gb_s"])  # 2 (n - 1) / n = 1 for 2 processes
    capsys.readouterr()


def test_the_json_line_from_a_lightning_metrics_file(check, tmp_path):
    logger = CSVLogger(str(tmp_path), name="metrics")  # as FleetCLI logs with W&B disabled
    for i, step in enumerate(range(9, 60, 10)):  # Throughput logs every 10 steps; the first two rows are skipped
        row = {"perf/windows_per_s_per_rank": 100.0 + i, "perf/data_wait_fraction": 0.5 - 0.1 * i, "perf/step_time_s": 0.08}
        if i != 3:
            row["perf/mfu"] = 0.3 + 0.01 * i  # a row without MFU counts for the others
        logger.log_metrics(row, step=step)
        logger.log_metrics({"train/loss": 1.0}, step=step)
    logger.save()
    train = check.summarize(check.read_metrics(tmp_path / "metrics" / "version_0" / "metrics.csv"))
    assert train["windows_per_s_per_gpu"] == pytest.approx(103.5) and train["data_wait_fraction"] == pytest.approx(0.15)
    assert train["mfu"] == pytest.approx(0.34) and train["rows"] == 4 and train["measured_steps"] == "30-60"
    out = check.assemble(settings=check.production(), device="NVIDIA H100 80GB HBM3", gpus=1, train=train,
                         peak={"allocated_gib": 30.5, "reserved_gib": 33.0}, decode={"decode_frames_per_s_per_core": 900.0},
                         nccl=None, seconds=301.26, machine={"machine": "test"})  # fmt: skip
    line = json.dumps(out)
    assert "\n" not in line and json.loads(line) == out
    assert list(out)[:7] == ["benchmark", "mfu", "windows_per_s_per_gpu", "data_wait_fraction", "peak_gpu_memory_gib",
                             "peak_gpu_memory_reserved_gib", "decode_frames_per_s_per_core"]  # fmt: skip
    assert out["nccl_allreduce_busbw_gb_s"] is None and out["notes"] == ["no all-reduce figure: 1 GPU visible, it needs 2"]
    assert (out["model"], out["precision"], out["strategy"], out["seconds"]) == ("configs/model/resnet34_6cam.yaml", "bf16-mixed", "deepspeed_stage_2", 301.3)
    without_mfu = check.assemble(settings=check.production(), device="NVIDIA B300", gpus=2, train={**train, "mfu": None}, peak={"allocated_gib": 1, "reserved_gib": 1},
                                 decode={"decode_frames_per_s_per_core": 1}, nccl={"busbw_gb_s": 350.0}, seconds=1, machine={})  # fmt: skip
    assert without_mfu["notes"] == ["no MFU: the bf16 peak of 'NVIDIA B300' is not in fsdtrain/train/mfu.py"] and without_mfu["nccl_allreduce_busbw_gb_s"] == 350.0
    with pytest.raises(RuntimeError, match="no Throughput rows after the first 2"):
        check.summarize(check.read_metrics(tmp_path / "metrics" / "version_0" / "metrics.csv")[:4])
