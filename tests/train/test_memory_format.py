"""fsdtrain/train/memory_format.py: the encoder's images channels last, applied from outside the model;
the same predictions and gradients as contiguous images, and a layout name checked where it enters."""

import pytest
import torch
from model.test_gradients import CAMERAS, WINDOW, make_batch, tiny_config

from fsdtrain.errors import ConfigError
from fsdtrain.train.memory_format import apply_memory_format
from fsdtrain.train.module import DrivingModule


def module(memory_format: str) -> DrivingModule:
    torch.manual_seed(0)
    return DrivingModule(net=tiny_config(), cameras=CAMERAS, window=WINDOW, memory_format=memory_format).train()


def layouts_seen(m: DrivingModule) -> list[bool]:
    """Whether each convolution of the encoder received a channels-last input, in call order."""
    seen = []
    for conv in (c for c in m.net.encoder.backbone.modules() if isinstance(c, torch.nn.Conv2d)):
        conv.register_forward_pre_hook(
            lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
        )
    return seen


@pytest.mark.parametrize("name, channels_last", [("channels_last", True), ("contiguous", False)])
def test_every_convolution_gets_the_layout(name, channels_last):
    m = module(name)
    seen = layouts_seen(m)
    m._losses(make_batch())
    assert len(seen) >= 3 and set(seen) == {channels_last}


def test_channels_last_changes_no_result():
    results = []
    for name in ("contiguous", "channels_last"):
        m = module(name)
        losses, traj, _, _ = m._losses(make_batch())
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((traj.detach(), grads))
    (traj_a, grads_a), (traj_b, grads_b) = results
    torch.testing.assert_close(traj_a, traj_b, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-3, atol=1e-5, msg=n)


def test_the_hook_comes_off():
    m = module("contiguous")
    handle = apply_memory_format(m.net.encoder.backbone, "channels_last")
    seen = layouts_seen(m)
    m._losses(make_batch())
    handle.remove()
    m._losses(make_batch())
    assert seen[: len(seen) // 2] == [True] * (len(seen) // 2) and not any(seen[len(seen) // 2 :])


def test_unknown_layout_is_one_line():
    with pytest.raises(ConfigError, match="model.memory_format: unknown layout 'nhwc'; use one of channels_last, contiguous"):
        module("nhwc")
