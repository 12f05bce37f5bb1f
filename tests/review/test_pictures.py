"""Pictures of a review page (fsdtrain/review/pictures.py): the camera rule, and the bird's-eye panel cut
out of an eval figure being exactly the ego-only figure eval draws (so no camera pixel is left in it)."""

import numpy as np
import torch
from PIL import Image

from fsdtrain.eval.viz import window_figure
from fsdtrain.review.pictures import birds_eye_part, camera_allowed
from fsdtrain.synth.rig import cam_to_ego, intrinsics, surround6


def window(country: str) -> dict:
    spec = surround6()[0]
    rng = np.random.default_rng(0)
    return {
        "images": torch.tensor(rng.integers(0, 255, (1, 2, 3, 48, 64)), dtype=torch.uint8),  # [N_cam, T, 3, H, W]
        "ego_hist": torch.tensor([[-0.5, -1.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]]),
        "future": torch.tensor([[2.0 * i, 0.3 * i, 0.0] for i in range(1, 7)]),
        "intrinsics": torch.tensor(intrinsics(spec, 64, 48)[None], dtype=torch.float32),
        "cam_to_ego": torch.tensor(cam_to_ego(spec)[None], dtype=torch.float32),
        "country": country, "zone": "cn" if country == "CN" else "global", "clip_id": "drive_0-000000", "frame": 5,
    }  # fmt: skip


def test_camera_frames_follow_the_residency_zone_of_their_country():
    assert (
        camera_allowed("CN", "cn") and not camera_allowed("CN", "global") and not camera_allowed("CN", "eu")
    )
    assert camera_allowed("US", "global") and camera_allowed("US", "cn")
    assert not camera_allowed(None, "global") and not camera_allowed(None, "cn")  # unknown country: never


def test_the_birds_eye_part_of_an_eval_figure_is_the_ego_only_figure():
    w = window("CN")
    traj, logits = w["future"][None].repeat(3, 1, 1) * 1.1, torch.tensor([1.0, 0.0, -1.0])
    for height in (400, 240):
        both = window_figure(w, traj, logits, cameras=["CAM_FRONT"], with_camera=True, height=height)
        ego_only = window_figure(w, traj, logits, cameras=["CAM_FRONT"], with_camera=False, height=height)
        assert both.width > ego_only.width
        part = birds_eye_part(both)
        assert part.size == ego_only.size
        assert np.array_equal(np.asarray(part), np.asarray(ego_only))
    try:
        birds_eye_part(Image.new("RGB", (10, 400)))
    except ValueError as exc:
        assert "not an eval figure" in str(exc)
    else:
        raise AssertionError("a picture narrower than a bird's-eye panel was cut")
