import math

import numpy as np
import pytest

from fsdtrain.errors import ConfigError
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


def line_track(frames: int, fps: float, yaw0: float = 3.0, yaw_rate: float = 0.4) -> np.ndarray:
    """Ego moving on a straight line at constant velocity while its yaw turns at a constant rate across +-pi:
    positions and yaw are linear in time, so interpolating between frames is exact."""
    t = np.arange(frames) / fps
    yaw = (yaw0 + yaw_rate * t + np.pi) % (2 * np.pi) - np.pi
    return np.stack([t, 4.0 * t - 1.0, -1.5 * t + 2.0, yaw, np.full_like(t, 5.0), np.full_like(t, yaw_rate)], axis=1)


def test_windows_are_in_seconds_whatever_the_rate():
    spec = WindowSpec(history=3, history_spacing_s=0.5, stride_s=0.5, horizon_s=3.0, future_hz=2.0)
    for fps, frames in ((10.0, 100), (8.0, 80)):  # two 10 s clips
        cur = spec.current_frames(frames, fps)
        np.testing.assert_allclose(cur / fps, np.arange(1.0, 6.5 + 1e-9, 0.5))  # same current times, the last with 3 s ahead
        np.testing.assert_allclose(window_frames(spec, int(cur[0]), fps) / fps, [0.0, 0.5, 1.0])
        np.testing.assert_allclose(spec.future_offsets(fps) / fps, np.arange(1, 7) * 0.5)


def test_future_between_frames_is_interpolated_exactly():
    spec = WindowSpec(history=2, history_spacing_s=0.3, horizon_s=2.0, future_hz=3.0)  # 1/3 s: between 10 fps frames
    ego = line_track(60, 10.0)
    current = 20
    hist, fut = ego_window(spec, ego, current, fps=10.0)
    t = np.arange(1, 7) / 3.0
    c, s = math.cos(ego[current, 3]), math.sin(ego[current, 3])
    dx, dy = 4.0 * t, -1.5 * t  # displacement along the line, world frame
    np.testing.assert_allclose(fut[:, 0], c * dx + s * dy, atol=1e-5)
    np.testing.assert_allclose(fut[:, 1], -s * dx + c * dy, atol=1e-5)
    np.testing.assert_allclose(fut[:, 2], 0.4 * t, atol=1e-5)  # shortest arc: the yaw wraps past pi in between
    assert hist[0, 0] == pytest.approx(-0.3)


def test_history_frames_nearest_within_tolerance_or_refused():
    spec = WindowSpec(history=3, history_spacing_s=0.5)
    assert list(spec.history_offsets(9.65)) == [10, 5, 0]  # 18 and 36 ms off: within 50 ms
    with pytest.raises(ConfigError, match=r"^data: keyframes at 1 fps cannot place history frames every 0.5 s"):
        spec.history_offsets(1.0, where="data: keyframes")
    with pytest.raises(ConfigError, match="cannot place"):
        WindowSpec(history_spacing_s=0.05).history_offsets(8.0)  # two history frames on one frame


def test_offsets_are_worked_out_once_per_rate_and_cannot_be_changed_by_a_caller():
    spec = WindowSpec(history=3, history_spacing_s=0.5)
    first, again = spec.history_offsets(10.0), WindowSpec(history=3, history_spacing_s=0.5).history_offsets(10.0)
    assert first is again and list(first) == [10, 5, 0] and list(spec.history_offsets(8.0)) == [8, 4, 0]
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 3  # shared by every window of every clip at this rate
    assert spec.future_offsets(10.0) is spec.future_offsets(10.0) and not spec.future_offsets(10.0).flags.writeable
    for _ in range(2):  # a refused rate is refused every time, naming the caller's dataset
        with pytest.raises(ConfigError, match=r"^data: b at 1 fps"):
            spec.history_offsets(1.0, where="data: b")


def test_frames_convert_at_one_rate_or_say_what_to_write():
    old = WindowSpec(history=2, frame_stride=5, window_stride=2)
    new = old.at_rates({"a": 10.0, "b": 10.0})
    assert (new.history_spacing_s, new.stride_s, new.frame_stride, new.window_stride) == (0.5, 0.2, None, None)
    assert list(new.current_frames(50, 10.0)) == list(old.current_frames(50, 10.0)) == [5, 7, 9, 11, 13, 15, 17, 19]
    assert list(window_frames(old, 10)) == list(window_frames(new, 10, 10.0)) == [5, 10]
    with pytest.raises(ConfigError, match=r"write window.history_spacing_s and window.stride_s in seconds instead") as err:
        old.at_rates({"us": 10.0, "eu": 8.0})
    assert "eu 8 fps" in str(err.value) and "\n" not in str(err.value)


def test_spec_round_trips_through_weights_metadata():
    spec = WindowSpec().at_rates({"a": 8.0})
    assert spec.to_dict() == {"history": 2, "history_spacing_s": 0.5, "stride_s": 0.5, "horizon_s": 3.0, "future_hz": 2.0, "tolerance_s": 0.05}
    assert WindowSpec(**spec.to_dict()) == spec
    legacy = {"history": 2, "frame_stride": 5, "horizon_s": 3.0, "future_hz": 2.0, "window_stride": 5}  # fsdtrain <= 0.2 weights
    assert WindowSpec(**legacy).at_rates({"a": 10.0}) == spec
