from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fsdtrain.errors import ConfigError
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.encoder import ImageEncoder
from fsdtrain.model.heads import HeadBank, TrajectoryHead
from fsdtrain.synth import rig
from helpers.tiny_net import tiny_net


def tiny_model(**overrides) -> DrivingTransformer:
    cfg = ModelConfig(**tiny_net(heads=["global", "CN"], **overrides))
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
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing
    # both heads were used by this mixed batch, so both have non-zero gradients
    for head in ("global", "CN"):
        assert any(
            p.grad.abs().sum() > 0
            for n, p in model.named_parameters()
            if n.startswith(f"heads.heads.{head}.")
        )


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


def calib(B=3, cams=("CAM_FRONT", "CAM_BACK"), size=(32, 48)):
    """The batch's ``intrinsics`` [B, N, 3, 3] and ``cam_to_ego`` [B, N, 4, 4] for images of ``size``."""
    specs = {c.name: c for c in rig.surround6()}
    K = torch.tensor(
        np.stack([rig.intrinsics(specs[c], size[1], size[0]) for c in cams]), dtype=torch.float32
    )
    T = torch.tensor(np.stack([rig.cam_to_ego(specs[c]) for c in cams]), dtype=torch.float32)
    return K.expand(B, -1, -1, -1), T.expand(B, -1, -1, -1)


@pytest.mark.parametrize("fusion", ["joint", "factorized"])
@pytest.mark.parametrize("ray_embedding", [False, True])
def test_variants_predict_the_right_shapes(fusion, ray_embedding):
    torch.manual_seed(0)
    model = tiny_model(fusion=fusion, ray_embedding=ray_embedding)
    images, ego, cmd = batch()
    K, T = calib()
    fused, ego_token = model.encode(images, ego, cmd, intrinsics=K, cam_to_ego=T)
    assert fused.shape == (3, 2 + 2 * 2 * 2, 32) and ego_token.shape == (3, 32)
    traj, logits = model(images, ego, cmd, model.heads.route(["CN", "US", "DE"]), intrinsics=K, cam_to_ego=T)
    assert traj.shape == (3, 3, 4, 3) and logits.shape == (3, 3)
    assert torch.isfinite(traj).all() and torch.isfinite(logits).all()


def test_ray_embedding_needs_and_uses_the_calibration():
    torch.manual_seed(0)
    model = tiny_model(ray_embedding=True).eval()
    images, ego, cmd = batch()
    route = model.heads.route(["US"] * 3)
    with pytest.raises(ConfigError, match="ray_embedding is on.*intrinsics and cam_to_ego"):
        model(images, ego, cmd, route)
    K, T = calib()
    with pytest.raises(ConfigError, match=r"\[3, 2, 3, 3\]"):
        model(images, ego, cmd, route, intrinsics=K[:, :1], cam_to_ego=T)
    with torch.no_grad():
        a, _ = model(images, ego, cmd, route, intrinsics=K, cam_to_ego=T)
        b, _ = model(images, ego, cmd, route, intrinsics=K, cam_to_ego=T.flip(1))  # cameras swapped
    assert not torch.allclose(a, b)
    # without the ray embedding, the calibration is not needed and changes nothing
    plain = tiny_model().eval()
    with torch.no_grad():
        c, _ = plain(images, ego, cmd, route)
        d, _ = plain(images, ego, cmd, route, intrinsics=K, cam_to_ego=T.flip(1))
    torch.testing.assert_close(c, d)


def test_unknown_fusion_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="model.fusion.*'spacetime'.*joint, factorized"):
        ModelConfig(fusion="spacetime")


CONFIGS = Path(__file__).parents[2] / "configs"
NET_YAMLS = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("model/*.yaml"))


@pytest.mark.parametrize("path", NET_YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_model_configs_in_configs_are_valid(path):
    doc = yaml.safe_load(path.read_text()) or {}
    net = doc if path.parent.name == "model" else (doc.get("model") or {}).get("net")
    if isinstance(net, str):  # a model piece by path, from the config's folder (configs/demo.yaml's model/demo_net.yaml)
        net = yaml.safe_load((path.parent / net).read_text())
    if net is None:
        pytest.skip("no model.net in this config")
    ModelConfig(**net)


def test_net_dicts_of_older_weight_files_build_the_same_model():
    """A ``net`` dict without the newer fields (as in older configs and weight files' metadata) gets
    defaults that keep the model: joint fusion, no ray embedding, same parameter names, so their
    state dicts still load."""
    old = tiny_net(heads=["global"], dropout=0.0)
    cfg = ModelConfig(**old)
    assert cfg.fusion == "joint" and not (cfg.ray_embedding or cfg.freeze_bn or cfg.activation_checkpointing)
    keys = DrivingTransformer(cfg, cameras=2, history=2, future_steps=4, future_dt=0.5).state_dict().keys()
    fusion = {k for k in keys if k.startswith("fusion.")}
    layer = "fusion.blocks.layers.0."
    assert fusion == {"fusion.cam_emb", "fusion.frame_emb", "fusion.pos_emb", "fusion.norm.weight", "fusion.norm.bias"} | {
        layer + k
        for k in (
            "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
            "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
        )
    }  # fmt: skip
    assert {k.split(".")[0] for k in keys} == {"encoder", "ego_embed", "command_embed", "fusion", "heads"}
    assert "encoder.backbone.conv1.1.num_batches_tracked" in keys  # plain BatchNorm


@pytest.mark.parametrize("modes", [1, 3])
def test_weights_with_the_old_logit_bias_load_and_predict_the_same(modes):
    """Older weight files have ``heads.heads.<name>.logit.bias`` (and, for one mode, a logit weight):
    they load, and the model predicts what it predicted (the bias shifted every mode's logit alike)."""
    torch.manual_seed(0)
    model = tiny_model(modes=modes).eval()
    old = dict(model.state_dict())
    for name in model.heads.names:
        prefix = f"heads.heads.{name}.logit."
        old[prefix + "bias"] = torch.tensor([0.7])
        old.setdefault(prefix + "weight", torch.randn(1, 32))
    images, ego, command = batch()
    args = (images, ego, command, model.heads.route(["CN", "US", "DE"]))
    before = model(*args)
    fresh = tiny_model(modes=modes).eval()
    fresh.load_state_dict(old)  # strict: nothing missing, nothing unexpected once the dead ones are dropped
    after = fresh(*args)
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
