"""Rendering planned clips: a top-down raster of the road, looked up through each camera, in day, night or rain.

The road is flat, so each camera pixel below the horizon sees a ground point that is fixed in the
ego frame (:func:`~fsdtrain.synth.rig.ground_lut`). A frame is then a lookup of those points, moved
by the ego pose, in a mip-mapped top-down colour raster of the road (markings, shoulder, grass),
faded into horizon haze with distance, plus a ray test against the other vehicles' boxes.

Lighting conditions (:data:`CONDITIONS`) stay cheap because everything that depends only on where
a pixel looks is folded, once per clip, into the per-pixel gain and offset that the haze blend
already applies: the ego's headlights light fixed ground points of the ego frame, so at night they
are a per-pixel gain; rain's flat contrast and the wet road's mirror of the sky (stronger at
grazing angles) are a per-pixel gain and offset too. The rest is per clip (sky, puddles in the
road raster, other cars' lights) or sparse (raindrops on the lens and streaks, a few % of pixels).

Pixels are handled packed, one ``uint32`` per RGBX pixel: one gather per texture tap, and the tap
average and blend in SWAR arithmetic (8-bit channels in 16-bit lanes), exact to the per-channel
integer formulas. This assumes a little-endian machine (x86, ARM).

:class:`Renderer` holds the per-camera lookup tables, so build one per rig and image size and reuse
it for many clips; the road raster is built per clip from its plan and appearance seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fsdtrain.errors import ConfigError
from fsdtrain.synth.rig import CameraSpec, cam_to_ego, ground_lut, intrinsics, pixel_rays
from fsdtrain.synth.scene import CONDITIONS, WHITE, ClipPlan, Vehicle

__all__ = ["headlight", "Renderer"]

_RES_M = 0.1  # top-down raster resolution, m per pixel (level 0)
_LEVELS = 4  # mip levels: 0.1, 0.2, 0.4, 0.8 m per pixel
_LINE_M = 0.2  # marking width
_GRASS, _DIRT = np.array([72.0, 112.0, 52.0]), np.array([130.0, 115.0, 85.0])
_SKY_TOP, _HAZE = np.array([95.0, 150.0, 215.0]), np.array([205.0, 212.0, 220.0])
_UNIT_BOX = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (0.0, 1.0)])  # [8, 3], bits x y z
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1])  # [12, 2]
_NEAR = 0.05  # near plane, m in front of a camera
_LAMP_X = 3.6  # ego headlights, m ahead of the ego origin (rear axle); tail lights at the rear bumper
_REAR_X = -0.9
_U32 = np.uint32


@dataclass(frozen=True, kw_only=True)
class _Look:
    """How a condition lights a clip."""

    sky_top: np.ndarray
    """Sky colour straight up."""
    horizon: np.ndarray
    """Sky colour at the horizon, and the haze far ground fades into."""
    ambient: float
    """Light on the ground and cars without the ego's headlights, 1 = daylight."""
    headlights: bool
    """The ego's low beams and tail lights light the ground near it; other cars show their lights."""
    contrast: float
    """Weight of the scene against flat ``grey`` (rain: water in the air)."""
    grey: tuple[float, float, float]
    """Colour the scene is flattened towards."""
    sheen: float
    """How much the wet road mirrors the sky near the horizon (0 = dry)."""
    wet: bool
    """Darker wet asphalt with puddles in the road raster, raindrops and streaks on the lens."""


_LOOKS: dict[str, _Look] = {
    "day": _Look(sky_top=_SKY_TOP, horizon=_HAZE, ambient=1.0, headlights=False, contrast=1.0, grey=(0, 0, 0), sheen=0.0, wet=False),
    "night": _Look(sky_top=np.array([6.0, 8.0, 20.0]), horizon=np.array([26.0, 25.0, 34.0]), ambient=0.11, headlights=True,
                   contrast=1.0, grey=(0, 0, 0), sheen=0.0, wet=False),
    "rain": _Look(sky_top=np.array([128.0, 133.0, 140.0]), horizon=np.array([172.0, 175.0, 180.0]), ambient=1.0, headlights=False,
                  contrast=0.62, grey=(118.0, 121.0, 126.0), sheen=0.45, wet=True),
}


def _look(condition: str) -> _Look:
    look = _LOOKS.get(condition)
    if look is None:
        raise ConfigError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    return look


def headlight(xy: np.ndarray) -> np.ndarray:
    """Light [...] in [0, 1] of the ego's low beams on ego-frame ground points ``xy`` [..., 2]: bright near, a 50 degree cone."""
    dx = xy[..., 0] - _LAMP_X
    r2 = dx**2 + xy[..., 1] ** 2
    angle = np.arctan2(xy[..., 1], np.maximum(dx, 1e-3))
    return np.where(dx > 0, np.exp(-((angle / 0.45) ** 2)) * np.minimum(1.0, 1.4 / (1.0 + r2 / 30.0**2)), 0.0)


def _blend(px: np.ndarray, gain: np.ndarray, add_rb: np.ndarray, add_g: np.ndarray) -> np.ndarray:
    """Per channel ``(c * gain + add) >> 8`` of packed RGBX pixels; needs ``c * gain + add <= 65535``."""
    rb = (((px & _U32(0x00FF00FF)) * gain + add_rb) >> _U32(8)) & _U32(0x00FF00FF)
    g = (((px >> _U32(8)) & _U32(0xFF)) * gain + add_g) & _U32(0xFF00)
    return rb | g


def _pack_add(add: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel offsets [..., 3] (each < 65536) -> the R|B<<16 and G lanes :func:`_blend` takes."""
    add = add.astype(np.uint32)
    return add[..., 0] | (add[..., 2] << _U32(16)), add[..., 1]


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> uint32 RGBX [...] (little-endian: R is the low byte)."""
    rgbx = np.zeros((*rgb.shape[:-1], 4), dtype=np.uint8)
    rgbx[..., :3] = rgb
    return rgbx.view(np.uint32)[..., 0]


# --- road raster ---------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Tileable noise [size, size] in about [-1, 1]: fine grain plus coarse blotches."""
    coarse = np.kron(rng.standard_normal((size // 16, size // 16)), np.ones((16, 16)))
    return (0.6 * rng.standard_normal((size, size)) + 0.5 * coarse).astype(np.float32)


def _puddles(rng: np.random.Generator, s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Seeded puddle mask [S, D] over road coordinates: blobs of a bilinear random field, about 15 % of the area."""
    cs, cd = 1.6, 0.8  # field cell, m along and across the road
    fs, fd = (s - s[0]) / cs, (d - d[0]) / cd
    grid = rng.random((int(fs[-1]) + 2, int(fd[-1]) + 2)).astype(np.float32)
    i, j = fs.astype(np.int64), fd.astype(np.int64)
    ws, wd = (fs - i).astype(np.float32)[:, None], (fd - j).astype(np.float32)
    across = grid[:, j] * (1 - wd) + grid[:, j + 1] * wd  # [cells along, D]
    return across[i] * (1 - ws) + across[i + 1] * ws > 0.68


def _road_raster(plan: ClipPlan, reach_m: float) -> tuple[np.ndarray, list[tuple[int, int, int]], tuple[float, float]]:
    """Top-down colour raster of the road within ``reach_m`` of the ego's path.

    Returns the mip levels flattened into one [sum of level pixels] packed RGBX uint32 array, per
    level (offset, width, height), and the world position of raster pixel (0, 0).
    """
    style, road = plan.style, plan.road
    look = _look(plan.condition)
    rng = np.random.default_rng(plan.appearance_seed)
    n, w = style.lanes_per_direction, style.lane_width_m
    half = n * w + 1.3  # lanes, 0.5 m shoulder, 0.8 m dirt
    keep = (road.s >= plan.s[0] - reach_m) & (road.s <= plan.s[-1] + reach_m)
    centre_xy = road.xy[keep]
    margin = half + 4.0  # raster edges are grass, so clamped lookups beyond them see grass too
    x0, y0 = centre_xy.min(axis=0) - margin
    align = 2 ** (_LEVELS - 1)
    width, height = (int(math.ceil(v / _RES_M / align)) * align for v in centre_xy.max(axis=0) + margin - (x0, y0))

    # Each material is a tile of its colour plus seeded noise; a sample copies its tile's texel.
    tex = _texture(rng)  # [T, T]
    tile = tex.shape[0]
    colors = [style.asphalt, _DIRT, WHITE, style.centre_color, _GRASS]
    grain = [6.0, 6.0, 8.0, 8.0, 14.0]
    if look.wet:  # wet asphalt is darker; puddles (material 5) mirror the overcast sky
        colors[0] = np.array(style.asphalt) * 0.78
        colors.append(0.4 * colors[0] + 0.6 * look.horizon)
        grain.append(3.0)
    palette = np.array(colors, dtype=np.float32) * plan.brightness
    grain_ = np.array(grain, dtype=np.float32)[:, None, None, None]
    tiles = np.clip(palette[:, None, None, :] + grain_ * tex[None, ..., None], 0, 255).astype(np.uint8)  # [materials, T, T, 3]
    reps = (height // tile + 1, width // tile + 1, 1)
    raster = np.tile(tiles[4], reps)[:height, :width].copy()  # [H0, W0, 3] grass everywhere

    step = 0.06  # sample spacing below the pixel size, so splatting leaves no holes (also outside curves)
    s = np.arange(road.s[keep][0], road.s[keep][-1], step)
    d = np.arange(-half, half, step, dtype=np.float32)  # [D]
    xy, h = road.pose(s)
    nx, ny = -np.sin(h).astype(np.float32), np.cos(h).astype(np.float32)
    ix = (((xy[:, 0, None] - x0).astype(np.float32) + d * nx[:, None]) / _RES_M).astype(np.int32)  # [S, D]
    iy = (((xy[:, 1, None] - y0).astype(np.float32) + d * ny[:, None]) / _RES_M).astype(np.int32)

    ad = np.abs(d)[None, :]  # [1, D]
    dashed = (s[:, None] % (style.dash_m + style.gap_m)) < style.dash_m  # [S, 1]
    white = np.abs(ad - n * w) < _LINE_M / 2  # edge lines, [1, D]
    lane_lines = np.zeros((1, len(d)), dtype=bool)
    for k in range(1, n):
        lane_lines |= np.abs(ad - k * w) < _LINE_M / 2
    if style.centre_line == "double_solid":
        centre = np.abs(ad - 0.17) < 0.07
    else:
        centre = ad < _LINE_M / 2
    centre = centre & dashed if style.centre_line == "dashed" else np.broadcast_to(centre, (len(s), len(d)))
    white = white | (lane_lines & dashed)  # [S, D]
    code = np.where(ad > n * w + 0.5, 1, 0).astype(np.int32) + np.zeros((len(s), 1), dtype=np.int32)  # [S, D]
    if look.wet:
        code[_puddles(rng, s, d) & (code == 0)] = 5
    code[white] = 2
    code[centre] = 3
    color = tiles.reshape(-1, 3)[(code * tile + (iy % tile)) * tile + ix % tile]  # [S, D, 3]
    flat = raster.reshape(-1, 3)
    idx = iy * width + ix
    flat[idx] = color
    marks = white | centre  # again on top, so asphalt never paints over a marking
    flat[idx[marks]] = color[marks]

    levels, layout, offset = [raster], [], 0
    for _ in range(1, _LEVELS):
        r = levels[-1].astype(np.uint16)
        levels.append(((r[0::2, 0::2] + r[1::2, 0::2] + r[0::2, 1::2] + r[1::2, 1::2] + 2) // 4).astype(np.uint8))
    for lv in levels:
        layout.append((offset, lv.shape[1], lv.shape[0]))
        offset += lv.shape[0] * lv.shape[1]
    return _pack(np.concatenate([lv.reshape(-1, 3) for lv in levels])), layout, (float(x0), float(y0))


# --- renderer ------------------------------------------------------------------------------------


class Renderer:
    """Renders planned clips for one rig and image size; build once, reuse for many clips.

    Args:
        rig: the cameras, in output order.
        width, height: image size in pixels.
        max_range_m: ground farther than this fades into the horizon haze.
    """

    def __init__(self, rig: list[CameraSpec], width: int, height: int, *, max_range_m: float = 100.0) -> None:
        self.rig, self.width, self.height, self.max_range_m = list(rig), width, height, max_range_m
        pix, pts, ground, lvl, haze, dists, ups, self.rays = [], [], [], [], [], [], [], []
        for c, cam in enumerate(rig):
            xy, hit = ground_lut(cam, width, height, max_range_m)  # [H, W, 2], [H, W]
            xy_all, _ = ground_lut(cam, width, height, 1e6)  # every pixel below the horizon, for the footprints
            rays = pixel_rays(cam, width, height)  # [H, W, 3]
            self.rays.append(rays)
            # Texture filtering: the mip level follows the pixel's footprint across the image
            # (mostly across the road), so thin lines never fall between samples; along the
            # foreshortened image columns two taps, a quarter footprint either side, average it.
            du = np.linalg.norm(np.gradient(xy_all, axis=1), axis=-1)
            level = np.clip(np.ceil(np.log2(du / _RES_M + 1e-9)), 0, _LEVELS - 1)
            dv = 0.25 * np.gradient(xy_all, axis=0)  # [H, W, 2]
            dv *= np.minimum(1.0, 3.0 / (np.linalg.norm(dv, axis=-1, keepdims=True) + 1e-9))  # the horizon row's neighbour is sky
            dist = np.linalg.norm(xy - cam_to_ego(cam)[:2, 3], axis=-1)
            fog = np.clip((dist - 30.0) / (max_range_m - 30.0), 0.0, 1.0) ** 1.5 * 0.85
            ups.append(np.clip(rays[..., 2] * 3.0, 0.0, 1.0).reshape(-1, 1))  # sky colour: 0 at the horizon, 1 above it
            flat = np.flatnonzero(hit)
            pix.append(flat + c * width * height)
            pts.append(np.stack([xy - dv, xy + dv]).reshape(2, -1, 2)[:, flat])
            ground.append(xy.reshape(-1, 2)[flat])
            lvl.append(level.reshape(-1)[flat].astype(np.int32))
            haze.append(np.round(fog.reshape(-1)[flat] * 256).astype(np.uint16))
            dists.append(dist.reshape(-1)[flat])
        self._pix = np.concatenate(pix)  # [M] flat index into [N_cam * H * W]
        self._taps = np.concatenate(pts, axis=1).astype(np.float32)  # [2, M, 2] ground points (two taps), ego frame
        self._lvl = np.concatenate(lvl)  # [M] int32 mip level
        self._fog = np.concatenate(haze).astype(np.int64)  # [M] haze weight out of 256
        self._up = np.concatenate(ups)  # [N_cam * H * W, 1]
        ground_xy = np.concatenate(ground).astype(np.float64)  # [M, 2] ground point of each pixel, ego frame
        self._wet_sheen = np.clip((np.concatenate(dists) - 4.0) / 40.0, 0.0, 1.0)  # [M] grazing angle: wet road mirrors the sky
        self._beam = headlight(ground_xy)  # [M]
        behind = np.hypot(np.minimum(ground_xy[:, 0] - _REAR_X, 0.0), ground_xy[:, 1])
        self._tail_glow = np.where(ground_xy[:, 0] < _REAR_X, 0.35 * np.exp(-behind / 2.0), 0.0)  # [M] red, behind the ego

    def render(self, plan: ClipPlan, *, chunk: int = 10) -> np.ndarray:
        """All frames of all cameras, [F, N_cam, H, W, 3] uint8 RGB (C-contiguous), lit as ``plan.condition``."""
        look = _look(plan.condition)
        flat, layout, (x0, y0) = _road_raster(plan, self.max_range_m + 5.0)
        assert len(flat) < 2**31, "road raster too large for int32 indexing"
        table = np.array(layout, dtype=np.int32)  # [L, 3] offset, width, height
        off, stride = table[self._lvl, 0], table[self._lvl, 1]
        x_max, y_max = float(table[0, 1] - 1), float(table[0, 2] - 1)
        gain, add_rb, add_g = self._ground_light(look, plan.brightness)
        sky = np.clip((look.horizon * (1 - self._up) + look.sky_top * self._up) * plan.brightness, 0, 255)  # [N_cam * H * W, 3]
        frames_n, n_cam = len(plan.ego), len(self.rig)
        out = np.empty((frames_n, n_cam * self.height * self.width), dtype=np.uint32)  # packed RGBX
        out[:] = _pack(sky.astype(np.uint8))
        for k0 in range(0, frames_n, chunk):
            pose = plan.pose_world[k0 : k0 + chunk].astype(np.float32)  # [b, 3]
            c, s = np.cos(pose[:, 2:3]), np.sin(pose[:, 2:3])
            taps = []
            for gx, gy in self._taps.transpose(0, 2, 1):  # two taps of [M]
                wx = (gx * c - gy * s + (pose[:, 0:1] - x0)) * (1 / _RES_M)  # [b, M] raster columns at level 0
                wy = (gx * s + gy * c + (pose[:, 1:2] - y0)) * (1 / _RES_M)
                # Clamping at level 0 keeps every level in range too: raster sizes are multiples of 2**(levels-1).
                ix = np.clip(wx, 0, x_max).astype(np.int32) >> self._lvl
                iy = np.clip(wy, 0, y_max).astype(np.int32) >> self._lvl
                taps.append(flat[off + iy * stride + ix])  # [b, M] packed
            a, b = taps
            mean = (a & b) + (((a ^ b) >> _U32(1)) & _U32(0x7F7F7F7F))  # per channel floor((a + b) / 2)
            out[k0 : k0 + chunk, self._pix] = _blend(mean, gain, add_rb, add_g)
        rgb = out.view(np.uint8).reshape(frames_n, n_cam, self.height, self.width, 4)[..., :3]
        self._draw_vehicles(plan, rgb, look)
        if look.wet:
            self._rain_on_lens(plan, out)
        return np.ascontiguousarray(rgb)  # as cheap as the per-camera copies it saves the encoder

    def _ground_light(self, look: _Look, brightness: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per ground pixel gain [M] and packed offsets of the blend: haze, light, rain's contrast and the wet road's sheen.

        ``value = (texel * gain + add) >> 8`` per channel, with ``gain`` and ``add`` from the
        fractions of the pixel that are texture, haze, mirrored sky and grey.
        """
        fog = self._fog  # [M] out of 256
        keep = 256 - fog
        light = look.ambient + (1.0 - look.ambient) * self._beam if look.headlights else np.full(len(fog), look.ambient)
        sheen = look.sheen * self._wet_sheen  # [M]
        gain = np.round(keep * look.contrast * (1.0 - sheen) * light)  # [M]
        horizon = np.round(look.horizon * brightness)  # [3]
        grey = np.array(look.grey) * brightness
        add = horizon * fog[:, None] + keep[:, None] * (look.contrast * sheen[:, None] * horizon + (1.0 - look.contrast) * grey)
        if look.headlights:
            add += keep[:, None] * self._tail_glow[:, None] * np.array([200.0, 16.0, 10.0])
        add = np.minimum(np.round(add), (256 - gain)[:, None] * 255)  # [M, 3]; keeps every lane of the blend below 65536
        return (gain.astype(np.uint32), *_pack_add(add))

    def _rain_on_lens(self, plan: ClipPlan, out: np.ndarray) -> None:
        """Raindrops fixed on each lens and rain streaks (4 patterns, cycled per frame), blended into ``out`` [F, P] packed."""
        rng = np.random.default_rng([plan.appearance_seed, 7])
        n_cam, h, w = len(self.rig), self.height, self.width
        v, u = np.mgrid[0:h, 0:w].astype(np.float32)
        drops = np.zeros((n_cam, h, w), dtype=np.float32)
        for c in range(n_cam):
            for cx, cy, r in zip(rng.uniform(0, w, 4), rng.uniform(0, h, 4), rng.uniform(0.025, 0.06, 4) * w, strict=True):
                drops[c] = np.maximum(drops[c], 0.5 * np.clip(1 - ((u - cx) ** 2 + (v - cy) ** 2) / r**2, 0, 1) ** 0.5)
        drops = drops.reshape(-1)
        color = np.round(np.array([205.0, 208.0, 214.0]) * plan.brightness)
        n_streaks, length = max(1, h * w // 200), max(3, h // 12)
        patterns = []
        for _ in range(4):
            alpha = drops.copy()
            cam = rng.integers(0, n_cam, n_streaks * n_cam)
            u0, v0 = rng.uniform(0, w, len(cam)), rng.uniform(-length, h, len(cam))
            steps = np.arange(length)
            us = (u0[:, None] + 0.2 * steps).astype(np.int64)  # [S, L] slanted by the wind
            vs = (v0[:, None] + steps).astype(np.int64)
            ok = (vs >= 0) & (vs < h) & (us < w)
            alpha[((cam[:, None] * h + vs) * w + us)[ok]] = 0.3
            idx = np.flatnonzero(alpha > 0.02)
            a = np.round(alpha[idx] * 256)
            patterns.append((idx, (256 - a).astype(np.uint32), *_pack_add(a[:, None] * color)))
        for f in range(len(out)):
            idx, gain, add_rb, add_g = patterns[f % len(patterns)]
            out[f, idx] = _blend(out[f, idx], gain, add_rb, add_g)

    def _draw_vehicles(self, plan: ClipPlan, out: np.ndarray, look: _Look) -> None:
        """Ray-box test of every vehicle, in the pixels covered by its box clipped to the near plane."""
        pw = plan.pose_world  # [F, 3]
        ce, se = np.cos(pw[:, 2])[:, None], np.sin(pw[:, 2])[:, None]
        for veh in plan.vehicles:
            vxy, vh = plan.road.pose(veh.s, veh.d)
            rel = vxy - pw[:, :2]
            centre = np.concatenate([ce * rel[:, :1] + se * rel[:, 1:], -se * rel[:, :1] + ce * rel[:, 1:]], axis=1)  # [F, 2] ego frame
            yaw = vh + (math.pi if veh.oncoming else 0.0) - pw[:, 2]  # [F] heading in the ego frame
            box = _UNIT_BOX * np.array(veh.size)  # [8, 3] box frame
            cy, sy = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
            pts = np.stack([centre[:, :1] + cy * box[:, 0] - sy * box[:, 1], centre[:, 1:] + sy * box[:, 0] + cy * box[:, 1],
                            np.broadcast_to(box[:, 2], (len(yaw), 8))], axis=-1)  # [F, 8, 3] ego frame
            in_range = np.linalg.norm(centre, axis=1) < self.max_range_m
            # Light on the car body: the ego's beams where the car stands, else the condition's ambient light.
            shade = look.ambient + (1.0 - look.ambient) * headlight(centre) if look.headlights else np.full(len(yaw), look.ambient)
            for c, cam in enumerate(self.rig):
                T, K = cam_to_ego(cam), intrinsics(cam, self.width, self.height)
                p = (pts - T[:3, 3]) @ T[:3, :3]  # [F, 8, 3] camera frame
                pa, pb = p[:, _EDGES[:, 0]], p[:, _EDGES[:, 1]]  # [F, 12, 3] box edges
                za, zb = pa[..., 2:], pb[..., 2:]
                cut = pa + (_NEAR - za) / np.where(zb == za, 1.0, zb - za) * (pb - pa)  # where edges cross the near plane
                cand = np.concatenate([p, cut], axis=1)  # [F, 20, 3]
                ok = np.concatenate([p[..., 2] > _NEAR, ((za - _NEAR) * (zb - _NEAR) < 0)[..., 0]], axis=1)
                uv = cand[..., :2] / np.maximum(cand[..., 2:], _NEAR) * K[[0, 1], [0, 1]] + K[:2, 2]  # [F, 20, 2]
                lo = np.floor(np.where(ok[..., None], uv, np.inf).min(axis=1)).clip(0, None)
                hi = np.ceil(np.where(ok[..., None], uv, -np.inf).max(axis=1)).clip(None, (self.width - 1, self.height - 1)) + 1
                for f in np.flatnonzero(in_range & ok.any(axis=1) & (lo < hi).all(axis=1)):
                    (u0, v0), (u1, v1) = lo[f].astype(int), hi[f].astype(int)
                    self._box(out[f, c, v0:v1, u0:u1], self.rays[c][v0:v1, u0:u1], T[:3, 3], centre[f], yaw[f], veh, look, float(shade[f]))

    @staticmethod
    def _box(
        img: np.ndarray, rays: np.ndarray, origin: np.ndarray, centre: np.ndarray, yaw: float, veh: Vehicle, look: _Look, shade: float
    ) -> None:
        """Paints the pixels of ``img`` [h, w, 3] whose ``rays`` [h, w, 3] hit the vehicle's box (slab test)."""
        c, s = math.cos(yaw), math.sin(yaw)
        rel = origin - np.array([centre[0], centre[1], 0.0])
        o = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]])  # camera centre in the box frame
        d = np.stack([c * rays[..., 0] + s * rays[..., 1], -s * rays[..., 0] + c * rays[..., 1], rays[..., 2]], -1)
        d[np.abs(d) < 1e-12] = 1e-12  # a ray parallel to a slab: huge but finite distances
        length, width, height = veh.size
        t1 = (np.array([-length / 2, -width / 2, 0.0]) - o) / d  # [h, w, 3]
        t2 = (np.array([length / 2, width / 2, height]) - o) / d
        tnear = np.minimum(t1, t2)
        t_in, t_out = tnear.max(axis=-1), np.maximum(t1, t2).min(axis=-1)
        hit = (t_in <= t_out) & (t_in > 0)
        if not hit.any():
            return
        face = tnear.argmax(axis=-1)[hit]  # 0: front/back, 1: side, 2: roof
        z = o[2] + t_in[hit] * d[..., 2][hit]
        color = np.array(veh.color, dtype=np.float32)[None] * np.array([0.7, 0.85, 1.05], dtype=np.float32)[face][:, None]
        color[(face < 2) & (z > 0.6 * height) & (z < 0.92 * height)] = (45, 55, 68)  # windows
        color[z < 0.3] = (22, 22, 24)  # tyres and the dark underbody
        if look.ambient != 1.0 or look.contrast != 1.0:
            color = (color * shade * look.contrast + np.array(look.grey, dtype=np.float32) * (1.0 - look.contrast)).astype(np.float32)
        if look.headlights or look.wet:  # lights on: red at the back, warm white at the front, at the corners
            x = o[0] + t_in[hit] * d[..., 0][hit]
            y = o[1] + t_in[hit] * d[..., 1][hit]
            lamp = (face == 0) & (z > 0.6) & (z < 0.82) & (np.abs(y) > 0.3 * width) & (np.abs(y) < 0.47 * width)
            color[lamp & (x < 0)] = (255, 36, 24)
            color[lamp & (x > 0)] = (255, 244, 205)
        img[hit] = np.clip(color, 0, 255).astype(np.uint8)
