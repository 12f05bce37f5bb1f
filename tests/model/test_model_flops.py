"""benchmarks/model_flops.py: parameter and FLOP counts of the model configs (docs/model.md)."""

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
MODEL_CONFIGS = REPO / "configs" / "model"


@pytest.fixture(scope="module")
def flops():
    """The benchmark script as a module (it imports its sibling ``machine`` module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location("model_flops", BENCHMARKS / "model_flops.py")
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, "model_flops", module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module")
def tiny(flops):
    return flops.load_config(MODEL_CONFIGS / "tiny.yaml"), flops.INPUTS["tiny"]


def test_every_model_yaml_has_its_input_and_says_so(flops):
    assert set(flops.INPUTS) == {p.stem for p in MODEL_CONFIGS.glob("*.yaml")}
    for name, inp in flops.INPUTS.items():
        text = (MODEL_CONFIGS / f"{name}.yaml").read_text()
        H, W = inp.image_size
        cameras = f"{inp.cameras} camera{'s' if inp.cameras > 1 else ''}"
        assert f"{cameras} x {inp.history} frames (data.window.history: {inp.history})" in text, (
            name
        )
        assert f"{H}x{W}" in text, name


def test_every_model_yaml_builds_at_its_input_and_has_the_size_its_comment_says(flops):
    for name, inp in flops.INPUTS.items():
        c = flops.count(flops.load_config(MODEL_CONFIGS / f"{name}.yaml"), inp)
        stated = float(
            re.search(r"~([\d.]+) M parameters", (MODEL_CONFIGS / f"{name}.yaml").read_text()).group(1)
        )
        assert c.params_total == pytest.approx(stated * 1e6, rel=0.1), name
        assert c.flops_encoder > c.flops_fusion > c.flops_heads > 0, name


def test_counts_add_up_and_training_is_about_three_forwards(flops, tiny):
    c = flops.count(*tiny)
    assert c.flops_forward == c.flops_encoder + c.flops_fusion + c.flops_heads
    assert min(c.flops_encoder, c.flops_fusion, c.flops_heads) > 0
    assert c.params_total == c.params_backbone + c.heads * c.params_per_head
    assert 0 < c.params_encoder < c.params_backbone
    # backward = 2x forward, less the first conv's input gradient (the images need none)
    assert 2.9 * c.flops_forward < c.flops_train < 3 * c.flops_forward
    assert c.image_tokens == 6 * 2 * 8


def test_fake_tensors_count_what_the_real_arithmetic_counts(flops, tiny):
    assert flops.count(*tiny, fake=True) == flops.count(*tiny, fake=False)


def test_doubling_cameras_doubles_encoder_flops(flops, tiny):
    config, inp = tiny
    one = flops.count(config, inp)
    two = flops.count(config, dataclasses.replace(inp, cameras=2 * inp.cameras))
    assert two.flops_encoder == 2 * one.flops_encoder
    assert two.flops_fusion > 2 * one.flops_fusion  # attention is quadratic in tokens
    # only the camera embedding table grows
    assert two.params_total - one.params_total == inp.cameras * config.d_model


def test_a_country_head_adds_one_head_of_parameters_and_flops(flops, tiny):
    config, inp = tiny
    one = flops.count(config, inp)
    two = flops.count(dataclasses.replace(config, heads=["global", "CN"]), inp)
    assert two.heads == 2 and two.params_per_head == one.params_per_head
    assert two.params_total - one.params_total == one.params_per_head
    assert two.params_backbone == one.params_backbone
    # every head runs on the whole batch (routing gathers afterwards)
    assert two.flops_heads == 2 * one.flops_heads
    assert (two.flops_encoder, two.flops_fusion) == (one.flops_encoder, one.flops_fusion)


def test_a_fusion_layer_costs_its_matmuls_and_attention(flops, tiny):
    config, inp = tiny
    shallow = flops.count(dataclasses.replace(config, depth=2), inp)
    deep = flops.count(dataclasses.replace(config, depth=3), inp)
    D, L = config.d_model, 2 + shallow.image_tokens  # ego and command tokens + image tokens
    # qkv + out projections (4 D^2) and MLP (8 D^2) per token, QK^T and AV (2 L D) per token, 2 FLOPs a MAC
    assert deep.flops_fusion - shallow.flops_fusion == 2 * (12 * L * D * D + 2 * L * L * D)


def test_conv_backward_counts_groups(flops):
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    for groups in (1, 8):
        conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups)
        with FlopCounterMode(display=False) as forward:
            y = conv(x)
        with FlopCounterMode(display=False, custom_mapping=flops.FLOP_FORMULAS) as ours:
            y.sum().backward(retain_graph=True)
        with FlopCounterMode(display=False) as torchs:
            y.sum().backward()
        assert forward.get_total_flops() == 2 * 12 * 12 * 16 * (8 // groups) * 9 * 2
        assert ours.get_total_flops() == 2 * forward.get_total_flops()  # grad_input + grad_weight
        if groups == 1:
            assert torchs.get_total_flops() == ours.get_total_flops()
