"""Trajectory pictures: a bird's-eye plot and the path drawn into the front camera, as PNG.

Used by ``fsdtrain eval --plots DIR`` and meant for W&B image logging. Frames as in
``fsdtrain.synth.rig``: ego x forward, y left, z up (z = 0 is the road); camera OpenCV (x right,
y down, z forward); pixel ``(u, v)`` = (column, row) with its centre at integer coordinates.

The bird's-eye plot holds ego coordinates only; :func:`window_figure` adds a camera frame, so a
figure with the camera is residency-bound data: write or log it only where the window's zone may
go (``with_camera=False`` gives the ego-only picture).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "HISTORY_COLOR",
    "TRUTH_COLOR",
    "MODE_COLORS",
    "BevView",
    "birds_eye",
    "project_to_camera",
    "camera_overlay",
    "front_camera",
    "window_at",
    "window_figure",
    "plot_name",
    "save_plots",
]

HISTORY_COLOR = (90, 90, 90)
TRUTH_COLOR = (30, 170, 60)
MODE_COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)
"""Colour of mode ``k`` is ``MODE_COLORS[k % len(MODE_COLORS)]``."""

_BACKGROUND = (255, 255, 255)
_GRID = (222, 222, 222)
_INK = (20, 20, 20)
_EGO_BOX = ((-1.0, 3.8), (-0.95, 0.95))  # ego car outline, metres: x from the rear axle, y
_TITLE_H = 18  # pixels of a title line
_NEAR_M = 0.05  # near plane in front of a camera, metres
_NAME_PART = re.compile(r"[^A-Za-z0-9_-]")


def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


@dataclass(frozen=True)
class BevView:
    """Maps ego-frame metres to pixels of a bird's-eye image: forward (x) up, left (y) left.

    ``u = origin_u - y * scale``, ``v = origin_v - x * scale``.
    """

    width: int
    """Image width, pixels."""
    height: int
    """Image height, pixels."""
    scale: float
    """Pixels per metre."""
    origin: tuple[float, float]
    """Pixel ``(u, v)`` of the ego origin (the current position)."""

    @classmethod
    def fit(cls, size: tuple[int, int], points: np.ndarray, metres: float | None = None) -> BevView:
        """A view of ``size`` (W, H) with the ego origin at the horizontal centre, three quarters down.

        Args:
            size: image ``(W, H)``.
            points: [N, 2] ego ``(x, y)`` that should be visible when ``metres`` is None.
            metres: distance shown ahead of the ego origin; None fits ``points`` (at least 10 m,
                rounded up to 5 m).
        """
        w, h = size
        if w < 16 or h < 16:
            raise ValueError(f"bird's-eye size {w}x{h} is too small: use at least 16x16 pixels")
        u0, v0 = (w - 1) / 2.0, 0.75 * (h - 1)
        if metres is None:
            pts = points[np.isfinite(points).all(axis=1)] if len(points) else np.zeros((0, 2))
            ahead = max(pts[:, 0].max(initial=0.0), 0.0)
            side = np.abs(pts[:, 1]).max(initial=0.0) * v0 / u0
            behind = max(-pts[:, 0].min(initial=0.0), 0.0) * v0 / (h - 1 - v0)
            metres = 5.0 * math.ceil(max(10.0, 1.1 * max(ahead, side, behind)) / 5.0)
        if not metres > 0:
            raise ValueError(f"metres={metres} must be positive")
        return cls(width=w, height=h, scale=v0 / metres, origin=(u0, v0))

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """[..., 2] ego ``(x, y)`` metres -> [..., 2] pixel ``(u, v)``."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack(
            [self.origin[0] - xy[..., 1] * self.scale, self.origin[1] - xy[..., 0] * self.scale], axis=-1
        )


def _path(draw: ImageDraw.ImageDraw, uv: np.ndarray, color, width: int, dot: int) -> None:
    pts = [tuple(p) for p in uv[np.isfinite(uv).all(axis=1)].tolist()]
    if len(pts) > 1:
        draw.line(pts, fill=color, width=width, joint="curve")
    for u, v in pts if dot else ():
        draw.ellipse([round(u) - dot, round(v) - dot, round(u) + dot, round(v) + dot], fill=color)


def _grid(draw: ImageDraw.ImageDraw, view: BevView, step: float, font) -> None:
    w, h = view.width, view.height
    (u0, v0), s = view.origin, view.scale
    # lines of constant x (labelled ahead of the ego), then of constant y
    for k in range(-math.floor((h - 1 - v0) / s / step), math.floor(v0 / s / step) + 1):
        v = round(v0 - k * step * s)
        draw.line([(0, v), (w - 1, v)], fill=_GRID if k else (190, 190, 190), width=1)
        if k > 0:
            draw.text((2, v - 12), f"{k * step:g} m", fill=(150, 150, 150), font=font)
    for k in range(-math.floor(u0 / s / step), math.floor(u0 / s / step) + 1):
        u = round(u0 - k * step * s)
        draw.line([(u, 0), (u, h - 1)], fill=_GRID if k else (190, 190, 190), width=1)
    draw.text((2, h - 14), f"grid {step:g} m", fill=_INK, font=font)


def _legend(
    draw: ImageDraw.ImageDraw, entries: list[tuple[str, tuple, int]], width: int, top: int, font
) -> None:
    text_w = max(draw.textlength(text, font=font) for text, _, _ in entries)
    x0, row = width - 4 - 22 - text_w - 6, 13
    draw.rectangle(
        [x0 - 4, top, width - 3, top + 4 + row * len(entries)], fill=_BACKGROUND, outline=(200, 200, 200)
    )
    for i, (text, color, line_w) in enumerate(entries):
        y = top + 3 + i * row + row // 2
        draw.line([(x0, y), (x0 + 18, y)], fill=color, width=line_w)
        draw.text((x0 + 24, y - 6), text, fill=_INK, font=font)


def birds_eye(
    ego_hist,
    future,
    traj,
    probs,
    *,
    title: str | None = None,
    size: tuple[int, int] = (320, 400),
    metres: float | None = None,
    grid_m: float = 5.0,
) -> Image.Image:
    """Bird's-eye plot of one window in its ego frame, forward up.

    Args:
        ego_hist: [T, 6] ``t, x, y, yaw, speed, yaw_rate``; the last row is the current frame.
        future: [S, 3] ground-truth ``x, y, yaw``.
        traj: [K, S, 3] predicted modes (or [K, S, 2]).
        probs: [K] mode probabilities (softmax of the logits).
        title: text at the top left.
        size: image ``(W, H)`` in pixels.
        metres: distance shown ahead of the ego; None fits the paths.
        grid_m: grid spacing, metres (a multiple of it when more than 20 lines would be ahead).

    Returns:
        An RGB image of ``size``: grid, ego car, history (grey), truth (green, on top) and each
        mode with its probability in the legend; the most likely mode is drawn thickest.
    """
    hist = _np(ego_hist)[:, 1:3]  # [T, 2]
    truth = _np(future)[:, :2]  # [S, 2]
    modes = _np(traj)[..., :2]  # [K, S, 2]
    p = _np(probs).reshape(-1)  # [K]
    if modes.ndim != 3 or len(p) != modes.shape[0]:
        raise ValueError(f"traj must be [K, S, 2|3] with probs [K], got {modes.shape} and {p.shape}")
    origin = np.zeros((1, 2))
    view = BevView.fit(size, np.concatenate([hist, truth, modes.reshape(-1, 2), origin]), metres)
    img = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = _font()
    metres_shown = view.origin[1] / view.scale
    _grid(draw, view, grid_m * math.ceil(metres_shown / (20 * grid_m)), font)  # at most ~20 lines ahead
    (x0, x1), (y0, y1) = _EGO_BOX
    box = view.to_pixel(np.array([[x1, y1], [x0, y0]]))  # top-left, bottom-right
    draw.rectangle([*box[0].round(), *box[1].round()], fill=(235, 235, 235), outline=(120, 120, 120))
    best = int(p.argmax())
    for k in np.argsort(p, kind="stable"):  # least likely first, the best on top of the other modes
        width = 4 if k == best else 2
        _path(
            draw,
            view.to_pixel(np.concatenate([origin, modes[k]])),
            MODE_COLORS[k % len(MODE_COLORS)],
            width,
            0,
        )
    _path(draw, view.to_pixel(hist), HISTORY_COLOR, 2, 2)
    _path(draw, view.to_pixel(np.concatenate([origin, truth])), TRUTH_COLOR, 2, 2)
    entries = [("history", HISTORY_COLOR, 2), ("truth", TRUTH_COLOR, 2)]
    entries += [
        (f"mode {k} p={p[k]:.2f}", MODE_COLORS[k % len(MODE_COLORS)], 4 if k == best else 2)
        for k in range(len(p))
    ]
    if title:
        draw.rectangle([0, 0, size[0] - 1, _TITLE_H - 1], fill=_BACKGROUND)
        draw.text((4, 3), title, fill=_INK, font=font)
    _legend(draw, entries, size[0], _TITLE_H + 2 if title else 2, font)
    return img


def project_to_camera(points, K, T_cam_to_ego) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points -> pixels of a camera.

    Args:
        points: [N, 2] ground points ``(x, y)`` (z = 0, the road) or [N, 3] ``(x, y, z)``, ego frame.
        K: [3, 3] intrinsics at the image size drawn on.
        T_cam_to_ego: [4, 4] with ``X_ego = T @ X_cam``.

    Returns:
        ``uv`` [N, 2] pixel coordinates (meaningless where ``depth <= 0``) and ``depth`` [N], the
        camera-frame z (distance along the optical axis; <= 0 is behind the camera).
    """
    pts = _np(points)
    if pts.shape[-1] == 2:
        pts = np.concatenate([pts, np.zeros_like(pts[:, :1])], axis=1)
    T = _np(T_cam_to_ego)
    cam = (pts - T[:3, 3]) @ T[:3, :3]  # [N, 3] camera frame: R^T (X_ego - t)
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ _np(K).T)[:, :2] / depth[:, None]  # [N, 2]
    return uv, depth


def _clip_2d(
    a: np.ndarray, b: np.ndarray, lo: tuple[float, float], hi: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Liang-Barsky: the part of segment a-b inside the box [lo, hi], or None."""
    t0, t1, d = 0.0, 1.0, b - a
    for axis in (0, 1):
        for p, q in ((-d[axis], a[axis] - lo[axis]), (d[axis], hi[axis] - a[axis])):
            if p == 0:
                if q < 0:
                    return None
                continue
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 > t1:
                return None
    return a + t0 * d, a + t1 * d


def _camera_segments(
    points: np.ndarray, K, T_cam_to_ego, size: tuple[int, int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pixel segments of the polyline through ``points`` [N, 3] (ego frame), cut at the near plane
    and at the image border (a little outside it, so thick lines reach the edge)."""
    T = _np(T_cam_to_ego)
    cam = (points - T[:3, 3]) @ T[:3, :3]  # [N, 3] camera frame
    Kn = _np(K)
    w, h = size
    lo, hi = (-8.0, -8.0), (w + 7.0, h + 7.0)
    out = []
    for a, b in zip(cam[:-1], cam[1:]):
        if not (np.isfinite(a).all() and np.isfinite(b).all()) or (a[2] < _NEAR_M and b[2] < _NEAR_M):
            continue
        if a[2] < _NEAR_M or b[2] < _NEAR_M:  # one end behind the near plane: keep the part in front
            t = (_NEAR_M - a[2]) / (b[2] - a[2])
            cut = a + t * (b - a)
            a, b = (cut, b) if a[2] < _NEAR_M else (a, cut)
        ua, ub = (Kn @ a)[:2] / a[2], (Kn @ b)[:2] / b[2]
        seg = _clip_2d(ua, ub, lo, hi)
        if seg is not None:
            out.append(seg)
    return out


def _as_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = _np(image, dtype=np.uint8)
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise ValueError(f"image must be uint8 [3, H, W] or [H, W, 3], got shape {arr.shape}")
    if arr.shape[-1] != 3:  # [3, H, W] -> [H, W, 3]
        arr = arr.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def camera_overlay(
    image,
    traj_xy,
    K,
    T_cam_to_ego,
    *,
    color: tuple[int, int, int] = TRUTH_COLOR,
    width: int = 2,
    from_origin: bool = True,
) -> Image.Image:
    """Draws a ground path into a camera image.

    Args:
        image: uint8 [3, H, W] or [H, W, 3] (array or tensor), or a PIL image (left unchanged: a
            copy is drawn on).
        traj_xy: [S, 2+] ego-frame path ``(x, y, ...)`` on the road (z = 0).
        K: [3, 3] intrinsics at this image's size.
        T_cam_to_ego: [4, 4] camera -> ego.
        color: RGB of the line.
        width: line width, pixels.
        from_origin: start the line at the ego origin (the current position).

    Returns:
        A new RGB image. The part of the path behind the camera (closer than 5 cm in front of it)
        is cut away, so nothing behind the camera is mirrored into the picture.
    """
    img = _as_image(image).copy()
    xy = _np(traj_xy)[:, :2]  # [S, 2]
    if from_origin:
        xy = np.concatenate([np.zeros((1, 2)), xy])
    pts = np.concatenate([xy, np.zeros_like(xy[:, :1])], axis=1)  # [S, 3] on the road
    draw = ImageDraw.Draw(img)
    for a, b in _camera_segments(pts, K, T_cam_to_ego, img.size):
        draw.line([tuple(a), tuple(b)], fill=color, width=width)
        if width > 2:  # round the joints
            r = width / 2 - 0.5
            draw.ellipse([b[0] - r, b[1] - r, b[0] + r, b[1] + r], fill=color)
    return img


def front_camera(cameras: Sequence[str] | None) -> int:
    """Index of the front camera: the one named ``front`` or ``CAM_FRONT`` (any case), else 0."""
    for i, name in enumerate(cameras or ()):
        if name.lower() in ("front", "cam_front"):
            return i
    return 0


def window_at(batch: dict, index: int) -> dict:
    """Window ``index`` of a collated batch, with the keys :class:`~fsdtrain.data.stream.FleetStream` yields."""
    out = {}
    for key, value in batch.items():
        item = value[index] if isinstance(value, torch.Tensor | np.ndarray | list | tuple) else value
        out[key] = item.item() if isinstance(item, torch.Tensor) and item.ndim == 0 else item
    return out


def _scaled_K(K: np.ndarray, s: float) -> np.ndarray:
    """Intrinsics of the image resized by ``s`` (pixel-centre convention: u' = (u + 0.5) s - 0.5)."""
    K = K.copy()
    K[:2, :2] *= s
    K[:2, 2] = (K[:2, 2] + 0.5) * s - 0.5
    return K


def window_figure(
    window: dict,
    traj,
    logits,
    *,
    cameras: Sequence[str] | None = None,
    with_camera: bool = True,
    height: int = 400,
) -> Image.Image:
    """Bird's-eye plot beside the front camera's current frame with the paths drawn in.

    Args:
        window: one window (:func:`window_at`): ``images`` uint8 [N_cam, T, 3, H, W], ``ego_hist``
            [T, 6], ``future`` [S, 3], ``intrinsics`` [N_cam, 3, 3], ``cam_to_ego`` [N_cam, 4, 4],
            ``country``, ``clip_id``, ``frame``.
        traj: [K, S, 3] the model's modes for this window; logits: [K].
        cameras: camera names in the order of the ``images`` axis (picks the front camera).
        with_camera: False leaves out the camera panel (ego coordinates only: no residency-bound pixels).
        height: panel height, pixels; the camera frame is scaled to it.

    Returns:
        An RGB image: a title line (country, clip, frame) over the bird's-eye panel (3:4) and the camera panel with the truth (green) and
        every mode (the most likely one thickest).
    """
    probs = _softmax(_np(logits).reshape(-1))  # [K]
    modes = _np(traj)  # [K, S, 3]
    title = f"{window.get('country', '?')}  {window.get('clip_id', '?')}  frame {window.get('frame', '?')}"
    bev = birds_eye(window["ego_hist"], window["future"], modes, probs, size=(height * 3 // 4, height))
    if not with_camera:
        return _titled(bev, title)
    c = front_camera(cameras)
    frame = _as_image(window["images"][c, -1])  # current frame [3, H, W] of the front camera
    s = height / frame.height
    frame = frame.resize((max(1, round(frame.width * s)), height), Image.Resampling.BILINEAR)
    K, T = _scaled_K(_np(window["intrinsics"][c]), s), _np(window["cam_to_ego"][c])
    best = int(probs.argmax())
    for k in np.argsort(probs, kind="stable"):
        frame = camera_overlay(
            frame, modes[k], K, T, color=MODE_COLORS[k % len(MODE_COLORS)], width=5 if k == best else 3
        )
    frame = camera_overlay(frame, window["future"], K, T, color=TRUTH_COLOR, width=3)
    name = cameras[c] if cameras and c < len(cameras) else f"camera {c}"
    ImageDraw.Draw(frame).text((4, 3), name, fill=(255, 255, 255), font=_font())
    both = Image.new("RGB", (bev.width + frame.width, height), _BACKGROUND)
    both.paste(bev, (0, 0))
    both.paste(frame, (bev.width, 0))
    return _titled(both, title)


def _titled(panel: Image.Image, title: str) -> Image.Image:
    out = Image.new("RGB", (panel.width, panel.height + _TITLE_H), _BACKGROUND)
    ImageDraw.Draw(out).text((4, 3), title, fill=_INK, font=_font())
    out.paste(panel, (0, _TITLE_H))
    return out


def plot_name(country: str, clip_id: str, frame: int) -> str:
    """``<country>-<clip_id>-<frame:06d>.png`` with every character outside ``[A-Za-z0-9_-]``
    replaced by ``_``: never a path separator, ``..`` or a hidden file."""
    if isinstance(frame, bool) or not isinstance(frame, int | np.integer) or frame < 0:
        raise ValueError(f"frame must be a non-negative integer, got {frame!r}")
    parts = [_NAME_PART.sub("_", str(p))[:96] or "_" for p in (country, clip_id)]
    return f"{parts[0]}-{parts[1]}-{int(frame):06d}.png"


def save_plots(
    directory: str | Path,
    batch: dict,
    traj,
    logits,
    *,
    indices: Sequence[int] | None = None,
    cameras: Sequence[str] | None = None,
    with_camera: bool = True,
) -> list[Path]:
    """Writes one :func:`window_figure` PNG per selected window of a batch.

    Args:
        directory: local folder, created when missing.
        batch: collated windows (:class:`~fsdtrain.data.stream.FleetStream` keys).
        traj: [B, K, S, 3] predicted modes; logits: [B, K].
        indices: windows of the batch to draw (default all).
        cameras: camera names in the order of the ``images`` axis.
        with_camera: include the front camera panel (residency-bound pixels; see the module doc).

    Returns:
        The paths written, named by :func:`plot_name`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    traj, logits = _np(traj), _np(logits)  # [B, K, S, 3], [B, K]
    written = []
    for i in range(traj.shape[0]) if indices is None else indices:
        window = window_at(batch, i)
        fig = window_figure(window, traj[i], logits[i], cameras=cameras, with_camera=with_camera)
        path = directory / plot_name(str(window["country"]), str(window["clip_id"]), int(window["frame"]))
        partial = path.with_name(f".{path.name}.partial")  # a crash never leaves a truncated PNG under the real name
        fig.save(partial, format="PNG")
        os.replace(partial, path)
        written.append(path)
    return written
