import numpy as np
import pytest
import torch

import fsdtrain.model.fusion as fusion_module
from fsdtrain.errors import ConfigError
from fsdtrain.model.fusion import FUSIONS, RayEmbedding, grid_rays, make_fusion
from fsdtrain.synth import rig

B, N, T, P, D, E = 2, 3, 4, 2, 16, 2


def build(name: str, depth: int = 2, **kw):
    return make_fusion(
        name, d_model=D, depth=depth, num_heads=2, cameras=N, frames=T, tokens_per_image=P, **kw
    )


def tokens(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, T, P, D, generator=g), torch.randn(B, E, D, generator=g)


@pytest.mark.parametrize("name", list(FUSIONS))
def test_output_shape_and_finite(name):
    torch.manual_seed(0)
    out = build(name)(*tokens())
    assert out.shape == (B, E + N * T * P, D)
    assert torch.isfinite(out).all()


def test_both_fusions_lay_out_tokens_alike():
    """With no layers a fusion is embeddings + norm: the image tokens of both fusions must then be
    the same tensor, in the same (camera, frame, cell) order."""
    torch.manual_seed(0)
    joint = build("joint", depth=0)
    fact = build("factorized", depth=0)
    fact.load_state_dict(joint.state_dict())
    img, extra = tokens()
    torch.testing.assert_close(joint(img, extra)[:, E:], fact(img, extra)[:, E:])


def test_factorized_mixes_cameras_and_frames_in_one_layer():
    torch.manual_seed(0)
    fusion = build("factorized", depth=1).eval()
    img, extra = tokens()
    img2 = img.clone()
    img2[:, 0, 0] += torch.randn(B, P, D)  # camera 0, frame 0 (not a constant: pre-norm would cancel it)
    with torch.no_grad():
        a, b = fusion(img, extra), fusion(img2, extra)
    a_img = a[:, E:].view(B, N, T, P, D)
    b_img = b[:, E:].view(B, N, T, P, D)
    assert not torch.allclose(a_img[:, 2, 3], b_img[:, 2, 3])  # another camera at another frame
    assert not torch.allclose(a[:, :E], b[:, :E])  # and the ego/command tokens


@pytest.mark.parametrize("name", list(FUSIONS))
def test_activation_checkpointing_same_outputs_and_gradients(name, monkeypatch):
    calls = []
    real = fusion_module.checkpoint
    monkeypatch.setattr(fusion_module, "checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    torch.manual_seed(0)
    plain = build(name, dropout=0.1).train()
    ckpt = build(name, dropout=0.1, checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    outs, grads = [], []
    for model in (plain, ckpt):
        img, extra = (t.requires_grad_() for t in tokens())
        torch.manual_seed(1)  # the same dropout masks: non-reentrant checkpointing replays the RNG state
        out = model(img, extra)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({"img": img.grad, **{n: p.grad for n, p in model.named_parameters()}})
    layers = 2 if name == "joint" else 4
    assert len(calls) == layers and all(k == {"use_reentrant": False} for k in calls)
    torch.testing.assert_close(outs[1], outs[0])
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], msg=k)
    # not in eval or without grad: nothing to recompute
    calls.clear()
    with torch.no_grad():
        ckpt(*tokens())
    ckpt.eval()(*tokens())
    assert not calls


def test_unknown_fusion_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown fusion 'space_time'.*joint, factorized"):
        build("space_time")


def rig_calib(cams, H, W):
    K = torch.tensor(np.stack([rig.intrinsics(c, W, H) for c in cams]), dtype=torch.float32)[None]
    Tc = torch.tensor(np.stack([rig.cam_to_ego(c) for c in cams]), dtype=torch.float32)[None]
    return K, Tc  # [1, N, 3, 3], [1, N, 4, 4]


def test_front_camera_centre_ray_points_forward():
    cams = rig.surround6()
    H, W = 33, 49
    rays = grid_rays(*rig_calib(cams, H, W), image_size=(H, W), grid=(3, 3))  # [1, 6, 9, 3]
    assert rays.shape == (1, 6, 9, 3)
    torch.testing.assert_close(rays.norm(dim=-1), torch.ones(1, 6, 9))
    front = rays[0, 0, 4]  # CAM_FRONT, centre cell = principal point = optical axis
    pitch = np.radians(cams[0].pitch_deg)  # looks slightly down
    torch.testing.assert_close(front, torch.tensor([np.cos(pitch), 0.0, -np.sin(pitch)], dtype=torch.float32))
    assert front[0] > 0.99
    back = rays[0, 3, 4]  # CAM_BACK looks backwards
    assert back[0] < -0.99 and abs(back[1]) < 1e-5
    left = rays[0, 1, 4]  # CAM_FRONT_LEFT: forward and to the left (+y)
    assert left[0] > 0.5 and left[1] > 0.7
    # the top-left cell of the front camera looks up and to the left
    assert rays[0, 0, 0, 1] > 0 and rays[0, 0, 0, 2] > front[2]


def test_grid_rays_match_the_renderer_pixel_rays():
    """Cells whose centres fall on pixel centres see exactly the renderer's ray of that pixel."""
    cams = rig.surround6()
    H, W, gh, gw = 27, 45, 3, 3  # cell centres at rows 4, 13, 22 and columns 7, 22, 37
    rays = grid_rays(*rig_calib(cams, H, W), image_size=(H, W), grid=(gh, gw))
    for n, cam in enumerate(cams):
        pix = rig.pixel_rays(cam, W, H)  # [H, W, 3]
        want = torch.tensor(
            np.stack([pix[v, u] for v in (4, 13, 22) for u in (7, 22, 37)]), dtype=torch.float32
        )
        torch.testing.assert_close(rays[0, n], want, atol=1e-5, rtol=0)


def test_ray_embedding_shape_and_depends_on_the_calibration():
    torch.manual_seed(0)
    cams = rig.surround6()
    K, Tc = rig_calib(cams, 32, 48)
    emb = RayEmbedding(D)
    out = emb(K, Tc, image_size=(32, 48), grid=(2, 2))
    assert out.shape == (1, 6, 4, D)
    assert not torch.allclose(out[0, 0], out[0, 3])  # front and back cameras differ
