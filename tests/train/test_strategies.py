"""fsdtrain/train/strategies.py: every strategy name runs on the CPU (gloo, DeepSpeed's CPU accelerator)
and picks NCCL when the accelerator is a GPU, from the same config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

from fsdtrain.errors import ConfigError
from fsdtrain.train.strategies import STRATEGY_NAMES, FleetDeepSpeedStrategy, adamw_class, register_strategies

REPO = Path(__file__).resolve().parents[2]

#: name -> (ZeRO stage, optimizer offloaded, parameters offloaded); None: plain DDP
EXPECTED = {
    "ddp": None,
    "deepspeed_stage_1": (1, False, False),
    "deepspeed_stage_2": (2, False, False),
    "deepspeed_stage_3": (3, False, False),
    "deepspeed_stage_3_offload": (3, True, True),
}


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_strategies()


def _strategy(name: str, accelerator, device: torch.device):
    strategy = StrategyRegistry.get(name)
    strategy.accelerator = accelerator
    strategy.parallel_devices = [device]
    return strategy


def test_every_name_has_its_strategy_and_its_config_piece():
    assert set(STRATEGY_NAMES) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        strategy = StrategyRegistry.get(name)
        piece = REPO / "configs" / "strategy" / f"{name}.yaml"
        assert f"strategy: {name}" in piece.read_text(), piece
        if expected is None:
            assert type(strategy) is DDPStrategy
            continue
        stage, offload_optimizer, offload_params = expected
        assert isinstance(strategy, FleetDeepSpeedStrategy), name
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_optimizer" in zero, "offload_param" in zero) == (offload_optimizer, offload_params)
        assert strategy.offloads_optimizer == offload_optimizer


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_the_accelerator_picks_the_process_group_backend(name):
    assert _strategy(name, CPUAccelerator(), torch.device("cpu"))._get_process_group_backend() == "gloo"
    gpu = _strategy(name, CUDAAccelerator(), torch.device("cuda", 0))  # no GPU needed to decide
    assert gpu._get_process_group_backend() == "nccl"
    if isinstance(gpu, FleetDeepSpeedStrategy):
        assert not gpu._on_cpu()  # Lightning's own CUDA path: device checks, device_rank, NCCL


def test_deepspeed_follows_the_lightning_accelerator():
    from deepspeed.accelerator import get_accelerator

    _strategy("deepspeed_stage_2", CPUAccelerator(), torch.device("cpu"))._select_deepspeed_accelerator()
    assert get_accelerator().device_name() == "cpu"
    if not torch.cuda.is_available():  # a GPU run on a machine where DeepSpeed found no GPU: one line, not a hang
        with pytest.raises(ConfigError, match="DeepSpeed's accelerator is 'cpu'"):
            _strategy("deepspeed_stage_2", CUDAAccelerator(), torch.device("cuda", 0))._select_deepspeed_accelerator()


def test_optimizer_offload_gets_deepspeeds_cpu_adam():
    for name in STRATEGY_NAMES:
        cls = adamw_class(StrategyRegistry.get(name))
        assert cls.__name__ == ("DeepSpeedCPUAdam" if name.endswith("_offload") else "AdamW"), name
    assert adamw_class(StrategyRegistry.get("deepspeed_stage_2_offload")).__name__ == "DeepSpeedCPUAdam"


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_offload_trains_on_cpu_like_zero2(tmp_path):
    """2 CPU ranks: ZeRO-3 with parameter and optimizer offload (DeepSpeed's CPU Adam, built on first
    use) ends where ZeRO-2 with torch's AdamW does."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    results = {}
    for name in ("deepspeed_stage_2", "deepspeed_stage_3_offload"):
        out = tmp_path / f"{name}.json"
        args = ["--strategy", name, "--devices", "2", "--micro", "2", "--accumulation", "2", "--steps", "2", "--clip", "0.5", "--out", str(out)]
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "tiny_fit.py"), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
        results[name] = json.loads(out.read_text())
    zero2, zero3 = results["deepspeed_stage_2"], results["deepspeed_stage_3_offload"]
    assert (zero2["optimizer"], zero3["optimizer"]) == ("AdamW", "DeepSpeedCPUAdam")
    assert zero3["train_batch_size"] == 8 and zero3["gradient_clipping"] == 0.5
    torch.testing.assert_close(torch.tensor(zero3["weights"]), torch.tensor(zero2["weights"]), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_pretrain_config_trains_in_bf16_under_deepspeed_on_cpu(tiny_fleet, tmp_path):
    """configs/pretrain_global.yaml as it is (bf16-mixed, ZeRO-2) on one CPU rank: DeepSpeed casts the
    buffers with the weights (BatchNorm statistics, the encoder's normalisation), so the steps run."""
    env = {k: v for k, v in os.environ.items() if k != "FSDTRAIN_SITE_ZONE"}
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "fit", "--config", "configs/pretrain_global.yaml", "--model.net", "configs/model/tiny.yaml",
         "--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", "[]", "--data.window.history", "2", "--data.window.window_stride", "2",
         "--data.image_size", "null", "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "1.0", "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    assert (tmp_path / "model.safetensors").exists()
