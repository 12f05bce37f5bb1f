"""Camera rigs: where each camera sits on the car and how its pixels map to rays and the ground.

Frames (docs/data-format.md):

- ego frame: ISO 8855, x forward, y left, z up, metres and radians; z = 0 is the road surface.
- camera frame: OpenCV, x right, y down, z forward (the optical axis).
- pixels: OpenCV convention, pixel ``(u, v)`` = (column, row) has its centre at integer coordinates,
  so ``K @ X_cam / X_cam[2]`` of a point seen at the centre of pixel column 7, row 3 is ``(7, 3)``.

The synthetic fleet renders with :func:`pixel_rays` and :func:`ground_lut`, which are built from
the same ``K`` and ``T_cam_to_ego`` that :func:`calib_json` stores, so the pixels of a synthetic
clip agree exactly with its calibration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fsdtrain.errors import ConfigError

__all__ = [
    "CameraSpec",
    "RIGS",
    "DEFAULT_RIG",
    "make_rig",
    "surround6",
    "surround8",
    "surround6_narrow",
    "default_rig",
    "intrinsics",
    "cam_to_ego",
    "calib_json",
    "pixel_rays",
    "ground_lut",
]


@dataclass(frozen=True, kw_only=True)
class CameraSpec:
    """One camera of a rig, mounted on the ego car.

    Angles are in degrees here because rigs are written by hand; every function returns
    radians-based matrices.
    """

    name: str
    """Camera name, ``[A-Za-z0-9_]``, e.g. ``CAM_FRONT``; also the video member name ``<name>.mp4``."""
    yaw_deg: float
    """Heading of the optical axis in the ego frame, counter-clockwise from ego x (left is positive)."""
    x: float
    """Mount position in the ego frame, metres forward of the ego origin (rear axle centre)."""
    y: float
    """Mount position, metres to the left."""
    z: float
    """Mount height above the road, metres."""
    pitch_deg: float = 0.0
    """Downward tilt of the optical axis, degrees (positive looks down towards the road)."""
    hfov_deg: float = 70.0
    """Horizontal field of view, degrees; pixels are square, so the vertical one follows from the image size."""

    def __post_init__(self) -> None:
        if not (0.0 < self.hfov_deg < 170.0):
            raise ConfigError(f"camera {self.name}: hfov_deg={self.hfov_deg} must be in (0, 170) degrees")
        if self.z <= 0.0:
            raise ConfigError(f"camera {self.name}: z={self.z} must be above the road (z > 0 metres)")


def surround6() -> list[CameraSpec]:
    """Six surround cameras named as in nuScenes, on the roof of a mid-size car (1.6 m high)."""
    return [
        CameraSpec(name="CAM_FRONT", yaw_deg=0.0, x=1.7, y=0.0, z=1.6, pitch_deg=4.0, hfov_deg=70.0),
        CameraSpec(name="CAM_FRONT_LEFT", yaw_deg=55.0, x=1.5, y=0.5, z=1.6, pitch_deg=5.0, hfov_deg=70.0),
        CameraSpec(name="CAM_FRONT_RIGHT", yaw_deg=-55.0, x=1.5, y=-0.5, z=1.6, pitch_deg=5.0, hfov_deg=70.0),
        CameraSpec(name="CAM_BACK", yaw_deg=180.0, x=-0.9, y=0.0, z=1.6, pitch_deg=6.0, hfov_deg=100.0),
        CameraSpec(name="CAM_BACK_LEFT", yaw_deg=110.0, x=0.5, y=0.6, z=1.6, pitch_deg=5.0, hfov_deg=70.0),
        CameraSpec(name="CAM_BACK_RIGHT", yaw_deg=-110.0, x=0.5, y=-0.6, z=1.6, pitch_deg=5.0, hfov_deg=70.0),
    ]


def surround8() -> list[CameraSpec]:
    """:func:`surround6` plus two wide side cameras under the mirrors, looking down at the neighbouring lanes.

    The first six cameras are exactly those of ``surround6``, in the same order, so a model's
    camera embeddings for them carry over; ``CAM_LEFT`` and ``CAM_RIGHT`` come last.
    """
    return surround6() + [
        CameraSpec(name="CAM_LEFT", yaw_deg=90.0, x=2.0, y=1.0, z=1.1, pitch_deg=20.0, hfov_deg=110.0),
        CameraSpec(name="CAM_RIGHT", yaw_deg=-90.0, x=2.0, y=-1.0, z=1.1, pitch_deg=20.0, hfov_deg=110.0),
    ]


def surround6_narrow() -> list[CameraSpec]:
    """:func:`surround6` plus a long-range camera behind the windscreen: 30 degrees wide, level.

    Production rigs carry one (a "narrow" or "tele" camera) because the road that decides the next
    seconds at motorway speed lies 40-100 m ahead, where the 70-degree front camera gives a lane a
    few pixels: at 160 x 96 pixels, a road point 60 m ahead is 3 rows under the horizon in
    ``CAM_FRONT`` and 8 in ``CAM_FRONT_NARROW``. The first six cameras are those of ``surround6``.
    """
    return surround6() + [CameraSpec(name="CAM_FRONT_NARROW", yaw_deg=0.0, x=1.9, y=0.0, z=1.5, pitch_deg=1.0, hfov_deg=30.0)]


RIGS: dict[str, Callable[[], list[CameraSpec]]] = {"surround6": surround6, "surround6_narrow": surround6_narrow, "surround8": surround8}
"""Built-in camera rigs by name; each entry builds the rig's cameras in output order."""

DEFAULT_RIG = "surround6"
"""The rig used when none is named."""


def make_rig(name: str) -> list[CameraSpec]:
    """The cameras of the built-in rig ``name``; unknown names fail with the known ones."""
    build = RIGS.get(name)
    if build is None:
        raise ConfigError(f"unknown camera rig {name!r}; known: {', '.join(sorted(RIGS))}")
    return build()


def default_rig() -> list[CameraSpec]:
    """The cameras of :data:`DEFAULT_RIG` (six surround cameras, :func:`surround6`)."""
    return make_rig(DEFAULT_RIG)


def _check_size(width: int, height: int) -> None:
    if width < 2 or height < 2:
        raise ConfigError(f"image size {width}x{height} is too small: use at least 2x2 pixels")


def intrinsics(spec: CameraSpec, width: int, height: int) -> np.ndarray:
    """Pinhole matrix ``K`` [3, 3] for an image of ``width`` x ``height`` pixels.

    Square pixels: ``fx = fy = (width / 2) / tan(hfov / 2)``; principal point at the image centre
    in the pixel-centre convention, ``((width - 1) / 2, (height - 1) / 2)``.
    """
    _check_size(width, height)
    f = (width / 2.0) / math.tan(math.radians(spec.hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def cam_to_ego(spec: CameraSpec) -> np.ndarray:
    """Rigid transform ``T_cam_to_ego`` [4, 4]: ``X_ego = T @ X_cam`` (homogeneous points)."""
    # A camera looking along ego x: cam z (forward) = ego x, cam x (right) = -ego y, cam y (down) = -ego z.
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    p, y = math.radians(spec.pitch_deg), math.radians(spec.yaw_deg)
    # A positive rotation about ego y (left) turns the forward axis down: that is the pitch.
    pitch = np.array([[math.cos(p), 0.0, math.sin(p)], [0.0, 1.0, 0.0], [-math.sin(p), 0.0, math.cos(p)]])
    yaw = np.array([[math.cos(y), -math.sin(y), 0.0], [math.sin(y), math.cos(y), 0.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = yaw @ pitch @ base
    T[:3, 3] = (spec.x, spec.y, spec.z)
    return T


def calib_json(rig: list[CameraSpec], width: int, height: int) -> dict:
    """The ``calib.json`` content of a clip (docs/data-format.md): per camera ``K``, ``T_cam_to_ego``, ``size`` [W, H]."""
    names = [c.name for c in rig]
    if len(set(names)) != len(names):
        raise ConfigError(f"rig camera names must be unique, got {names}")
    return {
        c.name: {
            "K": intrinsics(c, width, height).tolist(),
            "T_cam_to_ego": cam_to_ego(c).tolist(),
            "size": [int(width), int(height)],
        }
        for c in rig
    }


def pixel_rays(spec: CameraSpec, width: int, height: int) -> np.ndarray:
    """Unit direction of every pixel's viewing ray in the ego frame, [H, W, 3] float64.

    The rays start at the camera centre ``cam_to_ego(spec)[:3, 3]``.
    """
    K = intrinsics(spec, width, height)
    R = cam_to_ego(spec)[:3, :3]
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # [H, W, 3] homogeneous pixels
    d_cam = pix @ np.linalg.inv(K).T  # [H, W, 3] camera-frame directions (z = 1)
    d_ego = d_cam @ R.T  # [H, W, 3]
    return d_ego / np.linalg.norm(d_ego, axis=-1, keepdims=True)


def ground_lut(spec: CameraSpec, width: int, height: int, max_range_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel's ray meets the flat road z = 0, in the ego frame.

    Args:
        spec: the camera.
        width, height: image size in pixels.
        max_range_m: ground points farther than this (horizontal distance from the camera) count as misses.

    Returns:
        ``xy`` [H, W, 2] float32 ego-frame ground point per pixel (0 where there is no hit) and
        ``hit`` [H, W] bool, False above the horizon and beyond ``max_range_m``.
    """
    if max_range_m <= 0:
        raise ConfigError(f"max_range_m={max_range_m} must be positive")
    rays = pixel_rays(spec, width, height)  # [H, W, 3]
    origin = cam_to_ego(spec)[:3, 3]
    dz = rays[..., 2]
    down = dz < -1e-9
    lam = np.where(down, -origin[2] / np.where(down, dz, -1.0), 0.0)  # [H, W] ray length to the ground
    pts = origin[:2] + lam[..., None] * rays[..., :2]  # [H, W, 2]
    dist = np.linalg.norm(pts - origin[:2], axis=-1)
    hit = down & (dist <= max_range_m)
    xy = np.where(hit[..., None], pts, 0.0).astype(np.float32)
    return xy, hit
