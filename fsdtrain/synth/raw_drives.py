"""``fsdtrain data synth --raw``: the synthetic fleet written as raw drives (docs/data-format.md).

The ingest path (:mod:`fsdtrain.ingest.drives`) must be tested on data that the shard writer did not
make, in the shapes real logs come in. Each synthetic drive is one planned stretch of road
(:func:`~fsdtrain.synth.scene.plan_clip`) rendered by :class:`~fsdtrain.synth.render.Renderer`, then
written as a raw drive:

- ``poses.csv`` at ``pose_hz`` (not the camera rate), in a world frame that is rotated and shifted
  like a UTM grid (so yaw wraps across +-pi in some drives and coordinates are large);
- cameras at ``fps``; with ``jpeg_cameras`` every second camera of the rig is a folder of
  ``<timestamp_us>.jpg`` frames, the others are ``<CAM>.mp4`` + ``<CAM>.timestamps.csv``;
- ``calib.json`` from the rig, ``drive.json`` with country, zone and vehicle.

Timestamps are exact (``t0 + round(k * 1e6 / rate)``); the same arguments give the same files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from fsdtrain.errors import ConfigError
from fsdtrain.format.video import encode_video
from fsdtrain.ingest.raw import CALIB_JSON, DRIVE_JSON, POSES_CSV
from fsdtrain.store import objects
from fsdtrain.synth.render import Renderer
from fsdtrain.synth.rig import calib_json, default_rig
from fsdtrain.synth.scene import ClipPlan, clip_seed, country_style, plan_clip

__all__ = ["drive_name", "drive_seed", "plan_drive", "world_transform", "encode_jpeg", "write_raw_drive", "synth_raw_drives"]

_SPLIT = "raw"  # enters the drive seed, so raw drives never repeat the fleet's clips


def drive_name(country: str, seed: int, index: int) -> str:
    """``synth_cn_s0_d0003``: the drive_id (and folder name) of synthetic raw drive ``index``."""
    return f"synth_{country.lower()}_s{seed}_d{index:04d}"


def drive_seed(country: str, seed: int, index: int) -> int:
    return clip_seed(seed, _SPLIT, country.upper(), index)


def plan_drive(country: str, *, seed: int, index: int, seconds: float, rate: float) -> ClipPlan:
    """The drive's plan sampled at ``rate`` Hz: the same road and motion at every rate (ground truth for tests)."""
    return plan_clip(country, seed=drive_seed(country, seed, index), fps=rate, seconds=seconds)


def world_transform(pose_world: np.ndarray, *, seed: int, index: int) -> tuple[float, float, float]:
    """(rotation rad, x offset m, y offset m) from a drive plan's frame to the drive's world frame.

    Odd drives are turned so that the heading is exactly +-pi halfway through (so yaw wraps in
    poses.csv); even drives get a seeded rotation. Offsets are UTM-like (hundreds of km).
    """
    rng = np.random.default_rng([seed, index, 0x5EED])
    rot = math.pi - float(pose_world[len(pose_world) // 2, 2]) if index % 2 else float(rng.uniform(-math.pi, math.pi))
    return rot, float(rng.uniform(2e5, 8e5)), float(rng.uniform(4e6, 5e6))


def encode_jpeg(frame: np.ndarray, *, quality: int = 2) -> bytes:
    """[H, W, 3] uint8 RGB -> JPEG bytes (FFmpeg's mjpeg, full-range 4:2:0; ``quality`` 2 best .. 31 worst)."""
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frame.shape[1], frame.shape[0], "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.thread_count = 1
    ctx.options = {"qmin": str(quality), "qmax": str(quality)}
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuvj420p")
    return b"".join(bytes(p) for p in ctx.encode(vf) + ctx.encode(None))


def _times(t0: int, n: int, rate: float) -> np.ndarray:
    return t0 + np.round(np.arange(n) * (1e6 / rate)).astype(np.int64)


def write_raw_drive(
    out_dir: str | Path,
    country: str,
    *,
    seed: int,
    index: int,
    renderer: Renderer,
    seconds: float,
    fps: float,
    pose_hz: float,
    jpeg_cameras: bool,
) -> Path:
    """Writes one synthetic raw drive folder into ``out_dir``; returns its path."""
    style = country_style(country)
    code = style.code
    name = drive_name(code, seed, index)
    drive = Path(out_dir) / name
    if drive.exists():
        raise ConfigError(f"{drive} already exists; synthesize raw drives into an empty folder")
    drive.mkdir(parents=True)
    cams = renderer.rig
    cam_plan = plan_drive(code, seed=seed, index=index, seconds=seconds, rate=fps)
    pose_plan = plan_drive(code, seed=seed, index=index, seconds=seconds, rate=pose_hz)
    t0 = cam_plan.timestamp_us

    info = {
        "drive_id": name, "country": code, "zone": style.zone, "vehicle": "synth-suv-6cam",
        "cameras": [c.name for c in cams], "fps": float(fps),
        "tags": {"synthetic": True, "generator": "fsdtrain.synth_raw/1", "seed": seed, "index": index},
    }  # fmt: skip
    (drive / DRIVE_JSON).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    (drive / CALIB_JSON).write_text(json.dumps(calib_json(cams, renderer.width, renderer.height), indent=1, sort_keys=True) + "\n")

    rot, ox, oy = world_transform(pose_plan.pose_world, seed=seed, index=index)
    c, s = math.cos(rot), math.sin(rot)
    pw = pose_plan.pose_world  # [N, 3] plan frame
    x, y = c * pw[:, 0] - s * pw[:, 1] + ox, s * pw[:, 0] + c * pw[:, 1] + oy
    yaw = np.arctan2(np.sin(pw[:, 2] + rot), np.cos(pw[:, 2] + rot))  # wrapped to (-pi, pi], as loggers write it
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timestamp_us", "x", "y", "z", "yaw"])
    for row in zip(_times(t0, len(pw), pose_hz), x, y, yaw):
        w.writerow([int(row[0]), f"{row[1]:.6f}", f"{row[2]:.6f}", "0.000000", f"{row[3]:.9f}"])
    (drive / POSES_CSV).write_text(buf.getvalue())

    frames = renderer.render(cam_plan)  # [F, N_cam, H, W, 3]
    times = _times(t0, len(frames), fps)
    for k, cam in enumerate(cams):
        if jpeg_cameras and k % 2 == 1:
            folder = drive / cam.name
            folder.mkdir()
            for t, frame in zip(times, frames[:, k]):
                (folder / f"{int(t)}.jpg").write_bytes(encode_jpeg(frame))
        else:
            (drive / f"{cam.name}.mp4").write_bytes(encode_video(np.ascontiguousarray(frames[:, k]), fps, gop=int(round(fps))))
            (drive / f"{cam.name}.timestamps.csv").write_text("timestamp_us\n" + "".join(f"{int(t)}\n" for t in times))
    return drive


def synth_raw_drives(
    out_dir: str | Path,
    countries: list[str],
    drives: int,
    *,
    seed: int = 0,
    seconds: float = 10.0,
    width: int = 160,
    height: int = 96,
    fps: float = 10.0,
    pose_hz: float = 25.0,
    jpeg_cameras: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Writes ``drives`` synthetic raw drives per country into the local folder ``out_dir``.

    Args:
        out_dir: local folder (a plain path or ``file://``); drive folders are created inside it.
        countries: country codes of the synthetic fleet (see :data:`~fsdtrain.synth.scene.STYLES`).
        drives: drives per country.
        seed: fleet seed; the same arguments give the same files.
        seconds: drive length.
        width, height: image size, even numbers.
        fps: camera frame rate.
        pose_hz: pose rate, normally not ``fps`` (ingest resamples poses onto frame times).
        jpeg_cameras: write every second camera as a folder of JPEG frames instead of an MP4.
        progress: called with a one-line message after each drive.

    Returns:
        The drive folders, countries in the order given.
    """
    u = objects.parse_url(str(out_dir))
    if u.scheme != "file":
        raise ConfigError(f"raw drives go to a local folder, not {out_dir}; ingest them with `fsdtrain data write --raw DIR --out {out_dir}`")
    if drives < 1:
        raise ConfigError(f"drives={drives} must be at least 1")
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ConfigError(f"image size {width}x{height}: width and height must be even and at least 16")
    if not (fps > 0 and pose_hz > 0) or int(round(seconds * min(fps, pose_hz))) < 2:
        raise ConfigError(f"seconds={seconds}, fps={fps}, pose_hz={pose_hz}: need positive rates and at least 2 frames and poses")
    if not countries:
        raise ConfigError("no countries given, e.g. CN,US,DE")
    styles = [country_style(c) for c in countries]
    renderer = Renderer(default_rig(), width, height)
    out = []
    for style in styles:
        for i in range(drives):
            path = write_raw_drive(
                u.key, style.code, seed=seed, index=i, renderer=renderer, seconds=seconds, fps=fps, pose_hz=pose_hz,
                jpeg_cameras=jpeg_cameras,
            )  # fmt: skip
            out.append(path)
            if progress is not None:
                progress(f"{style.code}: raw drive {i + 1}/{drives} {path.name}")
    return out
