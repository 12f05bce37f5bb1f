"""The kinematic baselines `fsdtrain eval` reports (fsdtrain/model/ego_mlp.py: constant velocity and CTRA),
on paths whose future is known exactly. Reference paths are integrated numerically here, not with the
closed form under test."""

import math

import numpy as np
import pytest
import torch

from fsdtrain.format.windows import WindowSpec, ego_window
from fsdtrain.model.ego_mlp import constant_velocity, ctra

FPS = 10.0
STEPS, STEP_S = 6, 0.5  # future points: 3 s at 2 Hz
SPEC = WindowSpec(history=2, horizon_s=STEPS * STEP_S, future_hz=1 / STEP_S)  # history frames 0.5 s apart (the default)


def _path(v0: float, a: float, w: float, yaw0: float, t: np.ndarray, *, step: float = 1e-4) -> np.ndarray:
    """World-frame ``[len(t), 6]`` rows (t, x, y, yaw, speed, yaw_rate) of a car at (3, -2) heading ``yaw0``
    at t = 0 with constant acceleration ``a`` and yaw rate ``w``, by trapezoid integration of its velocity."""
    fine = np.arange(0.0, t.max() + step / 2, step)
    speed, yaw = v0 + a * fine, yaw0 + w * fine
    vx, vy = speed * np.cos(yaw), speed * np.sin(yaw)
    x = 3.0 + np.concatenate([[0.0], np.cumsum((vx[1:] + vx[:-1]) * step / 2)])
    y = -2.0 + np.concatenate([[0.0], np.cumsum((vy[1:] + vy[:-1]) * step / 2)])
    at = np.rint(t / step).astype(int)
    return np.stack([t, x[at], y[at], yaw[at], speed[at], np.full(len(t), w)], axis=1)


def _window(ego: np.ndarray, current: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ego_hist [1, 2, 6] (frames ``current - 5`` and ``current``) and future [1, 6, 3] (every 5th frame after
    it) in float64, in the ego frame of frame ``current`` as ``ego_window`` cuts them (x forward, y left)."""
    hist_idx = current - 5 * np.arange(1, -1, -1)
    fut_idx = current + 5 * np.arange(1, STEPS + 1)
    ox, oy, oyaw = ego[current, 1], ego[current, 2], ego[current, 3]
    c, s = math.cos(oyaw), math.sin(oyaw)

    def local(rows: np.ndarray) -> np.ndarray:
        dx, dy = rows[:, 1] - ox, rows[:, 2] - oy
        return np.stack([c * dx + s * dy, -s * dx + c * dy, rows[:, 3] - oyaw], axis=1)

    hist = ego[hist_idx]
    ego_hist = np.concatenate([(hist[:, 0] - ego[current, 0])[:, None], local(hist), hist[:, 4:6]], axis=1)
    return torch.from_numpy(ego_hist)[None], torch.from_numpy(local(ego[fut_idx]))[None]


@pytest.mark.parametrize(
    ("v0", "a", "w"),
    [
        (8.0, 1.5, 0.25),  # accelerating out of a left turn
        (15.0, -1.0, -0.12),  # braking in a right turn, still moving at the horizon
        (6.0, 2.0, 0.0),  # straight, accelerating
        (12.0, 0.5, 2e-4),  # a turn so slight the series branch computes it
        (2.0, 0.3, 0.6),  # a tight slow turn, over 90 degrees in the horizon
    ],
)
def test_ctra_predicts_an_exact_constant_turn_and_acceleration_path_to_a_micrometre(v0, a, w):
    t = np.arange(0, 61) / FPS
    ego = _path(v0, a, w, yaw0=0.7, t=t)
    hist, future = _window(ego, current=10)
    pred = ctra(hist, STEPS, STEP_S)
    assert pred.dtype == torch.float64 and pred.shape == (1, STEPS, 3)
    assert (pred[0, :, :2] - future[0, :, :2]).norm(dim=-1).max() < 1e-6
    yaw_err = torch.remainder(pred[0, :, 2] - future[0, :, 2] + math.pi, 2 * math.pi) - math.pi
    assert yaw_err.abs().max() < 1e-9
    assert pred[0, :, 2].min() >= -math.pi and pred[0, :, 2].max() < math.pi


def test_ctra_reads_the_windows_the_loader_cuts():
    # through ego_window itself (float32, from a clip's ego.npy in its first-frame ego frame)
    t = np.arange(0, 61) / FPS
    ego = _path(9.0, 1.2, 0.3, yaw0=0.0, t=t)
    ego[:, 1:3] -= ego[0, 1:3]  # the clip's frame: x[0] = y[0] = 0, yaw[0] = 0
    hist, future = ego_window(SPEC, ego, 10, FPS)
    pred = ctra(torch.from_numpy(hist)[None], STEPS, STEP_S)
    assert pred.dtype == torch.float32
    assert (pred[0, :, :2] - torch.from_numpy(future)[:, :2]).norm(dim=-1).max() < 1e-4


def test_ctra_beats_constant_velocity_where_the_car_turns_and_equals_it_where_it_cruises():
    t = np.arange(0, 61) / FPS
    hist, future = _window(_path(10.0, 1.0, 0.2, yaw0=-2.0, t=t), 10)
    cv = constant_velocity(hist, STEPS, STEP_S)
    assert (cv[0, -1, :2] - future[0, -1, :2]).norm() > 5.0
    assert (ctra(hist, STEPS, STEP_S)[0, -1, :2] - future[0, -1, :2]).norm() < 1e-6
    hist, _ = _window(_path(10.0, 0.0, 0.0, yaw0=1.0, t=t), 10)
    assert torch.allclose(ctra(hist, STEPS, STEP_S), constant_velocity(hist, STEPS, STEP_S), atol=1e-9)


def test_a_braking_car_stops_instead_of_reversing():
    # 4 m/s braking at 2 m/s^2 stops after 2 s, 4 m ahead, and stays there
    hist = torch.tensor([[[-0.5, -2.25, 0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0, 4.0, 0.0]]], dtype=torch.float64)
    pred = ctra(hist, 6, 0.5)
    assert torch.allclose(pred[0, :, 0], torch.tensor([1.75, 3.0, 3.75, 4.0, 4.0, 4.0], dtype=torch.float64))
    assert pred[0, :, 1:].abs().max() == 0
    # turning while braking: the heading stops changing when the car stops
    turning = hist.clone()
    turning[:, :, 5] = 0.3
    pred = ctra(turning, 6, 0.5)
    assert torch.allclose(pred[0, 3:], pred[0, 3:4].expand(3, 3))
    assert math.isclose(float(pred[0, -1, 2]), 0.6, abs_tol=1e-12)


def test_one_history_frame_is_constant_turn_rate_and_velocity():
    hist = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 10.0, 0.5]]])
    pred = ctra(hist, 4, 0.5).double()
    radius = 20.0  # v / w
    yaw = 0.5 * 0.5 * torch.arange(1, 5, dtype=torch.float64)
    assert torch.allclose(pred[0, :, 0], radius * torch.sin(yaw), atol=1e-5)
    assert torch.allclose(pred[0, :, 1], radius * (1 - torch.cos(yaw)), atol=1e-5)
