"""Every trainable parameter of every model variant is connected to the training loss (timm's
``test_model_backward``, stricter: gradients must be finite and not all zero).

Two things would make a connected parameter's gradient exactly zero at initialization, and the
tests undo them on purpose:

- heads a batch does not route to get zero gradients (``HeadBank``): batches reach every head;
- zero-initialized gates, e.g. the last BatchNorm gamma of each timm ResNet block
  (``zero_init_last``), block the gradient of the layers before them until they move off zero:
  ``unzero`` gives such parameters small random values first.
"""

import numpy as np
import pytest
import torch

from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import DrivingTransformer, ModelConfig
from fsdtrain.model.losses import LossConfig, wta_loss
from fsdtrain.synth import rig
from fsdtrain.train.module import DrivingModule
from helpers.tiny_net import tiny_net

CAMERAS = ["CAM_FRONT", "CAM_BACK"]
HEADS = ["global", "CN"]
COUNTRIES = ["CN", "US", "CN", "DE"]  # both heads get samples
WINDOW = WindowSpec(history=2, horizon_s=2.0, future_hz=2.0)  # 4 future points

VARIANTS = {
    "joint": {},
    "factorized": {"fusion": "factorized"},
    "rays": {"ray_embedding": True},
    "checkpointing": {"activation_checkpointing": True},
    "factorized-rays-checkpointing": {
        "fusion": "factorized",
        "ray_embedding": True,
        "activation_checkpointing": True,
    },
    "one-mode": {"modes": 1},  # no mode classification: no logit layer to leave without a gradient
}


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**tiny_net(heads=HEADS, **overrides))


def make_batch(B: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    specs = {c.name: c for c in rig.surround6()}
    H, W = 32, 48
    K = torch.tensor(np.stack([rig.intrinsics(specs[c], W, H) for c in CAMERAS]), dtype=torch.float32)
    T = torch.tensor(np.stack([rig.cam_to_ego(specs[c]) for c in CAMERAS]), dtype=torch.float32)
    return {
        "images": torch.randint(
            0, 256, (B, len(CAMERAS), WINDOW.history, 3, H, W), dtype=torch.uint8, generator=g
        ),
        "ego_hist": torch.randn(B, WINDOW.history, 6, generator=g),
        "future": torch.randn(B, WINDOW.future_steps, 3, generator=g) * 3,
        "command": torch.arange(B) % 3,
        "country": COUNTRIES[:B],
        "intrinsics": K.expand(B, -1, -1, -1).clone(),
        "cam_to_ego": T.expand(B, -1, -1, -1).clone(),
    }


def unzero(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0.0, 0.02)


def assert_gradients(module: torch.nn.Module) -> None:
    bad = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            bad[name] = "no gradient"
        elif not torch.isfinite(p.grad).all():
            bad[name] = "non-finite gradient"
        elif not p.grad.any():
            bad[name] = "all-zero gradient"
    assert not bad, bad


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_parameter_gets_a_gradient(variant):
    torch.manual_seed(0)
    dims = {"history": WINDOW.history, "future_steps": WINDOW.future_steps, "future_dt": 1 / WINDOW.future_hz}
    config = tiny_config(**VARIANTS[variant])
    model = DrivingTransformer(config, cameras=len(CAMERAS), **dims).train()
    unzero(model)
    b = make_batch()
    route = model.heads.route(b["country"])
    traj, logits = model(
        b["images"],
        b["ego_hist"],
        b["command"],
        route,
        intrinsics=b["intrinsics"],
        cam_to_ego=b["cam_to_ego"],
    )
    K = config.modes
    assert traj.shape == (4, K, WINDOW.future_steps, 3) and logits.shape == (4, K)
    assert torch.isfinite(traj).all() and torch.isfinite(logits).all()
    losses = wta_loss(traj, logits, b["future"], LossConfig())  # regression of the best mode + mode logits
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert_gradients(model)


@pytest.mark.parametrize("variant", ["joint", "factorized-rays-checkpointing"])
def test_driving_module_trains_model_and_baseline(variant):
    torch.manual_seed(0)
    module = DrivingModule(net=tiny_config(**VARIANTS[variant]), cameras=CAMERAS, window=WINDOW).train()
    unzero(module)
    losses, traj, logits, base_traj = module._losses(make_batch())
    assert all(torch.isfinite(t).all() for t in (losses["loss"], traj, logits, base_traj))
    losses["loss"].backward()
    assert_gradients(module)  # the network and the ego-status MLP baseline (``baseline.``)
