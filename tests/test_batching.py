"""fsdtrain/batching.py: global batch = micro batch x accumulation x world size, computed once,
written into DeepSpeed's config, and honoured by the optimizer steps of a real 2-rank ZeRO run."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment

from fsdtrain.batching import BatchPlan, plan_batches
from fsdtrain.errors import ConfigError
from fsdtrain.train.strategies import FleetDeepSpeedStrategy

REPO = Path(__file__).resolve().parents[1]


def test_global_batch_is_micro_times_accumulation_times_world():
    plan = plan_batches(micro_batch=4, world_size=8, accumulation=2)
    assert plan == BatchPlan(micro_batch=4, accumulation=2, world_size=8) and plan.global_batch == 64
    assert plan.deepspeed_config() == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 64}
    assert plan_batches(micro_batch=3, world_size=2).accumulation == 1
    assert plan.describe() == "global batch 64 = micro batch 4 x accumulation 2 x 8 ranks"


def test_a_global_batch_sets_the_accumulation_for_each_world_size():
    # the same config on a laptop and on a cluster: the optimizer sees 64 windows per step on both
    assert plan_batches(micro_batch=8, world_size=2, global_batch=64).accumulation == 4
    assert plan_batches(micro_batch=8, world_size=8, global_batch=64).accumulation == 1
    assert plan_batches(micro_batch=8, world_size=2, accumulation=4, global_batch=64).global_batch == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"micro_batch": 2, "world_size": 4, "global_batch": 10}, "data.global_batch_size 10 does not divide by the world size 4"),
        ({"micro_batch": 4, "world_size": 2, "global_batch": 12}, "6 windows per rank on 2 rank(s), not a multiple of data.batch_size 4"),
        ({"micro_batch": 2, "world_size": 2, "accumulation": 3, "global_batch": 8}, "trainer.accumulate_grad_batches 3 disagrees"),
        ({"micro_batch": 0, "world_size": 2}, "data.batch_size must be >= 1"),
        ({"micro_batch": 2, "world_size": 2, "accumulation": 0}, "trainer.accumulate_grad_batches must be >= 1"),
    ],
)
def test_batches_that_do_not_fit_fail_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as err:
        plan_batches(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def _strategy_for(*, devices: int, micro: int, accumulation: int, clip: float | None, global_batch=None, config=None):
    """A FleetDeepSpeedStrategy as Trainer.fit would have it when it formats the DeepSpeed config."""
    strategy = FleetDeepSpeedStrategy(stage=2, config=config)
    strategy.parallel_devices = [torch.device("cpu")] * devices
    strategy.cluster_environment = LightningEnvironment()
    strategy.set_world_ranks()  # world size = num_nodes x devices, as the Trainer sets it up
    datamodule = SimpleNamespace(batch_size=micro, global_batch_size=global_batch)
    trainer = SimpleNamespace(accumulate_grad_batches=accumulation, gradient_clip_val=clip, datamodule=datamodule)
    strategy._lightning_module = SimpleNamespace(trainer=trainer)
    return strategy


def test_deepspeed_config_gets_the_plan_and_the_clipping():
    strategy = _strategy_for(devices=2, micro=3, accumulation=2, clip=0.7)
    strategy._format_batch_size_and_grad_accum_config()
    assert {k: strategy.config[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")} == {
        "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2, "train_batch_size": 12, "gradient_clipping": 0.7,
    }  # fmt: skip
    strategy = _strategy_for(devices=2, micro=3, accumulation=1, clip=None)
    strategy._format_batch_size_and_grad_accum_config()
    assert strategy.config["gradient_clipping"] == 0.0 and strategy.config["train_batch_size"] == 6


def test_a_deepspeed_config_that_disagrees_with_the_run_fails():
    with pytest.raises(ConfigError, match="the DeepSpeed config sets train_batch_size=16, but this run has train_batch_size=12"):
        _strategy_for(devices=2, micro=3, accumulation=2, clip=None, config={"train_batch_size": 16})._format_batch_size_and_grad_accum_config()
    with pytest.raises(ConfigError, match="does not divide by the world size 2"):
        _strategy_for(devices=2, micro=1, accumulation=1, clip=None, global_batch=3)._format_batch_size_and_grad_accum_config()


def test_cli_refuses_a_global_batch_the_ranks_cannot_split_before_starting_them(tiny_fleet, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FSDTRAIN_SITE_ZONE"}
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "fit", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml",
         "--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", "[]", "--data.batch_size", "2", "--data.global_batch_size", "5",
         "--trainer.devices", "2", "--wandb.mode", "disabled", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]  # above it: Lightning's own info lines ("GPU available: ...")
    assert last.startswith("fsdtrain: error: data.global_batch_size 5 does not divide by the world size 2"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Initializing distributed" not in proc.stderr  # no rank was started


def _tiny_fit(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "tiny_fit.py"), *args, "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_honours_the_accumulation(tmp_path):
    """2 ranks x micro 2 x accumulation 2 steps on the same 8 windows per optimizer step as 2 ranks x
    micro 4: same weights after 2 optimizer steps (clipped by norm in both); micro 2 without
    accumulation takes its 2 steps on half the windows and ends elsewhere."""
    common = ["--strategy", "deepspeed_stage_2", "--devices", "2", "--steps", "2", "--clip", "0.5"]
    accumulated = _tiny_fit(tmp_path, "acc", *common, "--micro", "2", "--accumulation", "2")
    big = _tiny_fit(tmp_path, "big", *common, "--micro", "4", "--accumulation", "1")
    small = _tiny_fit(tmp_path, "small", *common, "--micro", "2", "--accumulation", "1")
    assert {k: accumulated[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")} == {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "train_batch_size": 8, "gradient_clipping": 0.5,
    }  # fmt: skip
    assert big["train_batch_size"] == 8 and small["train_batch_size"] == 4
    assert accumulated["global_step"] == big["global_step"] == small["global_step"] == 2
    w_acc, w_big, w_small = (torch.tensor(r["weights"]) for r in (accumulated, big, small))
    torch.testing.assert_close(w_acc, w_big, rtol=0, atol=1e-5)
    assert (w_acc - w_small).abs().max() > 1e-3
