"""Every YAML in configs/ runs through the real CLI on CPU (STYLE.md 7), shrunk to tiny data and
a couple of steps; full configs run with their own strategy on 2 gloo ranks."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOP_LEVEL = sorted(p.name for p in CONFIGS.glob("*.yaml"))
PIECES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml"))
TINY_NET = str(CONFIGS / "model" / "tiny.yaml")


def tiny(fleet, countries, workdir):
    train = "[" + ",".join(fleet[c]["train"] for c in countries) + "]"
    # 2 ranks read whole shards: a single country's 1-clip val split cannot feed both, use its train split
    val = "[" + ",".join(fleet[c]["val" if len(countries) > 1 else "train"] for c in countries) + "]"
    return [
        "--workdir", str(workdir), "--data.train", train, "--data.val", val, "--data.window.window_stride", "2",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.image_size", "null", "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true", "--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.val_check_interval", "1.0",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
    ]  # fmt: skip


def run(*args, env_zone=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "FSDTRAIN_SITE_ZONE"}
    if env_zone:
        env["FSDTRAIN_SITE_ZONE"] = env_zone
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_every_config_is_covered():
    assert set(TOP_LEVEL) == {"demo.yaml", "finetune_cn.yaml", "pretrain_global.yaml"}
    for name in TOP_LEVEL:
        assert yaml.safe_load((CONFIGS / name).read_text())["trainer"]["strategy"].startswith("deepspeed")


@pytest.fixture(scope="module")
def pretrained(tiny_fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrained")
    run("fit", "--config", "configs/demo.yaml", *tiny(tiny_fleet, ["US", "DE"], work))
    return work / "model.safetensors"


@pytest.mark.slow
@pytest.mark.distributed
def test_demo_yaml(pretrained):
    with safe_open(str(pretrained), "pt") as f:
        assert "net.heads.heads.global.queries" in f.keys()


@pytest.mark.slow
@pytest.mark.distributed
def test_pretrain_global_yaml(tiny_fleet, tmp_path):
    run("fit", "--config", "configs/pretrain_global.yaml", "--model.net", TINY_NET, *tiny(tiny_fleet, ["US", "DE"], tmp_path), "--trainer.devices", "2")
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_finetune_cn_yaml(tiny_fleet, pretrained, tmp_path):
    run("finetune", "--config", "configs/finetune_cn.yaml", "--from", str(pretrained), *tiny(tiny_fleet, ["CN"], tmp_path))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "net.heads.heads.CN.queries" in f.keys()


@pytest.mark.slow
@pytest.mark.parametrize("piece", [p for p in PIECES if p.startswith("model/")])
def test_model_pieces(piece, tiny_fleet, tmp_path):
    run(
        "fit", "--config", "configs/demo.yaml", "--model.net", str(CONFIGS / piece), *tiny(tiny_fleet, ["US"], tmp_path),
        "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_steps", "1",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("piece", [p for p in PIECES if p.startswith("strategy/")])
def test_strategy_pieces(piece, tiny_fleet, tmp_path):
    run("fit", "--config", "configs/demo.yaml", "--trainer", str(CONFIGS / piece), *tiny(tiny_fleet, ["US", "DE"], tmp_path), "--trainer.devices", "2")
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("piece", [p for p in PIECES if p.startswith("data/")])
def test_data_pieces_parse(piece):
    proc = run("fit", "--config", "configs/demo.yaml", "--data", str(CONFIGS / piece), "--print_config")
    printed = yaml.safe_load(proc.stdout)
    assert printed["data"]["train"] == yaml.safe_load((CONFIGS / piece).read_text())["train"]
