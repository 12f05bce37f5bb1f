import pytest
import torch

from fsdtrain.errors import ConfigError
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.encoder import ImageEncoder
from fsdtrain.model.heads import HeadBank, TrajectoryHead


def tiny_model(**overrides) -> DrivingTransformer:
    cfg = ModelConfig(encoder="test_resnet", d_model=32, depth=1, num_heads=2, grid=[1, 2], modes=3, heads=["global", "CN"], **overrides)
    return DrivingTransformer(cfg, cameras=2, history=2, future_steps=4, future_dt=0.5)


def batch(B=3):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, 2, 2, 3, 32, 48), dtype=torch.uint8, generator=g)
    ego = torch.randn(B, 2, 6, generator=g)
    return images, ego, torch.tensor([0, 1, 2][:B])


@pytest.mark.parametrize("encoder", ["test_resnet", "test_efficientnet", "test_vit"])
def test_every_parameter_gets_a_gradient_and_outputs_are_finite(encoder):
    torch.manual_seed(0)
    model = tiny_model() if encoder == "test_resnet" else DrivingTransformer(
        ModelConfig(encoder=encoder, d_model=32, depth=1, num_heads=2, grid=[1, 2], modes=2, heads=["global", "CN"]),
        cameras=2, history=2, future_steps=4, future_dt=0.5,
    )  # fmt: skip
    images, ego, cmd = batch()
    route = model.heads.route(["CN", "US", "CN"])
    traj, logits = model(images, ego, cmd, route)
    assert traj.shape == (3, model.config.modes, 4, 3) and logits.shape == (3, model.config.modes)
    assert torch.isfinite(traj).all() and torch.isfinite(logits).all()
    (traj.square().mean() + logits.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing
    # both heads were used by this mixed batch, so both have non-zero gradients
    for head in ("global", "CN"):
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(f"heads.heads.{head}."))


def test_routing_matches_running_each_head_alone():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images, ego, cmd = batch()
    countries = ["CN", "FR", "US"]  # FR and US have no head of their own -> global
    with torch.no_grad():
        routed, _ = model(images, ego, cmd, model.heads.route(countries))
        cn, _ = model(images, ego, cmd, None, head="CN")
        glob, _ = model(images, ego, cmd, None, head="global")
    torch.testing.assert_close(routed[0], cn[0])
    torch.testing.assert_close(routed[1], glob[1])
    torch.testing.assert_close(routed[2], glob[2])
    assert not torch.allclose(cn[0], glob[0])


def test_images_change_the_prediction():
    torch.manual_seed(0)
    model = tiny_model().eval()
    images, ego, cmd = batch()
    route = model.heads.route(["US"] * 3)
    with torch.no_grad():
        a, _ = model(images, ego, cmd, route)
        b, _ = model(torch.zeros_like(images), ego, cmd, route)
    assert not torch.allclose(a, b)


def test_constant_velocity_goes_straight_at_current_speed():
    ego = torch.zeros(1, 2, 6)
    ego[0, -1, 4] = 10.0
    cv = constant_velocity(ego, 6, 0.5)
    torch.testing.assert_close(cv[0, :, 0], torch.tensor([5.0, 10, 15, 20, 25, 30]))
    assert cv[..., 1:].abs().sum() == 0


def test_unknown_encoder_lists_known_names():
    with pytest.raises(ConfigError, match="not a timm model name.*test_"):
        ImageEncoder("resnet_does_not_exist", d_model=8, grid=(1, 1))


def test_bad_head_names_and_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="ISO 3166"):
        HeadBank(["global", "china"], lambda: TrajectoryHead(d_model=8, num_heads=2, modes=1, future_steps=2))
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(d_model=30, num_heads=4)
    model = tiny_model()
    images, ego, cmd = batch()
    with pytest.raises(ConfigError, match="cameras"):
        model(images[:, :1], ego, cmd, model.heads.route(["US"] * 3))
