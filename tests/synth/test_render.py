"""The renderer: which side the centre line is seen on, vehicles in the pixels, and day, night and rain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.synth.render import Renderer, _blend, _pack, _pack_add
from fsdtrain.synth.rig import cam_to_ego, default_rig, ground_lut, intrinsics
from fsdtrain.synth.scene import CONDITIONS, Scenario, plan_clip


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
                    # At night the same car shows its lights: red at the back (driving ahead), white at the front (oncoming).
                    night = renderer.render(dataclasses.replace(plan, condition="night"))[k, 0].astype(np.int16)
                    r, g, b = night[..., 0], night[..., 1], night[..., 2]
                    lamps = (r > 200) & (g < 90) if not veh.oncoming else (r > 200) & (g > 200) & (b > 150)
                    assert lamps.sum() >= 1, (seed, k)
                    day = with_cars.astype(np.int16)
                    assert ((day[..., 0] > 200) & (day[..., 1] < 90)).sum() == 0  # no lit tail lights in daylight
                    return
    pytest.fail("no clip with a vehicle ahead in 40 seeds")


def test_blend_is_exact():
    # The packed (SWAR) tap average and blend equal the per-channel integer formulas.
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 5000, 3), dtype=np.uint8)
    gain = rng.integers(0, 257, 5000)
    add = rng.integers(0, 65536, (5000, 3)) % ((256 - gain)[:, None] * 255 + 1)  # the bound render() keeps
    pa, pb = _pack(a), _pack(b)
    mean = (pa & pb) + (((pa ^ pb) >> np.uint32(1)) & np.uint32(0x7F7F7F7F))
    out = _blend(mean, gain.astype(np.uint32), *_pack_add(add)).view(np.uint8).reshape(-1, 4)
    expected = (((a.astype(np.int64) + b) >> 1) * gain[:, None] + add) >> 8
    assert np.array_equal(out[:, :3], expected) and not out[:, 3].any()


@pytest.fixture(scope="module")
def looks() -> dict[str, np.ndarray]:
    """One plan (no vehicles) rendered in every condition, [F, N_cam, H, W, 3] float32 each."""
    plan = plan_clip("US", seed=2, seconds=1.0, scenario=Scenario(vehicles=(0, 0)))
    renderer = Renderer(default_rig(), 96, 64)
    return {c: renderer.render(dataclasses.replace(plan, condition=c)).astype(np.float32) for c in CONDITIONS}


def test_night_is_dark_and_lit_by_headlights(looks):
    day, night = looks["day"], looks["night"]
    assert night.mean() < 0.3 * day.mean()
    assert night[:, :, :8].mean() < 0.2 * day[:, :, :8].mean()  # the sky
    xy, hit = ground_lut(default_rig()[0], 96, 64, 100.0)
    beam = hit & (xy[..., 0] > 6) & (xy[..., 0] < 20) & (np.abs(xy[..., 1]) < 2)  # the lane ahead, in the low beams
    far = hit & (xy[..., 0] > 50)
    lum = night[:, 0].mean(-1)  # [F, H, W] front camera
    assert lum[:, beam].mean() > 2.5 * lum[:, far].mean() and lum[:, beam].mean() > 0.5 * day[:, 0].mean(-1)[:, beam].mean()
    back = night[:, 3, -8:]  # the road just behind, in the tail lights' glow
    assert (back[..., 0] - back[..., 1]).mean() > 10 and abs((day[:, 3, -8:, :, 0] - day[:, 3, -8:, :, 1]).mean()) < 10


def test_rain_is_grey_wet_and_moving(looks):
    day, rain = looks["day"], looks["rain"]
    assert np.abs(rain - day).mean() > 10
    sky_day, sky_rain = day[:, :, :8], rain[:, :, :8]  # overcast: a grey sky instead of a blue one
    assert (sky_rain[..., 2] - sky_rain[..., 0]).mean() < 0.3 * (sky_day[..., 2] - sky_day[..., 0]).mean()
    # streaks move from frame to frame; the day's sky does not change at all
    assert np.abs(np.diff(sky_day, axis=0)).max() == 0 and np.abs(np.diff(sky_rain, axis=0)).mean() > 0.3


def test_unknown_condition():
    plan = dataclasses.replace(plan_clip("US", seed=0, seconds=0.5), condition="fog")
    with pytest.raises(ConfigError, match="known: day, night, rain"):
        Renderer(default_rig(), 32, 32).render(plan)
