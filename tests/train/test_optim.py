"""fsdtrain/train/optim.py and DrivingModule.configure_optimizers: AdamW decay groups (none on norms,
biases, embeddings), warmup + cosine schedule. Clipping by norm reaching DeepSpeed: tests/train/test_batching.py."""

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn

from fsdtrain.model.driving import ModelConfig
from fsdtrain.train.finetune import FinetuneConfig
from fsdtrain.train.module import DrivingModule, OptimConfig
from fsdtrain.train.optim import decay_split, no_decay_reason, param_groups, warmup_cosine, warmup_steps_for
from fsdtrain.weights.files import save_weights
from fsdtrain.weights.metadata import WeightsMeta

TINY = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml").read_text())
#: the tiny model's embedding tables: fusion's camera/frame/position tables, the command embedding, the mode queries
EMBEDDINGS = {"net.fusion.cam_emb", "net.fusion.frame_emb", "net.fusion.pos_emb", "net.command_embed.weight", "net.heads.heads.global.queries"}


def tiny_module(**kwargs) -> DrivingModule:
    torch.manual_seed(0)
    return DrivingModule(net=ModelConfig(**TINY), **kwargs)


def test_decay_groups_hold_exactly_the_weights():
    m = tiny_module()
    decay, no_decay = decay_split(m)
    modules = dict(m.named_modules())
    names = [n for n, _ in m.named_parameters()]
    assert sorted(decay + no_decay) == sorted(names)  # every trainable parameter, once
    norms = {n for n in names if isinstance(modules[n.rsplit(".", 1)[0]], (nn.BatchNorm2d, nn.LayerNorm))}
    biases = {n for n in names if n.endswith("bias")}  # .bias, MultiheadAttention's in_proj_bias
    assert norms and biases and EMBEDDINGS <= set(names)
    assert set(no_decay) == norms | biases | EMBEDDINGS
    # what decays: the matrices of convolutions, linear layers and attention projections
    assert all(n.endswith(("weight", "in_proj_weight")) and dict(m.named_parameters())[n].ndim >= 2 for n in decay)
    assert "net.ego_embed.0.weight" in decay  # an MLP that embeds the ego state: a Linear, not a table
    assert "net.fusion.blocks.layers.0.self_attn.in_proj_weight" in decay


def test_param_groups_carry_the_weight_decay():
    m = tiny_module()
    groups = param_groups(m, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay, no_decay = decay_split(m)
    params = dict(m.named_parameters())
    assert [id(p) for p in groups[0]["params"]] == [id(params[n]) for n in decay]
    assert [id(p) for p in groups[1]["params"]] == [id(params[n]) for n in no_decay]


def test_frozen_parameters_are_left_out(tmp_path):
    pre = tiny_module()
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), WeightsMeta())
    ft = tiny_module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    decay, no_decay = decay_split(ft)
    assert {n for n, p in ft.named_parameters() if p.requires_grad} == set(decay) | set(no_decay)
    assert "net.heads.heads.CN.queries" in no_decay and "net.heads.heads.CN.mlp.0.weight" in decay
    assert not any(".global." in n or ".fusion." in n for n in decay + no_decay)


def test_no_decay_reasons():
    assert no_decay_reason(nn.LayerNorm(4), "weight", torch.ones(4)) == "norm"
    assert no_decay_reason(nn.GroupNorm(2, 4), "weight", torch.ones(4)) == "norm"
    assert no_decay_reason(nn.Linear(4, 4), "bias", torch.ones(4)) == "bias"
    assert no_decay_reason(nn.Embedding(3, 4), "weight", torch.ones(3, 4)) == "embedding"
    assert no_decay_reason(nn.Module(), "pos_embed", torch.ones(1, 8, 4)) == "embedding"
    assert no_decay_reason(nn.Module(), "gamma", torch.ones(4)) == "scale"  # LayerScale (ConvNeXt)
    assert no_decay_reason(nn.Linear(4, 4), "weight", torch.ones(4, 4)) is None
    assert no_decay_reason(nn.Conv2d(4, 4, 3), "weight", torch.ones(4, 4, 3, 3)) is None
    assert no_decay_reason(nn.Module(), "member_proj", torch.ones(4, 4)) is None  # "emb" inside a word is no embedding


def test_warmup_then_cosine_at_given_steps():
    f = lambda step: warmup_cosine(step, warmup=10, total=110, min_ratio=0.1)  # noqa: E731
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warmup to the peak
    assert f(10) == pytest.approx(1.0)  # the cosine starts at the peak
    assert f(60) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # floor at the end and after
    assert warmup_cosine(0, warmup=0, total=10, min_ratio=0.0) == pytest.approx(1.0)  # no warmup
    assert warmup_steps_for(2000, 200_000) == 2000 and warmup_steps_for(20, 10) == 2 and warmup_steps_for(20, 3) == 1


def test_configure_optimizers_runs_the_schedule_per_optimizer_step():
    m = tiny_module(optim=OptimConfig(lr=1e-3, weight_decay=0.02, warmup_steps=10, min_lr_ratio=0.1))
    m.trainer = pl.Trainer(accelerator="cpu", max_epochs=-1, max_steps=110, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    config = m.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.AdamW and config["lr_scheduler"]["interval"] == "step"
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.02, 0.0]
    lrs = []
    for _ in range(111):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[60] == pytest.approx(0.55e-3)
    assert lrs[110] == pytest.approx(1e-4)
    assert all(g["lr"] == optimizer.param_groups[0]["lr"] for g in optimizer.param_groups)  # both groups follow it
