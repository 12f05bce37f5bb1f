"""Windows: training examples cut from a clip at load time (docs/data-format.md).

A window ends at its *current* frame ``c``. It holds ``history`` frames every ``frame_stride``
frames up to ``c``, the ego history at those frames, and the future path over ``horizon_s``
seconds at ``future_hz``, all in the ego frame of frame ``c`` (x forward, y left, yaw CCW).
Changing any of these never means re-writing shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fsdtrain.errors import ConfigError, DataError

__all__ = ["COMMANDS", "WindowSpec", "window_frames", "ego_window", "derive_command"]

COMMANDS = ("left", "straight", "right")
_TURN_THRESHOLD_M = 2.0  # lateral offset at the horizon that makes a turn command


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut from clips.

    Args:
        history: number of past frames per window, the current one included.
        frame_stride: frames between consecutive history frames.
        horizon_s: seconds of future path to predict.
        future_hz: rate of the future path points.
        window_stride: frames between the current frames of consecutive windows of one clip.
    """

    history: int = 2
    frame_stride: int = 5
    horizon_s: float = 3.0
    future_hz: float = 2.0
    window_stride: int = 5

    def __post_init__(self) -> None:
        for name in ("history", "frame_stride", "window_stride"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"window.{name} must be >= 1, got {getattr(self, name)}")
        if self.horizon_s <= 0 or self.future_hz <= 0:
            raise ConfigError("window.horizon_s and window.future_hz must be positive")
        steps = self.horizon_s * self.future_hz
        if abs(steps - round(steps)) > 1e-6:
            raise ConfigError(f"window.horizon_s x window.future_hz must be whole points, got {steps}")

    @property
    def future_steps(self) -> int:
        """Number of future points: ``horizon_s * future_hz``."""
        return int(round(self.horizon_s * self.future_hz))

    def future_offsets(self, fps: float) -> np.ndarray:
        """Frame offsets of the future points after the current frame."""
        step = fps / self.future_hz
        if abs(step - round(step)) > 1e-6:
            raise DataError(f"clip fps {fps} is not a multiple of window.future_hz {self.future_hz}")
        return np.arange(1, self.future_steps + 1) * int(round(step))

    def current_frames(self, frames: int, fps: float) -> np.ndarray:
        """Current-frame indices of all windows a clip of ``frames`` frames yields."""
        first = (self.history - 1) * self.frame_stride
        last = frames - 1 - int(self.future_offsets(fps)[-1])
        if last < first:
            return np.zeros(0, dtype=np.int64)
        return np.arange(first, last + 1, self.window_stride)

    def count(self, frames: int, fps: float) -> int:
        return len(self.current_frames(frames, fps))


def window_frames(spec: WindowSpec, current: int) -> np.ndarray:
    """History frame indices of the window ending at ``current``, oldest first."""
    return current - spec.frame_stride * np.arange(spec.history - 1, -1, -1)


def _to_frame(xy: np.ndarray, yaw: np.ndarray, origin_xy: np.ndarray, origin_yaw: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(origin_yaw), math.sin(origin_yaw)
    d = xy - origin_xy  # [N, 2]
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
    dyaw = (yaw - origin_yaw + np.pi) % (2 * np.pi) - np.pi
    return local, dyaw


def ego_window(spec: WindowSpec, ego: np.ndarray, current: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Ego history and future of one window, in the ego frame of the current frame.

    Args:
        ego: clip ``ego.npy`` [frames, 6]: t, x, y, yaw (first-frame ego frame), speed, yaw_rate.

    Returns:
        ``ego_hist`` [history, 6] (t relative to now, x, y, yaw, speed, yaw_rate) and
        ``future`` [future_steps, 3] (x, y, yaw), float32.
    """
    hist_idx = window_frames(spec, current)
    fut_idx = current + spec.future_offsets(fps)
    origin_xy, origin_yaw = ego[current, 1:3], float(ego[current, 3])
    hxy, hyaw = _to_frame(ego[hist_idx, 1:3], ego[hist_idx, 3], origin_xy, origin_yaw)
    fxy, fyaw = _to_frame(ego[fut_idx, 1:3], ego[fut_idx, 3], origin_xy, origin_yaw)
    t = ego[hist_idx, 0] - ego[current, 0]
    ego_hist = np.concatenate([t[:, None], hxy, hyaw[:, None], ego[hist_idx, 4:6]], axis=1)
    future = np.concatenate([fxy, fyaw[:, None]], axis=1)
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
