"""fsdtrain/train/mfu.py and the Throughput callback: peak FLOP/s of known GPUs, MFU, model FLOPs per
training window, and the perf/* keys a real (CPU) run logs."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fsdtrain.model.driving import ModelConfig
from fsdtrain.model.flops import ModelInput, count
from fsdtrain.train.finetune import FinetuneConfig
from fsdtrain.train.mfu import mfu, peak_flops, training_flops_per_window
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.files import save_weights
from fsdtrain.weights.metadata import WeightsMeta

REPO = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((REPO / "configs" / "model" / "tiny.yaml").read_text())


def test_peak_flops_of_known_gpus_at_16_bit():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989.4e12  # SXM
    assert peak_flops("NVIDIA H100 PCIe", "bf16-mixed") == 756.5e12
    assert peak_flops("NVIDIA H200", "bf16-true") == 989.4e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "16-mixed") == 312e12
    assert peak_flops("NVIDIA L40S", "bf16-mixed") == 362.05e12 and peak_flops("NVIDIA L4", "bf16-mixed") == 121e12


def test_peak_flops_of_the_gpus_a_china_site_has():
    assert peak_flops("NVIDIA H800", "bf16-mixed") == 989.4e12  # SXM, as H100 SXM
    assert peak_flops("NVIDIA H800 80GB HBM3", "bf16-true") == 989.4e12
    assert peak_flops("NVIDIA H800 PCIe", "bf16-mixed") == 756.5e12
    assert peak_flops("NVIDIA A800-SXM4-80GB", "bf16-mixed") == 312e12
    assert peak_flops("NVIDIA A800 80GB PCIe", "16-mixed") == 312e12
    assert peak_flops("NVIDIA H20", "bf16-mixed") == 148e12
    assert peak_flops("NVIDIA L20", "bf16-mixed") == 119.5e12
    # names that contain another's: each still gets its own peak
    assert peak_flops("NVIDIA H200", "bf16-mixed") == 989.4e12 and peak_flops("NVIDIA GH200 480GB", "bf16-mixed") == 989.4e12
    assert peak_flops("NVIDIA L40S", "bf16-mixed") == 362.05e12 and peak_flops("NVIDIA L4", "bf16-mixed") == 121e12
    assert peak_flops("NVIDIA H20", "32-true") is None


def test_no_peak_where_it_is_not_known():
    assert peak_flops("NVIDIA H100 80GB HBM3", "32-true") is None  # fp32 has another peak: no MFU rather than a wrong one
    assert peak_flops("cpu", "bf16-mixed") is None
    assert peak_flops("Tesla T4", "16-mixed") is None


def test_mfu_with_a_known_peak():
    # 1.5 TFLOPs per window at 330 windows/s on an H100 SXM: 0.5 of its 989.4 TFLOP/s
    assert mfu(1.5e12, 329.8, 989.4e12) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


def test_training_flops_per_window_is_the_models_forward_and_backward(tmp_path):
    torch.manual_seed(0)
    m = DrivingModule(net=ModelConfig(**TINY))
    c = count(ModelConfig(**TINY), ModelInput(cameras=6, history=2, image_size=(96, 160)))
    state = torch.random.get_rng_state()
    assert training_flops_per_window(m, (96, 160)) == c.flops_train
    assert torch.equal(torch.random.get_rng_state(), state)  # counting leaves the run's random stream alone
    save_weights(tmp_path / "w.safetensors", m.state_dict(), WeightsMeta())
    ft = DrivingModule(net=ModelConfig(**TINY), init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    c2 = count(ModelConfig(**{**TINY, "heads": ["global", "CN"]}), ModelInput(cameras=6, history=2, image_size=(96, 160)))
    assert training_flops_per_window(ft, (96, 160)) == c2.flops_forward + 2 * c2.flops_heads  # no backward through the backbone


@pytest.mark.slow
@pytest.mark.distributed
def test_a_cpu_run_logs_throughput_and_its_batch_plan(tiny_fleet, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FSDTRAIN_SITE_ZONE"}
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "fit", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml",
         "--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", "[]", "--data.window.window_stride", "2",
         "--data.batch_size", "2", "--data.global_batch_size", "4", "--data.num_workers", "0", "--data.image_size", "null",
         "--trainer.devices", "1", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    assert "fsdtrain: global batch 4 = micro batch 2 x accumulation 2 x 1 rank" in proc.stderr
    rows = list(csv.DictReader(open(next(tmp_path.glob("metrics/*/metrics.csv")))))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"perf/windows_per_s_per_rank", "perf/step_time_s", "perf/data_wait_fraction"} <= logged
    assert "perf/mfu" not in logged  # the CPU's peak is unknown
    step_times = [float(r["perf/step_time_s"]) for r in rows if r.get("perf/step_time_s")]
    assert all(t > 0 for t in step_times)
    assert max(int(r["step"]) for r in rows) <= 3  # 3 optimizer steps of 2 micro batches
