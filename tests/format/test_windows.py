import math

import numpy as np
import pytest

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.windows import COMMANDS, WindowSpec, derive_command, ego_window, window_frames


def circle_track(frames: int, fps: float, speed: float, radius: float) -> np.ndarray:
    """Ego driving a left circle from the origin, heading +x: ego.npy layout [F, 6]."""
    t = np.arange(frames) / fps
    yaw = speed * t / radius
    x, y = radius * np.sin(yaw), radius * (1 - np.cos(yaw))
    return np.stack([t, x, y, yaw, np.full_like(t, speed), np.full_like(t, speed / radius)], axis=1)


def test_current_frames_cover_history_and_future():
    spec = WindowSpec(history=3, frame_stride=2, horizon_s=2.0, future_hz=2.0, window_stride=4)
    cur = spec.current_frames(frames=50, fps=10.0)
    assert cur[0] == 4  # 2 strides back from the first current frame is frame 0
    assert cur[-1] + 20 <= 49  # 2 s of future at 10 fps
    assert np.all(np.diff(cur) == 4)
    assert list(window_frames(spec, 10)) == [6, 8, 10]
    assert spec.count(frames=10, fps=10.0) == 0


def test_window_is_in_current_ego_frame():
    spec = WindowSpec(history=2, frame_stride=5, horizon_s=3.0, future_hz=2.0)
    ego = circle_track(100, 10.0, speed=10.0, radius=50.0)
    hist, fut = ego_window(spec, ego, current=40, fps=10.0)
    assert hist.shape == (2, 6) and fut.shape == (6, 3)
    np.testing.assert_allclose(hist[-1, :4], 0.0, atol=1e-5)  # now: origin of its own frame
    assert hist[0, 0] == pytest.approx(-0.5)
    # on a circle every future point is the same chord whatever the current frame
    for k, p in enumerate(fut, start=1):
        theta = 10.0 * (k * 0.5) / 50.0
        assert p[0] == pytest.approx(50 * math.sin(theta), abs=1e-3)
        assert p[1] == pytest.approx(50 * (1 - math.cos(theta)), abs=1e-3)
        assert p[2] == pytest.approx(theta, abs=1e-5)
    assert hist[0, 1] < 0  # the past lies behind


def test_commands_follow_lateral_offset():
    fut = np.zeros((6, 3), dtype=np.float32)
    fut[-1, 1] = 3.0
    assert COMMANDS[derive_command(fut)] == "left"
    fut[-1, 1] = -3.0
    assert COMMANDS[derive_command(fut)] == "right"
    fut[-1, 1] = 0.5
    assert COMMANDS[derive_command(fut)] == "straight"


@pytest.mark.parametrize("kwargs", [{"history": 0}, {"horizon_s": 1.25, "future_hz": 2.0}, {"future_hz": 0.0}])
def test_bad_specs_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        WindowSpec(**kwargs)


def test_future_rate_must_divide_fps():
    with pytest.raises(DataError, match="fps"):
        WindowSpec(future_hz=3.0, horizon_s=2.0).future_offsets(10.0)
