"""Windows: training examples cut from a clip at load time (docs/data-format.md).

A window ends at its *current* frame ``c``. It holds ``history`` frames ``history_spacing_s``
seconds apart up to ``c``, the ego history at those frames, and the future path over ``horizon_s``
seconds at ``future_hz``, all in the ego frame of frame ``c`` (x forward, y left, yaw CCW).
Everything is in seconds, so datasets at different frame rates (8 and 10 fps) mix in one run with
the same meaning: a history frame is the frame nearest its wanted time (within ``tolerance_s``, or
the dataset is refused), and a future point between two frames is interpolated from their poses.
Changing any of these never means re-writing shards.

``frame_stride`` and ``window_stride`` (fsdtrain <= 0.2, in frames) are still read: converted to
seconds at the data's frame rate when every dataset shares one (:meth:`WindowSpec.at_rates`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np

from fsdtrain.errors import ConfigError

__all__ = ["COMMANDS", "WindowSpec", "window_frames", "ego_window", "ego_windows", "interpolate_poses", "derive_command"]

COMMANDS = ("left", "straight", "right")
_TURN_THRESHOLD_M = 2.0  # lateral offset at the horizon that makes a turn command
_EPS = 1e-9  # float slack on frame positions (0.3 s x 10 fps is 3.0000000000000004 frames)
_DEFAULT_SPACING_S = 0.5
_DEFAULT_STRIDE_S = 0.5
_LEGACY = ("frame_stride", "window_stride")


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut from clips, in seconds (whatever the clips' frame rate).

    Args:
        history: frames per window, the current one included.
        history_spacing_s: seconds between consecutive history frames (empty: 0.5). Each history
            frame is the clip's frame nearest its wanted time; a dataset whose rate cannot place them
            within ``tolerance_s`` is refused.
        stride_s: seconds between the current frames of consecutive windows of one clip (empty: 0.5).
        horizon_s: seconds of future path to predict.
        future_hz: rate of the future path points; a point between two frames is interpolated from
            their poses (position linearly, yaw along the shorter arc).
        tolerance_s: how far a history frame may be from its wanted time, seconds.
        frame_stride: deprecated (fsdtrain <= 0.2): frames between history frames. When set, it
            replaces ``history_spacing_s``, converted at the data's fps when all datasets share one;
            write ``history_spacing_s`` instead.
        window_stride: deprecated (fsdtrain <= 0.2): frames between current frames. When set, it
            replaces ``stride_s``, converted likewise; write ``stride_s`` instead.
    """

    history: int = 2
    history_spacing_s: float | None = None
    stride_s: float | None = None
    horizon_s: float = 3.0
    future_hz: float = 2.0
    tolerance_s: float = 0.05
    frame_stride: int | None = None
    window_stride: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.history, bool) or int(self.history) != self.history or self.history < 1:
            raise ConfigError(f"window.history must be a whole number >= 1, got {self.history}")
        for name in ("history_spacing_s", "stride_s", "tolerance_s", *_LEGACY):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"window.{name} must be positive, got {value}")
        for name in _LEGACY:
            value = getattr(self, name)
            if value is not None and int(value) != value:
                raise ConfigError(f"window.{name} counts frames: a whole number, got {value}")
        if not (math.isfinite(self.horizon_s) and self.horizon_s > 0 and math.isfinite(self.future_hz) and self.future_hz > 0):
            raise ConfigError("window.horizon_s and window.future_hz must be positive")
        steps = self.horizon_s * self.future_hz
        if abs(steps - round(steps)) > 1e-6:
            raise ConfigError(f"window.horizon_s x window.future_hz must be whole points, got {steps}")

    def to_dict(self) -> dict:
        """The numbers that define the window, unset fields left out: what weights metadata records
        (``WindowSpec(**spec.to_dict()) == spec``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    # --- in seconds ----------------------------------------------------------------------------------

    @property
    def legacy(self) -> bool:
        """Whether a deprecated field in frames is set (:meth:`at_rates` converts it)."""
        return self.frame_stride is not None or self.window_stride is not None

    @property
    def spacing(self) -> float:
        """Seconds between history frames (``history_spacing_s`` or its default)."""
        self._require_seconds("frame_stride")
        return _DEFAULT_SPACING_S if self.history_spacing_s is None else float(self.history_spacing_s)

    @property
    def stride(self) -> float:
        """Seconds between the current frames of consecutive windows (``stride_s`` or its default)."""
        self._require_seconds("window_stride")
        return _DEFAULT_STRIDE_S if self.stride_s is None else float(self.stride_s)

    def _require_seconds(self, name: str) -> None:
        if getattr(self, name) is not None:
            raise ConfigError(f"window.{name} counts frames: convert the spec at the data's rate first (WindowSpec.at_rates)")

    @property
    def future_steps(self) -> int:
        """Number of future points: ``horizon_s * future_hz``."""
        return int(round(self.horizon_s * self.future_hz))

    def future_times(self) -> np.ndarray:
        """Seconds after the current frame of each future point, ``[future_steps]``."""
        return np.arange(1, self.future_steps + 1) / self.future_hz

    def history_times(self) -> np.ndarray:
        """Wanted seconds of the history frames relative to the current one, oldest first (<= 0)."""
        return -self.spacing * np.arange(self.history - 1, -1, -1)

    # --- frames of a clip at ``fps`` -----------------------------------------------------------------

    def at_rates(self, rates: dict[str, float]) -> WindowSpec:
        """This spec in seconds for data at ``rates`` (dataset name -> fps).

        A spec in seconds comes back with its defaults filled in. ``frame_stride`` / ``window_stride``
        (frames), when set, replace ``history_spacing_s`` / ``stride_s``, converted at the one rate all
        datasets share: ``frame_stride / fps`` seconds, which picks the very same frames at that rate.

        Raises:
            ConfigError: frames are given and the datasets have several rates (one line saying what
                to write instead).
        """
        if not self.legacy:
            if self.history_spacing_s is not None and self.stride_s is not None:
                return self
            values = {f.name: getattr(self, f.name) for f in fields(WindowSpec)}
            return WindowSpec(**{**values, "history_spacing_s": self.spacing, "stride_s": self.stride})
        distinct = sorted(set(float(f) for f in rates.values()))
        if len(distinct) != 1:
            said = ", ".join(f"{name} {fps:g} fps" for name, fps in rates.items()) or "no data"
            old = " and ".join(f"window.{n}: {getattr(self, n)}" for n in _LEGACY if getattr(self, n) is not None)
            example = f" (e.g. {self.suggestion(distinct[-1])} as at {distinct[-1]:g} fps)" if distinct else ""
            raise ConfigError(
                f"{old} count{'' if ' and ' in old else 's'} frames, which mean different times in datasets at different rates ({said}): "
                f"write {self.suggestion(None)} in seconds instead{example}"
            )
        fps = distinct[0]
        values = {f.name: getattr(self, f.name) for f in fields(WindowSpec)}
        if self.frame_stride is not None:
            values["history_spacing_s"] = self.frame_stride / fps
        if self.window_stride is not None:
            values["stride_s"] = self.window_stride / fps
        return WindowSpec(**{**values, "frame_stride": None, "window_stride": None}).at_rates(rates)

    def suggestion(self, fps: float | None, prefix: str = "window.") -> str:
        """The fields in seconds that replace the ones in frames, at ``fps`` (e.g. ``window.history_spacing_s: 0.5``)."""
        out = []
        for old, new in (("frame_stride", "history_spacing_s"), ("window_stride", "stride_s")):
            value = getattr(self, old)
            if value is not None:
                out.append(f"{prefix}{new}: {value / fps:g}" if fps else f"{prefix}{new}")
        return " and ".join(out)

    def history_offsets(self, fps: float, where: str = "") -> np.ndarray:
        """Frames before the current one of each history frame, oldest first (ints, the last 0; read-only).

        Each is the frame nearest its wanted time (ties to the older frame). Worked out once per
        (spec, fps): the loader asks for every window it cuts.

        Raises:
            ConfigError: a frame is more than ``tolerance_s`` from its wanted time, or two history
                frames fall on one frame (one line naming ``where`` and the rate).
        """
        offsets, worst = _history_offsets(self, float(fps))
        if offsets is None:
            spec = self.at_rates({where or "the data": fps})
            raise ConfigError(
                f"{where or 'data'} at {fps:g} fps cannot place history frames every {spec.spacing:g} s: the nearest frames are "
                f"{worst * 1000:.0f} ms off (window.tolerance_s {spec.tolerance_s:g} s); use a window.history_spacing_s that is a "
                f"multiple of 1/{fps:g} s, or raise window.tolerance_s"
            )
        return offsets

    def future_offsets(self, fps: float) -> np.ndarray:
        """Frame positions of the future points after the current frame (floats: between frames they are interpolated; read-only)."""
        return _future_offsets(self, float(fps))

    def current_frames(self, frames: int, fps: float) -> np.ndarray:
        """Current-frame indices of all windows a clip of ``frames`` frames at ``fps`` yields.

        Current frame ``k`` is the frame nearest ``first + k x stride_s`` seconds, ``first`` the
        oldest history frame's offset; the last window still has its whole future inside the clip.
        A function of (frames, fps) and the spec only: the training order counts windows from the
        manifests with it.
        """
        spec = self.at_rates({"the data": fps})
        back = int(spec.history_offsets(fps)[0])
        last = frames - 1 - float(spec.future_offsets(fps)[-1])
        if last + _EPS < back:
            return np.zeros(0, dtype=np.int64)
        k = np.arange(int(math.floor((last - back) / (spec.stride * fps) + _EPS)) + 2)
        currents = back + np.floor(k * spec.stride * fps + 0.5 + _EPS).astype(np.int64)
        return np.unique(currents[currents <= last + _EPS])

    def count(self, frames: int, fps: float) -> int:
        """Windows a clip of ``frames`` frames at ``fps`` yields."""
        return len(self.current_frames(frames, fps))


@functools.lru_cache(maxsize=64)
def _history_offsets(spec: WindowSpec, fps: float) -> tuple[np.ndarray | None, float]:
    """:meth:`WindowSpec.history_offsets` for one (spec, fps): the offsets (None if they miss the
    tolerance or collide) and the worst distance to a wanted time, in seconds."""
    spec = spec.at_rates({"the data": fps})
    wanted = -spec.history_times() * fps  # frames back, oldest first
    offsets = np.floor(wanted + 0.5 + _EPS).astype(np.int64)
    error = np.abs(offsets - wanted) / fps
    if (error > spec.tolerance_s + _EPS).any() or (np.diff(offsets) >= 0).any():
        return None, float(error.max())
    offsets.flags.writeable = False  # shared by every caller
    return offsets, float(error.max())


@functools.lru_cache(maxsize=64)
def _future_offsets(spec: WindowSpec, fps: float) -> np.ndarray:
    offsets = spec.future_times() * fps
    offsets.flags.writeable = False  # shared by every caller
    return offsets


def window_frames(spec: WindowSpec, current: int, fps: float | None = None) -> np.ndarray:
    """History frame indices of the window ending at ``current``, oldest first.

    ``fps`` may be left out only for a spec in frames (``frame_stride``)."""
    if fps is None:
        if spec.frame_stride is None:
            raise ConfigError("window_frames needs the clip's fps for a window spec in seconds")
        return current - int(spec.frame_stride) * np.arange(spec.history - 1, -1, -1)
    return current - spec.history_offsets(fps)


def _to_frame(xy: np.ndarray, yaw: np.ndarray, origin_xy: np.ndarray, origin_yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses ``xy`` [W, N, 2], ``yaw`` [W, N] in the frame of each window's origin ``origin_xy`` [W, 2], ``origin_yaw`` [W]."""
    c, s = np.cos(origin_yaw)[:, None], np.sin(origin_yaw)[:, None]  # [W, 1]
    d = xy - origin_xy[:, None]  # [W, N, 2]
    local = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)
    return local, _wrap(yaw - origin_yaw[:, None])


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def interpolate_poses(ego: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` [N, 2] and ``yaw`` [N] of ``ego`` [frames, >= 4] at fractional frame ``positions`` [N]:
    position linear between the two frames around each, yaw along the shorter arc between them."""
    lo = np.floor(positions + _EPS).astype(np.int64)
    lo = np.clip(lo, 0, len(ego) - 1)
    hi = np.minimum(lo + 1, len(ego) - 1)
    w = np.clip(positions - lo, 0.0, 1.0)
    w[w < _EPS] = 0.0  # on a frame: its pose exactly
    xy = ego[lo, 1:3] * (1 - w)[:, None] + ego[hi, 1:3] * w[:, None]
    yaw = ego[lo, 3] + w * _wrap(ego[hi, 3] - ego[lo, 3])
    return xy, yaw


def ego_window(spec: WindowSpec, ego: np.ndarray, current: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Ego history and future of one window, in the ego frame of the current frame.

    Args:
        ego: clip ``ego.npy`` [frames, 6]: t, x, y, yaw (first-frame ego frame), speed, yaw_rate.

    Returns:
        ``ego_hist`` [history, 6] (t relative to now, x, y, yaw, speed, yaw_rate) and
        ``future`` [future_steps, 3] (x, y, yaw) at ``i / future_hz`` s after now, float32.
    """
    hist, future = ego_windows(spec, ego, np.array([current]), fps)
    return hist[0], future[0]


def ego_windows(spec: WindowSpec, ego: np.ndarray, currents: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ego_window` of every current frame in ``currents`` [W] at once: ``[W, history, 6]`` and
    ``[W, future_steps, 3]`` (a clip's windows in a few array operations, not a few dozen each)."""
    currents = np.asarray(currents, dtype=np.int64)
    hist_idx = currents[:, None] - spec.history_offsets(fps)  # [W, history]
    origin_xy, origin_yaw = ego[currents, 1:3], ego[currents, 3]  # [W, 2], [W]
    hxy, hyaw = _to_frame(ego[hist_idx, 1:3], ego[hist_idx, 3], origin_xy, origin_yaw)
    positions = currents[:, None] + spec.future_offsets(fps)  # [W, future_steps]
    fut_xy, fut_yaw = interpolate_poses(ego, positions.ravel())
    fxy, fyaw = _to_frame(fut_xy.reshape(*positions.shape, 2), fut_yaw.reshape(positions.shape), origin_xy, origin_yaw)
    t = ego[hist_idx, 0] - ego[currents, 0][:, None]
    ego_hist = np.concatenate([t[..., None], hxy, hyaw[..., None], ego[hist_idx, 4:6]], axis=-1)
    future = np.concatenate([fxy, fyaw[..., None]], axis=-1)
    return ego_hist.astype(np.float32), future.astype(np.float32)


def derive_command(future: np.ndarray) -> int:
    """High-level command from the future path, as in nuScenes-based planners: the lateral offset
    at the horizon beyond +-2 m means left/right, else straight. Index into :data:`COMMANDS`."""
    y = float(future[-1, 1])
    if y > _TURN_THRESHOLD_M:
        return 0
    if y < -_TURN_THRESHOLD_M:
        return 2
    return 1
