"""The renderer: which side the centre line is seen on, and that vehicles show up in the pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fsdtrain.data.render import Renderer
from fsdtrain.data.rig import cam_to_ego, default_rig, intrinsics
from fsdtrain.data.synth import plan_clip


def test_centre_line_side_in_pixels():
    # The yellow centre line is left of the ego when driving on the right (US), right of it on the left (JP).
    renderer = Renderer(default_rig(), 160, 96)
    for country, left in (("US", True), ("JP", False)):
        for seed in range(3):
            front = renderer.render(plan_clip(country, seed=seed, seconds=1.0))[:, 0].astype(np.int16)  # [F, H, W, 3]
            r, g, b = front[..., 0], front[..., 1], front[..., 2]
            cols = np.nonzero((r > 150) & (g > 0.65 * r) & (b < 0.5 * g))[2]
            assert len(cols) > 50
            assert (np.median(cols) < 80) == left, (country, seed)


def test_vehicles_are_rendered():
    rig = default_rig()
    renderer = Renderer(rig, 96, 64)
    K, T = intrinsics(rig[0], 96, 64), cam_to_ego(rig[0])
    for seed in range(40):
        plan = plan_clip("DE", seed=seed, seconds=2.0)
        for veh in plan.vehicles:
            for k in range(len(plan.s)):
                xy, _ = plan.road.pose(veh.s[k], veh.d)
                x, y, yaw = plan.pose_world[k]
                ego_xy = np.array([[np.cos(yaw), np.sin(yaw)], [-np.sin(yaw), np.cos(yaw)]]) @ (xy - (x, y))
                if 10 < ego_xy[0] < 35 and abs(ego_xy[1]) < 5:  # in front, close enough to cover pixels
                    with_cars = renderer.render(plan)[k, 0]
                    without = renderer.render(dataclasses.replace(plan, vehicles=[]))[k, 0]
                    cam = np.linalg.inv(T) @ np.array([ego_xy[0], ego_xy[1], veh.size[2] / 2, 1.0])
                    u, v = (K @ cam[:3])[:2] / cam[2]
                    assert (with_cars[int(round(v)), int(round(u))] != without[int(round(v)), int(round(u))]).any()
                    assert 3 <= (with_cars != without).any(axis=-1).sum() < with_cars.shape[0] * with_cars.shape[1] / 4
                    return
    pytest.fail("no clip with a vehicle ahead in 40 seeds")
