"""Scenes of the synthetic fleet: country driving styles, roads, ego motion, other vehicles.

:func:`plan_clip` turns ``(country, seed)`` into a :class:`ClipPlan`: a pure function of its
arguments, with nothing rendered yet. Country styles change what the right trajectory is, not only
the look: driving side, lane width, cruise speed, how hard curves are taken and the ego's offset in
its lane (:data:`STYLES`). A :class:`Scenario` sets what varies between clips besides the country.
:mod:`fsdtrain.synth.render` draws a plan; :mod:`fsdtrain.synth.fleet` renders, encodes and writes them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fsdtrain.errors import ConfigError
from fsdtrain.residency import zone_of_country

__all__ = [
    "WHITE", "CONDITIONS", "CountryStyle", "STYLES", "country_style", "clip_seed", "Road", "make_road", "speed_profile",
    "Vehicle", "Scenario", "ClipPlan", "plan_clip",
]

WHITE: tuple[int, int, int] = (235, 235, 230)
"""Colour of white road markings: edge and lane lines, and white centre lines."""

CONDITIONS: tuple[str, ...] = ("day", "night", "rain")
"""Lighting and weather a clip can be rendered in (``ClipPlan.condition``)."""

RGB = tuple[int, int, int]
_YELLOW = (235, 190, 40)


@dataclass(frozen=True, kw_only=True)
class CountryStyle:
    """How a country's roads look and how its drivers drive them."""

    code: str
    """ISO 3166-1 alpha-2 country code."""
    drive_side: str
    """``right`` or ``left``: the side of the road traffic keeps to."""
    lanes_per_direction: int
    """Lanes in each direction."""
    lane_width_m: float
    """Lane width, metres."""
    cruise_mps: float
    """Speed on straights, m/s."""
    a_lat_max: float
    """Lateral acceleration drivers accept in curves, m/s^2; speed in a curve is at most sqrt(a / |kappa|)."""
    accel_mps2: float
    """Acceleration out of curves, m/s^2."""
    decel_mps2: float
    """Braking before curves, m/s^2."""
    lookahead_s: float
    """How far ahead (seconds at cruise speed) drivers already match the speed of an upcoming curve."""
    lane_offset_m: float
    """Ego offset from its lane centre, metres, positive to the left (ISO 8855 y)."""
    centre_line: str
    """Marking between the two directions: ``double_solid``, ``solid`` or ``dashed``."""
    centre_color: RGB
    """Colour of the centre line."""
    dash_m: float
    """Length of a lane-line dash, metres."""
    gap_m: float
    """Gap between lane-line dashes, metres."""
    asphalt: RGB = (92, 92, 96)
    """Asphalt colour."""

    def __post_init__(self) -> None:
        if self.drive_side not in ("right", "left"):
            raise ConfigError(f"style {self.code}: drive_side={self.drive_side!r}, use 'right' or 'left'")
        if self.centre_line not in ("double_solid", "solid", "dashed"):
            raise ConfigError(f"style {self.code}: centre_line={self.centre_line!r}, use double_solid, solid or dashed")
        if self.lanes_per_direction < 1 or min(self.cruise_mps, self.a_lat_max, self.accel_mps2, self.decel_mps2) <= 0:
            raise ConfigError(f"style {self.code}: lanes, speeds and accelerations must be positive")

    @property
    def zone(self) -> str:
        """Residency zone its clips belong to: the policy's (fsdtrain.residency.zone_of_country)."""
        return zone_of_country(self.code)


STYLES: dict[str, CountryStyle] = {
    s.code: s
    for s in (
        CountryStyle(code="CN", drive_side="right", lanes_per_direction=2, lane_width_m=3.5, cruise_mps=10.0,
                     a_lat_max=1.2, accel_mps2=0.8, decel_mps2=1.0, lookahead_s=3.0, lane_offset_m=0.4,
                     centre_line="double_solid", centre_color=_YELLOW, dash_m=6.0, gap_m=9.0, asphalt=(84, 84, 88)),
        CountryStyle(code="US", drive_side="right", lanes_per_direction=2, lane_width_m=3.7, cruise_mps=14.0,
                     a_lat_max=3.0, accel_mps2=1.5, decel_mps2=2.0, lookahead_s=2.0, lane_offset_m=0.0,
                     centre_line="double_solid", centre_color=_YELLOW, dash_m=3.0, gap_m=9.0, asphalt=(98, 97, 95)),
        CountryStyle(code="DE", drive_side="right", lanes_per_direction=2, lane_width_m=3.5, cruise_mps=18.0,
                     a_lat_max=2.5, accel_mps2=2.0, decel_mps2=2.5, lookahead_s=2.0, lane_offset_m=-0.2,
                     centre_line="dashed", centre_color=WHITE, dash_m=6.0, gap_m=12.0, asphalt=(90, 91, 95)),
        CountryStyle(code="GB", drive_side="left", lanes_per_direction=2, lane_width_m=3.65, cruise_mps=15.0,
                     a_lat_max=2.5, accel_mps2=1.5, decel_mps2=2.0, lookahead_s=2.5, lane_offset_m=0.0,
                     centre_line="dashed", centre_color=WHITE, dash_m=4.0, gap_m=5.0, asphalt=(95, 93, 92)),
        CountryStyle(code="JP", drive_side="left", lanes_per_direction=2, lane_width_m=3.25, cruise_mps=12.0,
                     a_lat_max=2.0, accel_mps2=1.2, decel_mps2=1.5, lookahead_s=2.5, lane_offset_m=0.1,
                     centre_line="solid", centre_color=_YELLOW, dash_m=5.0, gap_m=5.0, asphalt=(88, 90, 94)),
    )
}
"""The built-in country styles, by country code."""


def country_style(code: str) -> CountryStyle:
    """The style of a country code (case-insensitive); unknown codes fail with the known ones."""
    style = STYLES.get(str(code).upper())
    if style is None:
        raise ConfigError(f"unknown country {code!r} for the synthetic fleet; known: {', '.join(sorted(STYLES))}")
    return style


def clip_seed(seed: int, split: str, country: str, index: int) -> int:
    """The seed of one clip, from a hash, so splits differ and countries are independent."""
    digest = hashlib.sha256(f"fsdtrain.synth/1|{seed}|{split}|{country}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _smooth_noise(rng: np.random.Generator, x: np.ndarray, period_lo: float, period_hi: float) -> np.ndarray:
    """Sum of three random sinusoids over ``x``, peak about 1: slow, seeded wander."""
    periods = rng.uniform(period_lo, period_hi, 3)
    phases = rng.uniform(0, 2 * math.pi, 3)
    return sum(np.sin(2 * math.pi * x / p + ph) for p, ph in zip(periods, phases, strict=True)) / 2.0


# --- road ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Road:
    """A flat road's centreline, sampled every ``ds`` metres of arc length ``s`` (s = 0 where the ego starts).

    Curvature is piecewise linear in ``s`` (clothoid pieces); a point is addressed by ``(s, d)``
    with ``d`` the offset along the left normal. Positions between samples are integrated exactly
    enough that the ego's yaw rate comes out smooth.
    """

    s: np.ndarray  # [N] arc length, m
    kappa: np.ndarray  # [N] curvature, 1/m, positive turns left
    heading: np.ndarray  # [N] world heading, rad
    xy: np.ndarray  # [N, 2] world position, m

    @property
    def ds(self) -> float:
        return float(self.s[1] - self.s[0])

    def curvature(self, s: np.ndarray) -> np.ndarray:
        return np.interp(s, self.s, self.kappa)

    def pose(self, s: np.ndarray, d: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """World position [..., 2] of the point ``(s, d)`` and the road heading [...] there."""
        s = np.asarray(s, dtype=np.float64)
        i = np.clip(((s - self.s[0]) / self.ds).astype(np.int64), 0, len(self.s) - 2)
        delta = s - self.s[i]
        k0, dk = self.kappa[i], (self.kappa[i + 1] - self.kappa[i]) / self.ds
        h = self.heading[i] + k0 * delta + 0.5 * dk * delta**2
        h_mid = self.heading[i] + 0.5 * k0 * delta + dk * delta**2 / 6.0  # chord direction of the clothoid piece
        xy = self.xy[i] + delta[..., None] * np.stack([np.cos(h_mid), np.sin(h_mid)], axis=-1)
        normal = np.stack([-np.sin(h), np.cos(h)], axis=-1)
        return xy + np.asarray(d)[..., None] * normal, h


def make_road(rng: np.random.Generator, s_min: float, s_max: float, *, ds: float = 0.5, max_kappa: float = 1 / 50) -> Road:
    """A road from ``s_min`` to ``s_max``: curvature knots every 20-50 m, 35 % of them straight.

    The world frame puts the centreline at s = 0 on the origin and the start-to-end chord along
    x, which keeps the top-down raster of a winding road small.
    """
    knots = [s_min]
    while knots[-1] < s_max:
        knots.append(knots[-1] + rng.uniform(20.0, 50.0))
    n = len(knots)
    k_knots = np.where(rng.random(n) < 0.35, 0.0, rng.choice([-1.0, 1.0], n) * rng.uniform(max_kappa / 5, max_kappa, n))
    s = np.arange(s_min, s_max + ds, ds)
    kappa = np.interp(s, knots, k_knots)
    k0, k1 = kappa[:-1], kappa[1:]
    heading = np.concatenate([[0.0], np.cumsum(ds * (k0 + k1) / 2)])
    h_mid = heading[:-1] + ds * (k0 / 3 + k1 / 6)
    xy = np.concatenate([[[0.0, 0.0]], np.cumsum(ds * np.stack([np.cos(h_mid), np.sin(h_mid)], -1), axis=0)])
    chord = xy[-1] - xy[0]
    rot = -math.atan2(chord[1], chord[0])
    c, si = math.cos(rot), math.sin(rot)
    xy = xy @ np.array([[c, si], [-si, c]])
    road = Road(s=s, kappa=kappa, heading=heading + rot, xy=xy)
    origin, _ = road.pose(np.array(0.0))
    return Road(s=s, kappa=kappa, heading=heading + rot, xy=xy - origin)


def speed_profile(kappa: np.ndarray, ds: float, style: CountryStyle, cruise: float) -> np.ndarray:
    """Speed [N] a driver of ``style`` wants at each road sample when driving towards increasing ``s``.

    ``min(cruise, sqrt(a_lat_max / |kappa|))``, held from ``lookahead_s`` before a curve, then
    limited by the style's braking (backward pass) and acceleration (forward pass).
    """
    cap = np.minimum(cruise, np.sqrt(style.a_lat_max / np.maximum(np.abs(kappa), 1e-9)))
    w = max(1, int(style.lookahead_s * cruise / ds))
    padded = np.concatenate([cap, np.full(w - 1, cap[-1])])
    v = np.lib.stride_tricks.sliding_window_view(padded, w).min(axis=1).tolist()
    brake, accel = 2 * style.decel_mps2 * ds, 2 * style.accel_mps2 * ds
    for i in range(len(v) - 2, -1, -1):
        v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + brake))
    for i in range(1, len(v)):
        v[i] = min(v[i], math.sqrt(v[i - 1] ** 2 + accel))
    return np.asarray(v)


def _lane_rate(road: Road, style: CountryStyle, cruise: float, d: float, *, backwards: bool = False) -> np.ndarray:
    """``ds/dt`` [N] of a driver of ``style`` in the lane at offset ``d``: the style's speed on that lane's own path.

    A lane at offset d is ``1 - kappa d`` times as long as the centreline and curves with
    ``kappa / (1 - kappa d)``; ``backwards`` drives towards decreasing s (oncoming traffic).
    """
    stretch = 1.0 - road.kappa * d  # [N] lane length per metre of centreline
    kappa = road.kappa / stretch
    v = speed_profile(kappa[::-1], road.ds, style, cruise)[::-1] if backwards else speed_profile(kappa, road.ds, style, cruise)
    return v / stretch


def _arrival_times(s: np.ndarray, v: np.ndarray, s_start: float) -> np.ndarray:
    """Time [N] at which a car driving towards increasing s at speeds ``v`` reaches each sample (0 at ``s_start``)."""
    t = np.concatenate([[0.0], np.cumsum(np.diff(s) / (0.5 * (v[1:] + v[:-1])))])
    return t - np.interp(s_start, s, t)


# --- clip plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vehicle:
    """Another car: a box driving along a lane."""

    s: np.ndarray  # [F] arc length per frame
    d: float  # lane offset, m, + left
    oncoming: bool  # drives towards decreasing s
    size: tuple[float, float, float]  # length, width, height, m
    color: RGB


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What varies between clips besides the country: light and weather, traffic, lane changes.

    A clip draws its condition and lane change at fixed positions of a generator apart from the road's:
    lane changes never change a clip's weather, and defaults give version 1's clips (cars no longer overlap).
    """

    conditions: Mapping[str, float] | str = field(default_factory=lambda: {"day": 1.0})
    """Relative weights of the conditions (:data:`CONDITIONS`) clips are drawn from, e.g.
    ``{"day": 3, "night": 1, "rain": 1}``; also as text, ``"day=3,night=1,rain=1"`` or ``"night"``."""
    vehicles: tuple[int, int] | str = (0, 4)
    """Other vehicles per clip, drawn uniformly from ``[min, max]`` (text: ``"2-10"`` or ``"6"``). A vehicle
    that would overlap another one or the ego is placed again, or left out."""
    lane_change: float = 0.0
    """Fraction of clips in which the ego moves smoothly one lane over, staying on its side of the road."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", _condition_weights(self.conditions))
        object.__setattr__(self, "vehicles", _vehicle_range(self.vehicles))
        if not 0.0 <= self.lane_change <= 1.0:
            raise ConfigError(f"lane_change={self.lane_change} is the fraction of clips with a lane change: use 0..1")


def _condition_weights(value: Mapping[str, float] | str) -> dict[str, float]:
    """Positive weights by condition, in :data:`CONDITIONS` order, from a mapping or ``"day=3,night=1,rain"``."""
    hint = f"conditions {value!r}: use NAME or NAME=WEIGHT of {', '.join(CONDITIONS)}, non-negative with a positive sum, e.g. day=3,night=1,rain=1"
    try:
        if isinstance(value, str):
            value = {name: float(w) if w else 1.0 for name, _, w in (p.partition("=") for p in value.replace(" ", "").lower().split(",") if p)}
        weights = {str(name): float(w) for name, w in value.items()}
    except (AttributeError, TypeError, ValueError):
        raise ConfigError(hint) from None
    if set(weights) - set(CONDITIONS) or not all(math.isfinite(w) and w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(hint)
    return {c: weights[c] for c in CONDITIONS if weights.get(c, 0.0) > 0}


def _vehicle_range(value: tuple[int, int] | str | int) -> tuple[int, int]:
    """``(min, max)`` vehicles per clip from a pair, ``"MIN-MAX"``, ``"N"`` or ``N``."""
    try:
        parts = str(value).split("-") if isinstance(value, (str, int)) else list(value)
        lo, hi = (int(v) for v in (parts * 2 if len(parts) == 1 else parts))
    except (TypeError, ValueError):
        raise ConfigError(f"vehicles={value!r}: use MIN-MAX or N vehicles per clip, e.g. 2-10") from None
    if not 0 <= lo <= hi <= 40:
        raise ConfigError(f"vehicles={value!r}: give min and max vehicles per clip, 0 <= min <= max <= 40, e.g. 2-10")
    return lo, hi


@dataclass(frozen=True)
class ClipPlan:
    """Everything a clip shows, before rendering: road, ego motion, vehicles, appearance."""

    style: CountryStyle
    road: Road
    fps: float
    s: np.ndarray  # [F] ego arc length along the road
    d: np.ndarray  # [F] ego offset from the centreline, m, + left
    pose_world: np.ndarray  # [F, 3] ego x, y, yaw in the world frame
    ego: np.ndarray  # [F, 6] t, x, y, yaw, speed, yaw_rate in the first frame's ego frame (ego.npy)
    vehicles: list[Vehicle]
    lane: int  # ego lane at the start, 0 = next to the centre line
    cruise_mps: float
    brightness: float
    appearance_seed: int
    timestamp_us: int
    tags: dict = field(default_factory=dict)
    condition: str = "day"  # one of CONDITIONS
    lane_end: int | None = None  # ego lane at the end; None: same as ``lane``


_CAR_COLORS: list[RGB] = [(170, 30, 30), (30, 60, 150), (40, 40, 45), (150, 150, 155), (200, 120, 20), (30, 110, 60), (110, 20, 90)]
_EGO_LENGTH, _EGO_CENTRE = 4.8, 1.4  # ego box length, and its centre ahead of the ego origin (rear axle), m


def _clear(s_v: np.ndarray, d_v: float, length: float, placed: list[Vehicle], s_ego: np.ndarray, d_ego: np.ndarray) -> bool:
    """Whether a vehicle driving ``s_v`` [F] at offset ``d_v`` keeps its distance to the placed ones and the ego."""
    if any(abs(o.d - d_v) < 1.0 and np.abs(o.s - s_v).min() < (o.size[0] + length) / 2 + 3.0 for o in placed):
        return False
    beside = np.abs(d_ego - d_v) < 2.6  # [F] frames in which the ego is (partly) in this lane
    return not (beside & (np.abs(s_v - s_ego - _EGO_CENTRE) < (_EGO_LENGTH + length) / 2 + 4.0)).any()


def plan_clip(country: str, *, seed: int, fps: float = 10.0, seconds: float = 10.0, scenario: Scenario | None = None) -> ClipPlan:
    """Plans one clip of ``country`` from ``seed`` (see :func:`clip_seed`) under ``scenario`` (default: day, 0-4 cars)."""
    style = country_style(country)
    scenario = scenario or Scenario()
    frames = int(round(seconds * fps))
    if frames < 2:
        raise ConfigError(f"seconds={seconds} at fps={fps} gives {frames} frames; a clip needs at least 2")
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])  # draws added after version 1, so version 1's draws stay where they were
    u_condition, u_change, u_start, u_duration = extra.random(4)
    cruise = style.cruise_mps * float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1))
    road = make_road(rng, -130.0, 1.1 * 1.04 * cruise * seconds + 140.0)
    side = -1.0 if style.drive_side == "right" else 1.0  # own lanes are on this side of the centre line
    n, w = style.lanes_per_direction, style.lane_width_m
    lane = int(rng.integers(0, n))
    d_ego = side * (lane + 0.5) * w + style.lane_offset_m
    noise = 1 + 0.03 * _smooth_noise(rng, road.s, 60.0, 200.0)
    t_road = _arrival_times(road.s, _lane_rate(road, style, cruise, d_ego) * noise, 0.0)

    sub = 8  # fine time steps per frame, for smooth finite differences
    t_fine = np.arange(-2, frames * sub + 2) / (fps * sub)
    s_fine = np.interp(t_fine, t_road, road.s)
    d_fine = d_ego + 0.12 * _smooth_noise(rng, t_fine, 4.0, 12.0)
    lane_end, change = lane, {"lane_change": "none"}
    if n > 1 and u_change < scenario.lane_change:
        # One lane over (inwards from the outermost lane, outwards from the innermost), 3-5 s, inside the clip.
        lane_end = lane + 1 if lane == 0 else lane - 1 if lane == n - 1 or u_change < scenario.lane_change / 2 else lane + 1
        duration = min(3.0 + 2.0 * u_duration, 0.7 * seconds)
        start = 0.1 * seconds + u_start * (0.8 * seconds - duration)
        x = np.clip((t_fine - start) / duration, 0.0, 1.0)  # quintic: no lateral speed or acceleration at either end
        d_fine = d_fine + side * (lane_end - lane) * w * x**3 * (10.0 - 15.0 * x + 6.0 * x**2)
        left = side * (lane_end - lane) > 0
        change = {"lane_change": "left" if left else "right", "lane_change_start_s": round(float(start), 3),
                  "lane_change_duration_s": round(float(duration), 3)}  # fmt: skip
    xy_fine, _ = road.pose(s_fine, d_fine)
    vel = np.gradient(xy_fine, t_fine, axis=0)  # [T_fine, 2]
    yaw_fine = np.unwrap(np.arctan2(vel[:, 1], vel[:, 0]))
    pick = 2 + sub * np.arange(frames)
    xy, yaw = xy_fine[pick], yaw_fine[pick]
    speed = np.linalg.norm(vel, axis=1)[pick]
    yaw_rate = np.gradient(yaw_fine, t_fine)[pick]
    c, s0 = math.cos(yaw[0]), math.sin(yaw[0])
    local = (xy - xy[0]) @ np.array([[c, -s0], [s0, c]])  # rotate by -yaw0: [F, 2]
    ego = np.stack([np.arange(frames) / fps, local[:, 0], local[:, 1], yaw - yaw[0], speed, yaw_rate], axis=1)
    assert road.s[-1] - s_fine[-1] > 100.0, "road too short for the rendering range"

    times = np.arange(frames) / fps
    s_frames, d_frames = np.interp(times, t_road, road.s), d_fine[pick]
    vehicles, lane_speed = [], {}
    count = int(rng.integers(scenario.vehicles[0], scenario.vehicles[1] + 1))
    reach = 70.0 + 12.0 * max(0, count - 4)  # room ahead for dense traffic
    for _ in range(count):
        oncoming = n == 1 or bool(rng.random() < 0.5)
        if oncoming:
            d_v = -side * (int(rng.integers(0, n)) + 0.5) * w
            s_range = (30.0, road.s[-1] - 30.0)
            s_start = float(rng.uniform(*s_range))
            rate = float(rng.uniform(0.85, 1.1)) * _lane_rate(road, style, style.cruise_mps, d_v, backwards=True)
        else:
            other = int(rng.choice([k for k in range(n) if k != lane]))
            d_v = side * (other + 0.5) * w
            factor = lane_speed.setdefault(other, float(rng.uniform(0.8, 1.15)))
            s_range = (-25.0, reach)
            s_start = float(rng.uniform(*s_range))
            rate = factor * _lane_rate(road, style, style.cruise_mps, d_v)
        size = (5.6, 2.1, 2.3) if rng.random() < 0.25 else (4.5, 1.8, 1.45)  # a van or truck, or a car
        color = _CAR_COLORS[int(rng.integers(0, len(_CAR_COLORS)))]
        for _attempt in range(12):
            if oncoming:  # driving towards decreasing s: arrival times along the reversed road
                s_v = -np.interp(times, _arrival_times(-road.s[::-1], rate[::-1], -s_start), -road.s[::-1])
            else:
                s_v = np.interp(times, _arrival_times(road.s, rate, s_start), road.s)
            if _clear(s_v, d_v, size[0], vehicles, s_frames, d_frames):
                vehicles.append(Vehicle(s=s_v, d=float(d_v), oncoming=oncoming, size=size, color=color))
                break
            s_start = float(extra.uniform(*s_range))

    span = (road.s >= s_frames[0]) & (road.s <= s_frames[-1] + 50.0)
    names, cumulative = list(scenario.conditions), np.cumsum(list(scenario.conditions.values()))
    condition = names[min(int(np.searchsorted(cumulative / cumulative[-1], u_condition, side="right")), len(names) - 1)]
    tags = {
        "synthetic": True,
        "generator": "fsdtrain.synth/2",
        "drive_side": style.drive_side,
        "lanes_per_direction": n,
        "lane_width_m": w,
        "ego_lane": lane,
        "ego_lane_end": lane_end,
        **change,
        "lane_offset_m": style.lane_offset_m,
        "ego_mean_offset_m": round(float(d_frames.mean()), 3),
        "cruise_mps": round(cruise, 3),
        "a_lat_max": style.a_lat_max,
        "max_abs_curvature": round(float(np.abs(road.kappa[span]).max()), 5),
        "vehicles": len(vehicles),
        "condition": condition,
    }
    return ClipPlan(
        style=style, road=road, fps=float(fps), s=s_frames, d=d_frames, pose_world=np.column_stack([xy, yaw]), ego=ego,
        vehicles=vehicles, lane=lane, cruise_mps=cruise, brightness=float(rng.uniform(0.85, 1.1)),
        appearance_seed=int(rng.integers(0, 2**31)), timestamp_us=1_704_067_200_000_000 + int(rng.integers(0, 3 * 10**7)) * 10**6,
        tags=tags, condition=condition, lane_end=lane_end,
    )
