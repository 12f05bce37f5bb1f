"""Is this motion a vehicle's? Plausibility of poses, shared by ``data write`` (raw ``poses.csv``) and
``data verify`` (``ego.npy`` of written clips); docs/data-format.md, "Plausibility".

The wrong frame or unit in a pose log rarely breaks a schema: ECEF coordinates, yaw in degrees or
the camera's heading used as the vehicle's are finite numbers in range, and were written, verified
and trained on without a word. They do break physics. The vehicle's origin (below the rear axle)
moves along its heading, so the heading must agree with the direction of motion whenever the
vehicle moves; speed, acceleration and yaw rate must stay within what a road vehicle does; and a
local frame does not lie 6400 km from the origin with z as large as x and y.

Poses are first resampled onto a 10 Hz grid (linear in x, y and unwrapped yaw), so raw logs at any
rate and clips at any fps are judged alike; rates are then differences over +-0.2 s, which keeps
centimetre noise in positions far below every threshold. Checks (:class:`MotionLimits`):

- heading against the direction of motion, moving at ``min_speed`` or faster: at every moment
  (``max_heading_error_deg``, direction of travel folded so that reversing passes), and the median
  over straight driving (``max_heading_offset_deg``, a constant offset such as a camera or IMU
  mount angle, which is invisible moment by moment);
- speed (the derivative of position) below ``max_speed``; longitudinal acceleration below
  ``max_accel``; yaw rate below ``max_yaw_rate``;
- for ``ego.npy``: its ``speed`` and ``yaw_rate`` columns against the derivatives of x, y and yaw;
- for raw poses with ``z``: not ECEF (:func:`check_extents`).

Each check returns the *first* violation in time as an :class:`Implausible`, with the likely cause
found by testing the usual mistakes as hypotheses (yaw in degrees, compass heading, a constant
offset, ECEF) against the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MotionLimits", "Implausible", "check_motion", "check_extents"]

_DT = 0.1  # s, the grid the checks run on
_H = 2  # grid steps each side of a difference (+-0.2 s)
_CHORD_M = 10.0  # straight chords for the median heading offset: 2 cm noise -> 0.16 degrees per chord
_MAX_CURVATURE = 0.002  # 1/m: "straight" (radius >= 500 m); an origin 2 m off the rear axle then shifts the course < 0.25 degrees
_EARTH_RADIUS = (6.30e6, 6.42e6)  # m from the Earth's centre, from the Dead Sea to high mountains, with margin


@dataclass(frozen=True, kw_only=True)
class MotionLimits:
    """What a road vehicle's motion may look like; far outside normal driving, so only wrong frames and units trip them."""

    min_speed: float = 3.0
    """m/s: the heading is compared with the direction of motion only at this speed or faster."""
    max_heading_error_deg: float = 20.0
    """Largest heading error at any moment (slip and an origin off the rear axle stay far below it in any turn)."""
    max_heading_offset_deg: float = 0.5
    """Largest median heading offset over straight driving (a constant mount offset of 0.9 degrees is refused)."""
    min_straight_s: float = 3.0
    """Seconds of straight driving at ``min_speed`` needed before the median offset is judged."""
    max_speed: float = 70.0
    """m/s (252 km/h)."""
    max_accel: float = 15.0
    """m/s^2, longitudinal (1.5 g; braking on dry asphalt is about 1 g)."""
    max_yaw_rate: float = 2.0
    """rad/s (115 degrees/s; a car at full lock in a car park turns at about 1 rad/s)."""
    speed_tolerance: tuple[float, float] = (2.0, 0.2)
    """``ego.npy`` speed against the derivative of x, y: (m/s, fraction of the speed) allowed."""
    yaw_rate_tolerance: tuple[float, float] = (0.2, 0.2)
    """``ego.npy`` yaw_rate against the derivative of yaw: (rad/s, fraction) allowed."""


@dataclass(frozen=True)
class Implausible:
    """One violation: when (seconds from the first pose), what, and the likely cause with its fix."""

    t: float
    what: str
    cause: str

    def line(self) -> str:
        return f"at +{self.t:.1f} s: {self.what} (likely cause: {self.cause})"


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _fold(a: np.ndarray) -> np.ndarray:
    """Heading minus course in (-pi/2, pi/2]: a vehicle reversing moves against its heading."""
    a = _wrap(a)
    return np.where(a > np.pi / 2, a - np.pi, np.where(a <= -np.pi / 2, a + np.pi, a))


@dataclass(frozen=True)
class _Grid:
    t: np.ndarray  # [n] s from the first input sample
    xy: np.ndarray  # [n, 2]
    yaw: np.ndarray  # [n] unwrapped


def _grid(t: np.ndarray, xy: np.ndarray, yaw: np.ndarray) -> _Grid:
    t = np.asarray(t, np.float64) - float(t[0])
    tg = np.arange(0.0, t[-1] + 1e-9, _DT)
    yaw_u = np.unwrap(np.asarray(yaw, np.float64))
    return _Grid(tg, np.stack([np.interp(tg, t, xy[:, 0]), np.interp(tg, t, xy[:, 1])], axis=1), np.interp(tg, t, yaw_u))


def _rates(g: _Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At the inner grid points [m]: time, velocity [m, 2], yaw rate, and yaw, by central differences over +-_H steps."""
    dt = g.t[2 * _H :] - g.t[: -2 * _H]
    vel = (g.xy[2 * _H :] - g.xy[: -2 * _H]) / dt[:, None]
    omega = (g.yaw[2 * _H :] - g.yaw[: -2 * _H]) / dt
    return g.t[_H:-_H], vel, omega, g.yaw[_H:-_H]


def _heading(g: _Grid, yaw: np.ndarray, limits: MotionLimits) -> tuple[Implausible | None, float | None, float, int]:
    """Heading checks of grid ``g`` with headings ``yaw`` [n]: the first moment off by more than the
    error limit, the median offset over straight driving (None: too little of it), where that
    starts, and how many grid points were moving (the evidence)."""
    t, vel, _, _ = _rates(_Grid(g.t, g.xy, yaw))
    speed = np.linalg.norm(vel, axis=1)
    d = _fold(np.arctan2(vel[:, 1], vel[:, 0]) - yaw[_H:-_H])
    moving = np.flatnonzero(speed >= limits.min_speed)
    bad = moving[np.abs(d[moving]) > math.radians(limits.max_heading_error_deg)]
    gross = None
    if bad.size:
        k = int(bad[0])
        gross = Implausible(float(t[k]), f"heading {-math.degrees(d[k]):+.1f} degrees off the direction of motion at {speed[k]:.1f} m/s", "")
    # straight chords of _CHORD_M: for a circular arc the chord runs exactly along the mean of the end headings
    dist = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(g.xy, axis=0), axis=1))])
    j = np.searchsorted(dist, dist + _CHORD_M)
    i = np.flatnonzero(j < len(dist))
    j = j[i]
    chord = g.xy[j] - g.xy[i]
    straight = (
        (g.t[j] - g.t[i] <= _CHORD_M / limits.min_speed)
        & (np.abs(yaw[j] - yaw[i]) <= _MAX_CURVATURE * _CHORD_M)
        & (np.linalg.norm(chord, axis=1) >= 0.99 * _CHORD_M)
    )
    if straight.sum() * _DT < limits.min_straight_s:
        return gross, None, 0.0, len(moving)
    i, j, chord = i[straight], j[straight], chord[straight]
    offsets = _fold(np.arctan2(chord[:, 1], chord[:, 0]) - (yaw[i] + yaw[j]) / 2)
    return gross, float(np.median(offsets)), float(g.t[i[0]]), len(moving)


def _heading_ok(g: _Grid, yaw: np.ndarray, limits: MotionLimits) -> bool:
    """Headings ``yaw`` [n] on grid ``g`` pass every heading and yaw rate check, on at least 1 s of motion."""
    gross, median, _, moving = _heading(g, yaw, limits)
    omega = (yaw[2 * _H :] - yaw[: -2 * _H]) / (g.t[2 * _H :] - g.t[: -2 * _H])
    offset_ok = median is None or abs(median) <= math.radians(limits.max_heading_offset_deg)
    return moving * _DT >= 1.0 and gross is None and offset_ok and not (np.abs(omega) > limits.max_yaw_rate).any()


def _heading_cause(t: np.ndarray, yaw_logged: np.ndarray, g: _Grid, limits: MotionLimits, far: bool) -> str | None:
    """The likely reason headings disagree with the motion: the usual mistakes tried as hypotheses
    (one that makes every heading check pass on at least 1 s of motion); None when none does."""
    logged = np.asarray(yaw_logged, np.float64)

    def on_grid(y: np.ndarray) -> np.ndarray:
        return np.interp(g.t, t - t[0], np.unwrap(y))

    hypotheses = (
        (np.radians(logged), "yaw in degrees? poses.csv yaw must be radians (multiply by pi/180)"),
        (np.pi / 2 - logged, "yaw as a compass heading (clockwise from north)? yaw must be counter-clockwise from the world x axis (use pi/2 - heading)"),
        (-logged, "yaw clockwise? yaw must be counter-clockwise (negate it)"),
    )
    for yaw, cause in hypotheses:
        if _heading_ok(g, on_grid(yaw), limits):
            return cause
    _, median, _, _ = _heading(g, g.yaw, limits)
    if median is not None and _heading_ok(g, g.yaw + median, limits):
        deg = -math.degrees(median)  # heading minus course
        if abs(deg) <= 10:
            return (f"a constant offset of {deg:+.2f} degrees: the heading of a camera or IMU used as the vehicle's, or its mount angle? "
                    f"give the vehicle's heading (subtract {deg:.2f} degrees from yaw if the offset is known)")  # fmt: skip
        if not far:
            return f"a constant heading offset of {deg:+.1f} degrees (yaw measured from another axis?)"
    return None


def check_motion(
    t: np.ndarray, xy: np.ndarray, yaw: np.ndarray, *, speed: np.ndarray | None = None, yaw_rate: np.ndarray | None = None,
    limits: MotionLimits | None = None,
) -> Implausible | None:  # fmt: skip
    """The first implausible moment of a pose sequence, or None.

    Args:
        t: [N] increasing times, seconds (any origin; violations are reported from ``t[0]``).
        xy: [N, 2] positions, metres, in any planar frame (world or a clip's first-frame ego frame).
        yaw: [N] headings, radians, as logged (wrapped or not).
        speed, yaw_rate: [N] ``ego.npy`` columns, checked against the derivatives of xy and yaw.
        limits: thresholds; default :class:`MotionLimits`.
    """
    limits = limits or MotionLimits()
    t, xy = np.asarray(t, np.float64), np.asarray(xy, np.float64)
    back = np.flatnonzero(np.diff(t) <= 0)
    if back.size:  # raw timestamps are checked before; a clip's t column is only range-checked by the schema
        k = int(back[0]) + 1
        return Implausible(float(t[k] - t[0]), f"time {t[k]:g} s at frame {k} does not increase", "frames out of order, or t not in seconds?")
    if len(t) < 2 or t[-1] - t[0] < 2 * _H * _DT * 2:
        return None  # too short to differentiate twice
    g = _grid(t, xy, yaw)
    tm, vel, omega, _ = _rates(g)
    v = np.linalg.norm(vel, axis=1)
    far = float(np.median(np.linalg.norm(xy, axis=1))) > 1e6
    found: list[Implausible] = []

    gross, median, t_straight, _ = _heading(g, g.yaw, limits)
    cause = None
    if gross is not None or (median is not None and abs(median) > math.radians(limits.max_heading_offset_deg)):
        cause = _heading_cause(t, yaw, g, limits, far) or (
            "poses in ECEF or another frame whose x-y plane is not the ground? convert them to a local frame (ENU or UTM)" if far
            else "yaw is not the heading of the vehicle's origin (another sensor's, or another column)?"
        )  # fmt: skip
        if gross is not None:
            found.append(Implausible(gross.t, gross.what, cause))
        if median is not None and abs(median) > math.radians(limits.max_heading_offset_deg):
            found.append(Implausible(
                t_straight,
                f"heading {-math.degrees(median):+.2f} degrees off the direction of motion (median over straight driving; "
                f"at most {limits.max_heading_offset_deg:g})", cause,
            ))  # fmt: skip

    fast = np.flatnonzero(v > limits.max_speed)
    if fast.size:
        k = int(fast[0])
        units = float(np.median(v)) > limits.max_speed
        found.append(Implausible(
            float(tm[k]), f"speed {v[k]:.1f} m/s (from the positions; at most {limits.max_speed:g})",
            "positions not in metres, or timestamps not in microseconds?" if units else "a jump in position (a localisation reset)?",
        ))  # fmt: skip
    spin = np.flatnonzero(np.abs(omega) > limits.max_yaw_rate)
    if spin.size:
        k = int(spin[0])
        found.append(Implausible(
            float(tm[k]), f"yaw rate {omega[k]:+.2f} rad/s (at most {limits.max_yaw_rate:g})",
            cause or _heading_cause(t, yaw, g, limits, far) or "a jump in yaw (a heading reset)?",
        ))  # fmt: skip
    if len(v) > 2 * _H:
        accel = (v[2 * _H :] - v[: -2 * _H]) / (tm[2 * _H :] - tm[: -2 * _H])
        hard = np.flatnonzero(np.abs(accel) > limits.max_accel)
        if hard.size:
            k = int(hard[0])
            found.append(Implausible(
                float(tm[k + _H]), f"acceleration {accel[k]:+.1f} m/s^2 (at most {limits.max_accel:g})",
                "a jump in position or in time (a localisation reset, or a wrong timestamp)?",
            ))  # fmt: skip

    for name, column, derived, (absolute, relative), factors in (
        ("speed", speed, v, limits.speed_tolerance, ((3.6, "speed in km/h? ego.npy speed is m/s"), (1 / 0.44704, "speed in mph? ego.npy speed is m/s"))),
        ("yaw_rate", yaw_rate, omega, limits.yaw_rate_tolerance, ((180 / math.pi, "yaw_rate in degrees/s? ego.npy yaw_rate is rad/s"),)),
    ):
        if column is None:
            continue
        # the column's mean over the same +-0.2 s as the derivative (trapezoid on the grid): a column
        # differentiated over a shorter span (noisier) is compared like for like
        on_grid = np.interp(g.t, np.asarray(t, np.float64) - t[0], np.asarray(column, np.float64))
        given = np.convolve(on_grid, np.array([0.5, 1, 1, 1, 0.5]) / (2 * _H), mode="valid")
        if name == "speed":
            given = np.abs(given)  # negative speed: reversing
        off = np.flatnonzero(np.abs(given - derived) > absolute + relative * np.abs(derived))
        if off.size:
            k = int(off[0])
            why = next((c for f, c in factors if np.all(np.abs(given / f - derived) <= absolute + relative * np.abs(derived))),
                       f"the {name} column is not the derivative of the poses (another sensor's, or a different time base)?")  # fmt: skip
            found.append(Implausible(float(tm[k]), f"{name} {given[k]:.2f} but the poses give {derived[k]:.2f}", why))
    return min(found, key=lambda p: p.t) if found else None


def check_extents(t: np.ndarray, xyz: np.ndarray) -> Implausible | None:
    """Raw poses with a ``z`` column [N, 3]: refused when they lie on the Earth's surface seen from its
    centre (ECEF): a local frame's z is a height, not thousands of km. Without z, ECEF shows up in
    :func:`check_motion` (its x-y plane is not the ground, so the heading disagrees with the motion)."""
    r = np.linalg.norm(xyz, axis=1)
    on_earth = (r >= _EARTH_RADIUS[0]) & (r <= _EARTH_RADIUS[1]) & (np.abs(xyz[:, 2]) > 1e5)
    if on_earth.any():
        k = int(np.flatnonzero(on_earth)[0])
        return Implausible(
            float(t[k] - t[0]), f"the pose lies {r[k] / 1e3:.0f} km from the origin with z = {xyz[k, 2] / 1e3:.0f} km",
            "poses in ECEF (Earth-centred)? x, y, z must be in a local frame of the drive, z up (ENU or UTM with height)",
        )
    return None
