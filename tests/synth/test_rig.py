"""Camera rig geometry: rigs by name, and K and T agree with the ground lookup table the renderer uses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.format.schema import parse_calib
from fsdtrain.synth.rig import (
    DEFAULT_RIG,
    RIGS,
    CameraSpec,
    calib_json,
    cam_to_ego,
    default_rig,
    ground_lut,
    intrinsics,
    make_rig,
    pixel_rays,
    surround6,
)

W, H = 160, 96


def _project(K: np.ndarray, T: np.ndarray, pts_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points [N, 3] -> pixel (u, v) [N, 2] and camera depth [N]."""
    homo = np.concatenate([pts_ego, np.ones((len(pts_ego), 1))], axis=1)
    cam = (np.linalg.inv(T) @ homo.T).T[:, :3]  # [N, 3] camera frame
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def test_default_rig_names_and_layout():
    rig = default_rig()
    assert [c.name for c in rig] == [
        "CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
    ]
    for cam in rig:
        T = cam_to_ego(cam)
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3)) and np.isclose(np.linalg.det(T[:3, :3]), 1.0)
        assert 1.4 < T[2, 3] < 1.8


def test_rigs_by_name():
    assert DEFAULT_RIG == "surround6" and default_rig() == surround6() == make_rig("surround6")
    eight = make_rig("surround8")
    names = [c.name for c in eight]
    # the six surround cameras unchanged and in the same order, the two side cameras last
    assert eight[:6] == surround6() and names[6:] == ["CAM_LEFT", "CAM_RIGHT"] and len(set(names)) == 8
    calib = parse_calib(json.dumps(calib_json(eight, W, H)).encode(), names, "test")
    for cam in eight:
        assert np.allclose(calib[cam.name]["T_cam_to_ego"], cam_to_ego(cam)) and calib[cam.name]["size"] == (W, H)
    # the side cameras look sideways and down: they see the ground beside the car, on their own side
    for name, sign in (("CAM_LEFT", 1), ("CAM_RIGHT", -1)):
        cam = eight[names.index(name)]
        xy, hit = ground_lut(cam, W, H, 30.0)
        assert hit.mean() > 0.5 and (np.sign(xy[hit][:, 1]) == sign).all() and np.abs(xy[hit][:, 1]).min() < 2.5
    with pytest.raises(ConfigError, match="known: surround6, surround6_narrow, surround8"):
        make_rig("surround7")
    assert sorted(RIGS) == ["surround6", "surround6_narrow", "surround8"]


def test_narrow_camera_magnifies_the_far_road():
    rig = make_rig("surround6_narrow")
    assert rig[:6] == surround6() and rig[6].name == "CAM_FRONT_NARROW"
    front, narrow = rig[0], rig[6]

    def rows_under_horizon(cam, distance):
        K, T = intrinsics(cam, W, H), cam_to_ego(cam)
        (uv_near, _), (uv_far, _) = (_project(K, T, np.array([[d, 0.0, 0.0]])) for d in (distance, 1e6))
        return uv_near[0, 1] - uv_far[0, 1]

    for distance in (40.0, 60.0, 90.0):  # where the curves that decide the next seconds are: > 2.2x the rows of CAM_FRONT
        assert rows_under_horizon(narrow, distance) > 2.2 * rows_under_horizon(front, distance)
    xy, hit = ground_lut(narrow, W, H, 100.0)
    assert hit.any() and (xy[hit][:, 0] > 5.0).all() and np.abs(xy[hit][:, 1]).max() < 100.0 * np.tan(np.radians(16.0))


@pytest.mark.parametrize("cam", make_rig("surround8"), ids=lambda c: c.name)
def test_ground_lut_matches_stored_calibration(cam: CameraSpec):
    calib = parse_calib(json.dumps(calib_json([cam], W, H)).encode(), [cam.name], "test")[cam.name]
    K, T = calib["K"], calib["T_cam_to_ego"]
    assert calib["size"] == (W, H)
    xy, hit = ground_lut(cam, W, H, max_range_m=80.0)
    assert xy.shape == (H, W, 2) and xy.dtype == np.float32 and hit.shape == (H, W) and hit.dtype == bool
    rows, cols = np.nonzero(hit)
    pts = np.concatenate([xy[rows, cols].astype(np.float64), np.zeros((len(rows), 1))], axis=1)
    uv, depth = _project(K, T, pts)
    assert (depth > 0).all()
    # float32 ground points: sub-pixel agreement, also for far points near the horizon
    assert np.abs(uv[:, 0] - cols).max() < 0.05 and np.abs(uv[:, 1] - rows).max() < 0.05


def test_pixel_rays_unit_and_optical_axis():
    cam = default_rig()[0]
    rays = pixel_rays(cam, W, H)
    assert np.allclose(np.linalg.norm(rays, axis=-1), 1.0)
    K = intrinsics(cam, W, H)
    centre = np.array([K[0, 2], K[1, 2]])
    assert np.allclose(centre, ((W - 1) / 2, (H - 1) / 2))
    axis = cam_to_ego(cam)[:3, 2]  # camera z in the ego frame
    assert axis[0] > 0.99 and axis[2] < 0  # forward, tilted down
    # the ray through the image centre is the optical axis (W, H even: average the 4 centre pixels)
    mid = rays[H // 2 - 1 : H // 2 + 1, W // 2 - 1 : W // 2 + 1].reshape(-1, 3).mean(axis=0)
    assert np.allclose(mid / np.linalg.norm(mid), axis, atol=1e-6)


def test_front_camera_sees_ahead_and_back_camera_behind():
    rig = {c.name: c for c in default_rig()}
    xy_f, hit_f = ground_lut(rig["CAM_FRONT"], W, H, 60.0)
    xy_b, hit_b = ground_lut(rig["CAM_BACK"], W, H, 60.0)
    assert (xy_f[hit_f][:, 0] > 1.7).all() and (xy_b[hit_b][:, 0] < -0.9).all()
    # left image half sees the left (+y) side of the road ahead
    left, right = xy_f[:, : W // 2][hit_f[:, : W // 2]], xy_f[:, W // 2 :][hit_f[:, W // 2 :]]
    assert (left[:, 1] > 0).all() and (right[:, 1] < 0).all()
    # a point straight ahead projects onto the image centre column
    uv, _ = _project(intrinsics(rig["CAM_FRONT"], W, H), cam_to_ego(rig["CAM_FRONT"]), np.array([[20.0, 0.0, 0.0]]))
    assert abs(uv[0, 0] - (W - 1) / 2) < 1e-6 and (H - 1) / 2 < uv[0, 1] < H


def test_hit_mask_has_a_horizon_and_a_range():
    cam = default_rig()[0]
    _, hit = ground_lut(cam, W, H, 1000.0)
    rows = hit.any(axis=1)
    first = int(np.argmax(rows))
    assert 0 < first < H // 2  # sky on top, ground below
    assert not rows[:first].any() and rows[first:].all()
    assert hit[first:].all()  # every pixel below the horizon meets the ground
    _, near = ground_lut(cam, W, H, 20.0)
    assert near.sum() < hit.sum() and near[-1].all()
    # the horizon row is where the ray is level: pitch_deg down puts it above the centre row
    K = intrinsics(cam, W, H)
    horizon_v = K[1, 2] - K[1, 1] * np.tan(np.radians(cam.pitch_deg))
    assert abs(first - np.ceil(horizon_v)) <= 1


def test_bad_specs_raise_config_error():
    with pytest.raises(ConfigError, match="hfov"):
        CameraSpec(name="X", yaw_deg=0, x=0, y=0, z=1.5, hfov_deg=180)
    with pytest.raises(ConfigError, match="above the road"):
        CameraSpec(name="X", yaw_deg=0, x=0, y=0, z=0.0)
    with pytest.raises(ConfigError, match="unique"):
        calib_json([default_rig()[0]] * 2, W, H)
    with pytest.raises(ConfigError, match="max_range"):
        ground_lut(default_rig()[0], W, H, 0.0)
