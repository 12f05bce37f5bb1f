"""Trajectory pictures: projection into the camera, the bird's-eye plot, PNG files, ``eval --plots``."""

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from fsdtrain.cli import main
from fsdtrain.eval.viz import (
    HISTORY_COLOR,
    MODE_COLORS,
    TRUTH_COLOR,
    BevView,
    birds_eye,
    camera_overlay,
    front_camera,
    plot_name,
    project_to_camera,
    save_plots,
    window_at,
    window_figure,
)
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.model.driving import ModelConfig
from fsdtrain.synth.rig import cam_to_ego, ground_lut, intrinsics, surround6
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.files import save_weights
from fsdtrain.weights.metadata import WeightsMeta
from helpers.fleet import TINY_WINDOW

W, H = 201, 121  # odd sizes: the principal point ((W - 1) / 2, (H - 1) / 2) is a pixel centre
FRONT, BACK = surround6()[0], surround6()[3]
RED = (255, 0, 0)


def calib(spec, w=W, h=H):
    return intrinsics(spec, w, h), cam_to_ego(spec)


def horizon_row(spec, w=W, h=H) -> float:
    """Row of the horizon of a camera pitched down by ``pitch_deg`` (no roll)."""
    K = intrinsics(spec, w, h)
    return K[1, 2] - K[1, 1] * math.tan(math.radians(spec.pitch_deg))


def drawn(before: np.ndarray, after: Image.Image) -> np.ndarray:
    """[H, W] bool: pixels the overlay changed."""
    return (np.asarray(after) != before).any(axis=-1)


def test_ground_point_straight_ahead_lands_on_the_principal_column_below_the_horizon():
    K, T = calib(FRONT)
    uv, depth = project_to_camera(np.array([[20.0, 0.0], [1e5, 0.0]]), K, T)
    assert depth[0] > 0
    assert uv[0, 0] == pytest.approx(K[0, 2], abs=1e-9)  # column 100
    assert uv[0, 1] > horizon_row(FRONT) + 1  # the road is below the horizon
    assert uv[1, 1] == pytest.approx(horizon_row(FRONT), abs=0.01)  # and reaches it far away
    # a point 2 m to the left (y > 0) is left of the centre column
    assert project_to_camera(np.array([[20.0, 2.0]]), K, T)[0][0, 0] < K[0, 2] - 1
    img = camera_overlay(
        np.zeros((3, H, W), np.uint8), [[20.0, 0.0]], K, T, color=RED, width=3, from_origin=False
    )
    assert img.size == (W, H)  # [3, H, W] input read as channels first
    # a single point is no segment: nothing is drawn; a path through it is, at the projected pixel
    assert not np.asarray(img).any()
    img = camera_overlay(np.zeros((H, W, 3), np.uint8), [[10.0, 0.0], [30.0, 0.0]], K, T, color=RED, width=3)
    assert img.getpixel((100, round(uv[0, 1]))) == RED


def test_projection_inverts_the_renderers_ground_rays():
    """The synthetic fleet paints road pixels from ``ground_lut``: projecting those ground points
    back must give the same pixels, so the overlay agrees with the calibration convention."""
    xy, hit = ground_lut(FRONT, W, H, max_range_m=80.0)
    v, u = np.nonzero(hit)
    pick = np.linspace(0, len(u) - 1, 50).astype(int)
    uv, depth = project_to_camera(xy[v[pick], u[pick]].astype(np.float64), *calib(FRONT))
    assert (depth > 0).all()
    np.testing.assert_allclose(uv, np.stack([u[pick], v[pick]], axis=1), atol=0.05)


def test_points_behind_the_camera_are_not_drawn():
    K, T = calib(FRONT)
    black = np.zeros((H, W, 3), np.uint8)
    behind = [[-3.0, 0.0], [-10.0, 2.0], [-20.0, -4.0]]
    assert not drawn(black, camera_overlay(black, behind, K, T, color=RED, from_origin=False)).any()
    # the whole forward path lies behind the back camera
    Kb, Tb = calib(BACK)
    ahead = [[5.0, 0.0], [20.0, 1.0], [40.0, 3.0]]
    assert not drawn(black, camera_overlay(black, ahead, Kb, Tb, color=RED)).any()
    # a path from behind the camera to ahead of it is cut at the camera: drawn from the bottom of the
    # picture up to the horizon, never mirrored above it
    mask = drawn(
        black, camera_overlay(black, [[-10.0, 0.0], [30.0, 0.0]], K, T, color=RED, width=2, from_origin=False)
    )
    rows, cols = np.nonzero(mask)
    assert rows.max() == H - 1 and rows.min() > horizon_row(FRONT)
    assert abs(cols.mean() - K[0, 2]) < 1.5


def test_birds_eye_draws_each_path_where_its_points_are():
    ego_hist = np.array(
        [
            [-0.4, -4.0, 0.0, 0.0, 10.0, 0.0],
            [-0.2, -2.0, 0.0, 0.0, 10.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 10.0, 0.0],
        ]
    )
    future = np.array([[5.0, 1.0, 0.1], [10.0, 3.0, 0.2], [15.0, 6.0, 0.3]])
    mirrored = future * [1.0, -1.0, -1.0]
    traj = np.stack([mirrored, future * [1.0, 0.0, 0.0]])  # [K=2, S=3, 3]: right, straight
    img = birds_eye(
        ego_hist, future, traj, np.array([0.7, 0.3]), size=(200, 300), metres=25.0, title="US clip 5"
    )
    assert img.size == (200, 300) and img.mode == "RGB"
    # forward is up, left is left: origin at ((W - 1) / 2, 0.75 (H - 1)), 0.75 * 299 / 25 pixels per metre
    view = BevView.fit((200, 300), np.zeros((0, 2)), metres=25.0)
    s = 0.75 * 299 / 25.0
    np.testing.assert_allclose(view.to_pixel(np.array([10.0, 3.0])), [99.5 - 3 * s, 224.25 - 10 * s])
    u, v = view.to_pixel(future[1, :2]).round().astype(int)
    assert u < 90 and v < 224 and img.getpixel((u, v)) == TRUTH_COLOR
    u, v = view.to_pixel(mirrored[1, :2]).round().astype(int)
    assert u > 110 and img.getpixel((u, v)) == MODE_COLORS[0]
    u, v = view.to_pixel(ego_hist[0, 1:3]).round().astype(int)
    assert v > 224 and img.getpixel((u, v)) == HISTORY_COLOR


def test_the_most_likely_mode_is_drawn_thicker():
    future = np.array([[5.0, 0.0, 0.0], [10.0, 0.0, 0.0], [15.0, 0.0, 0.0]])
    traj = np.stack([future * [1.0, 0.0, 0.0] + [0.0, 4.0, 0.0], future * [1.0, 0.0, 0.0] - [0.0, 4.0, 0.0]])
    hist = np.zeros((1, 6))

    def count(img, color):
        return int((np.asarray(img) == color).all(axis=-1).sum())

    a = birds_eye(hist, future, traj, np.array([0.8, 0.2]), size=(200, 300), metres=20.0)
    b = birds_eye(hist, future, traj, np.array([0.2, 0.8]), size=(200, 300), metres=20.0)
    assert count(a, MODE_COLORS[0]) > 1.5 * count(a, MODE_COLORS[1])
    assert count(b, MODE_COLORS[1]) > 1.5 * count(b, MODE_COLORS[0])


def fake_batch(B=2, h=48, w=64):
    """A collated batch as ``FleetStream`` + ``DataLoader`` give it: camera 0 is the back camera
    (all blue), camera 1 the front one (all red)."""
    images = torch.zeros(B, 2, 2, 3, h, w, dtype=torch.uint8)
    images[:, 0, :, 2] = 255
    images[:, 1, :, 0] = 255
    specs = [BACK, FRONT]
    future = torch.tensor([[2.0 * i, 0.2 * i, 0.0] for i in range(1, 7)]).expand(B, 6, 3)
    return {
        "images": images,  # [B, N_cam, T, 3, H, W]
        "ego_hist": torch.tensor([[-0.5, -1.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]]).expand(
            B, 2, 6
        ),
        "future": future,
        "command": torch.ones(B, dtype=torch.long),
        "intrinsics": torch.tensor(
            np.stack([intrinsics(c, w, h) for c in specs]), dtype=torch.float32
        ).expand(B, 2, 3, 3),
        "cam_to_ego": torch.tensor(np.stack([cam_to_ego(c) for c in specs]), dtype=torch.float32).expand(
            B, 2, 4, 4
        ),
        "country": ["US"] * B,
        "zone": ["global"] * B,
        "clip_id": [f"drive_{i}-000000" for i in range(B)],
        "frame": torch.arange(B) * 5,
    }


def test_front_camera_is_found_by_name():
    assert front_camera(["CAM_BACK", "CAM_FRONT"]) == 1
    assert front_camera(["left", "front"]) == 1
    assert front_camera(["a", "b"]) == 0 and front_camera(None) == 0


def test_save_plots_writes_readable_pngs_with_the_front_camera(tmp_path):
    batch = fake_batch()
    traj = (
        batch["future"][:, None].repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.5, 1.5])[None, :, None, None]
    )  # [B, K, S, 3]
    logits = torch.tensor([[2.0, 0.0, -1.0]]).repeat(2, 1)
    paths = save_plots(tmp_path / "plots", batch, traj, logits, cameras=["CAM_BACK", "CAM_FRONT"])
    assert [p.name for p in paths] == ["US-drive_0-000000-000000.png", "US-drive_1-000000-000005.png"]
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "PNG"
            # title line 18 px; bird's-eye 300 x 400; camera 64 x 48 scaled to 400 px high
            assert img.size == (300 + round(64 * 400 / 48), 18 + 400)
            assert (
                img.convert("RGB").getpixel((img.width - 3, 18 + 40)) == RED
            )  # the front camera, not the back one
    fig = window_figure(window_at(batch, 0), traj[0], logits[0], with_camera=False)
    assert fig.size == (300, 418)  # ego coordinates only


def test_plot_names_are_safe(tmp_path):
    assert plot_name("CN", "drive_1-000030", 12) == "CN-drive_1-000030-000012.png"
    for clip in ("../../etc/passwd", "a/b\\c", "..", ".hidden", "x\x00y", "名字", ""):
        name = plot_name("US", clip, 3)
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
        assert name.endswith("-000003.png") and (tmp_path / name).parent == tmp_path
    with pytest.raises(ValueError, match="frame"):
        plot_name("US", "c", -1)
    batch = fake_batch(B=1)
    batch["clip_id"] = ["../escape"]
    (path,) = save_plots(
        tmp_path / "out", batch, batch["future"][:, None], torch.zeros(1, 1), with_camera=False
    )
    assert path.parent == tmp_path / "out" and path.name == "US-___escape-000000.png"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A freshly initialised model for the tiny fleet's cameras and window, as a weights file."""
    torch.manual_seed(0)
    net = ModelConfig(encoder="test_resnet", d_model=32, depth=1, num_heads=2, grid=[1, 2], modes=2)
    module = DrivingModule(net=net, cameras=list(DEFAULT_CAMERAS), window=TINY_WINDOW)
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_weights(
        path,
        module.state_dict(),
        WeightsMeta.of(net=asdict(net), cameras=list(DEFAULT_CAMERAS), window=TINY_WINDOW.to_dict()),
    )
    return path


def test_eval_writes_plots_per_country(tiny_fleet, tiny_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    plots = tmp_path / "plots"
    data = [tiny_fleet["US"]["val"], tiny_fleet["DE"]["val"]]
    args = ["eval", "--ckpt", str(tiny_weights), "--data", *data, "--batch-size", "3", "--plots", str(plots)]
    assert main([*args, "--plots-per-country", "2"]) == 0
    assert f"plots: {plots}" in capsys.readouterr().out
    names = sorted(p.name for p in plots.iterdir())
    assert [n[:3] for n in names] == ["DE-", "DE-", "US-", "US-"]
    for name in names:
        with Image.open(plots / name) as img:
            assert img.format == "PNG" and img.size == (300 + round(64 * 400 / 48), 418)
    assert main([*args, "--plots-per-country", "-1"]) == 2
    assert "plots_per_country" in capsys.readouterr().err
    assert main([*args[:-1], "s3://bucket/plots"]) == 2  # camera frames go to a local folder only
    assert "local folder" in capsys.readouterr().err
