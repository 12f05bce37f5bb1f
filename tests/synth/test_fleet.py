"""The synthetic fleet: schema, determinism, zones, country behaviour, rigs, conditions, traffic, lane changes,
and what the videos show."""

from __future__ import annotations

import io
import json
import tarfile

import av
import numpy as np
import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.format.manifest import Manifest, load_manifest
from fsdtrain.format.schema import EGO_FIELDS, SCHEMA, decode_npy, parse_calib, parse_meta, validate_key
from fsdtrain.store import objects
from fsdtrain.synth.fleet import ClipSpec, make_clip, synth_fleet
from fsdtrain.synth.render import Renderer
from fsdtrain.synth.rig import cam_to_ego, default_rig, intrinsics, make_rig
from fsdtrain.synth.scene import STYLES, Scenario, clip_seed, country_style, plan_clip
from helpers.fleet import ANY_ZONE

COUNTRIES = ["CN", "US", "DE", "GB", "JP"]
SMALL = dict(clips=2, clips_per_shard=1, clip=ClipSpec(seconds=3.0, width=64, height=48), seed=7)
CAMERAS = [c.name for c in default_rig()]


def _samples(manifest: Manifest) -> list[dict[str, bytes]]:
    """Every clip of a manifest, read with plain ``tarfile`` (no webdataset involved)."""
    out = []
    for shard in manifest.shards:
        with tarfile.open(fileobj=io.BytesIO(objects.read_bytes(manifest.shard_url(shard)))) as tar:
            for m in tar.getmembers():
                key, member = m.name.split(".", 1)
                if not out or out[-1]["__key__"] != key:
                    out.append({"__key__": key})
                out[-1][member] = tar.extractfile(m).read()
    return out


def _specs(kwargs: dict) -> dict:
    """``synth_fleet`` arguments with the clip and scenario fields gathered into their spec objects
    (a bad value fails when its spec is made, inside the caller's ``pytest.raises``)."""
    clip = {k: kwargs.pop(k) for k in ("width", "height", "fps", "seconds", "gop", "rig") if k in kwargs}
    scenario = {k: kwargs.pop(k) for k in ("conditions", "vehicles", "lane_change") if k in kwargs}
    return {**kwargs, "clip": ClipSpec(**clip), "scenario": Scenario(**scenario)}


def _decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # [F, H, W, 3]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> dict[str, Manifest]:
    root = tmp_path_factory.mktemp("synth") / "fleet"
    messages: list[str] = []
    manifests = synth_fleet(f"file://{root}", COUNTRIES, progress=messages.append, **SMALL)
    assert len(messages) == len(COUNTRIES) * SMALL["clips"] and messages[0].startswith("CN: clip 1/2")
    return {m.country: load_manifest(f"file://{root}/train/{m.country}", ANY_ZONE, check_zone=False) for m in manifests}


def test_layout_and_manifests(fleet):
    for country, m in fleet.items():
        assert m.url.endswith(f"/fleet/train/{country}")
        assert (m.dataset, m.split, m.schema, m.cameras, m.fps, m.frames) == ("fleet", "train", SCHEMA, CAMERAS, 10.0, 30)
        assert [s.name for s in m.shards] == ["shard-000000.tar", "shard-000001.tar"] and m.samples == 2
    assert fleet["CN"].zone == "cn"
    assert {fleet[c].zone for c in ("US", "DE", "GB", "JP")} == {"global"}


def test_clips_follow_the_schema(fleet):
    for country, m in fleet.items():
        for i, sample in enumerate(_samples(fleet[country])):
            key = validate_key(sample["__key__"])
            assert key == f"synth_{country.lower()}_s7_train_{i:06d}-000000"
            assert list(sample)[1:] == ["meta.json", "calib.json", "ego.npy"] + [f"{c}.mp4" for c in CAMERAS]
            meta = parse_meta(sample["meta.json"], key)
            assert (meta.clip_id, meta.country, meta.zone, meta.frames, meta.cameras) == (key, country, m.zone, 30, CAMERAS)
            assert meta.tags["synthetic"] is True and meta.tags["drive_side"] == country_style(country).drive_side
            # the defaults: six cameras, daylight, no lane change
            assert (meta.tags["rig"], meta.tags["condition"], meta.tags["lane_change"]) == ("surround6", "day", "none")
            calib = parse_calib(sample["calib.json"], meta.cameras, key)
            assert calib["CAM_FRONT"]["size"] == (64, 48)
            assert np.allclose(calib["CAM_BACK"]["T_cam_to_ego"], cam_to_ego(default_rig()[3]))
            ego = decode_npy(sample["ego.npy"], key)
            assert ego.dtype == np.float64 and ego.shape == (30, len(EGO_FIELDS))
            assert np.array_equal(ego[0, :4], np.zeros(4))
            assert np.allclose(np.diff(ego[:, 0]), 0.1) and np.all(np.isfinite(ego))
            assert (ego[:, 4] > 3.0).all() and (ego[:, 4] < 25.0).all()
            assert np.all(np.diff(ego[:, 1]) > 0)  # a 3 s clip never turns around: x keeps growing


def test_every_camera_video_decodes(fleet):
    for m in fleet.values():
        for sample in _samples(m):
            for cam in CAMERAS:
                frames = _decode(sample[f"{cam}.mp4"])
                assert frames.shape == (30, 48, 64, 3)
                assert frames.std() > 10  # sky, road, grass: not a flat image


def test_same_arguments_same_bytes(fleet, tmp_path):
    def shas(out: str, **kw) -> list[str]:
        args = {**SMALL, **kw}
        return [s.sha256 for s in synth_fleet(out, ["US"], **args)[0].shards]

    us = [s.sha256 for s in fleet["US"].shards]
    # US alone, in two worker processes, gives the bytes it gave next to four other countries.
    assert shas(f"file://{tmp_path}/a", workers=2) == us
    assert shas(f"file://{tmp_path}/b", seed=8) != us
    other_split = shas(f"file://{tmp_path}/c", split="test")
    assert not set(other_split) & set(us)


def test_zones_and_bad_arguments(tmp_path):
    ms = synth_fleet(f"file://{tmp_path}/z", ["us", "CN"], 1, clip=ClipSpec(seconds=0.5, width=32, height=32))
    assert [(m.country, m.zone) for m in ms] == [("US", "global"), ("CN", "cn")]  # the residency policy's zones
    assert parse_meta(_samples(ms[1])[0]["meta.json"], "x").zone == "cn"
    with pytest.raises(ConfigError, match="known: CN, DE, GB, JP, US"):
        synth_fleet(f"file://{tmp_path}/x", ["US", "XX"], 1)
    assert not (tmp_path / "x").exists()  # nothing written before the arguments are checked
    for kwargs, match in [
        (dict(width=63), "even"),
        (dict(split="a/b"), "split"),
        (dict(seconds=0.1), "2 frames"),
        (dict(clips_per_shard=0), "clips_per_shard"),
        (dict(rig="surround7"), "known: surround6, surround6_narrow, surround8"),
        (dict(conditions="day,fog"), "day, night, rain"),
        (dict(conditions="night=x"), "NAME=WEIGHT"),
        (dict(conditions={"day": 0}), "positive sum"),
        (dict(vehicles="5-2"), "min <= max"),
        (dict(vehicles="many"), "MIN-MAX"),
        (dict(lane_change=1.5), "lane_change"),
        (dict(fps=0), "2 frames"),
    ]:
        with pytest.raises(ConfigError, match=match):
            synth_fleet(f"file://{tmp_path}/x", ["US"], 1, **_specs(kwargs))


def test_country_behaviour_differs():
    speed, straight, a_lat = {}, {}, {}
    for country in ("CN", "US", "DE"):
        plans = [plan_clip(country, seed=clip_seed(0, "train", country, i)) for i in range(12)]
        v = np.concatenate([p.ego[:, 4] for p in plans])
        kappa = np.concatenate([np.abs(p.road.curvature(p.s)) for p in plans])
        speed[country] = v.mean()
        straight[country] = v[kappa < 1 / 1000].mean()
        a_lat[country] = np.percentile(v**2 * kappa, 99)  # how hard curves are taken, m/s^2
    assert speed["CN"] < 0.8 * min(speed["US"], speed["DE"])
    assert straight["CN"] < 11.0 < straight["US"] < 15.0 < straight["DE"]
    assert a_lat["CN"] < 0.6 * min(a_lat["US"], a_lat["DE"])
    for country, value in a_lat.items():
        assert 0.8 * STYLES[country].a_lat_max < value < 1.15 * STYLES[country].a_lat_max
    # Keeping left in the lane (CN +0.4 m) vs right (DE -0.2 m), from the ego's stored offset to the road.
    for country, offset in (("CN", 0.4), ("DE", -0.2)):
        plan = plan_clip(country, seed=1)
        lane_centre = -(plan.lane + 0.5) * STYLES[country].lane_width_m
        assert abs(plan.d.mean() - lane_centre - offset) < 0.15


def test_driving_side_in_tags(fleet):
    for country, sign in (("US", -1), ("GB", 1), ("JP", 1), ("CN", -1)):
        for sample in _samples(fleet[country]):
            assert np.sign(json.loads(sample["meta.json"])["tags"]["ego_mean_offset_m"]) == sign


def test_yaw_rate_follows_road_curvature(fleet):
    for country in ("CN", "GB"):
        for i, sample in enumerate(_samples(fleet[country])):
            plan = plan_clip(country, seed=clip_seed(7, "train", country, i), seconds=3.0)
            assert np.array_equal(decode_npy(sample["ego.npy"], "x"), plan.ego)  # the shards hold exactly the plan
    plan = plan_clip("US", seed=3, seconds=10.0)
    ego = plan.ego
    kappa = plan.road.curvature(plan.s)
    expected = kappa / (1 - kappa * plan.d) * ego[:, 4]  # [F] rad/s: the lane's curvature x speed
    assert np.std(expected) > 0.02  # this clip has curves both ways worth testing
    assert np.corrcoef(ego[:, 5], expected)[0, 1] > 0.97
    assert np.abs(ego[:, 5] - expected).mean() < 0.01
    # and yaw_rate is the derivative of the stored yaw
    assert np.abs(np.gradient(ego[:, 3], ego[:, 0])[1:-1] - ego[1:-1, 5]).max() < 0.01


def _marking_curvature(ground_xy: np.ndarray, img: np.ndarray) -> float:
    """Road curvature ahead estimated from lane-marking pixels alone.

    Marking pixels (brighter than the road around them) are back-projected to the ground with
    the stored calibration; the curve ``y = a_line + b x + kappa x^2 / 2`` that makes the
    markings' lateral positions collapse into the sharpest lines wins (a small Hough transform).
    """
    zone = (ground_xy[..., 0] > 6) & (ground_xy[..., 0] < 35) & (np.abs(ground_xy[..., 1]) < 15)
    lum, sat = img.mean(-1), img.max(-1) - img.min(-1)
    road = zone & (sat < 25) & (lum < 140)
    mark = zone & (lum > np.median(lum[road]) + 35)
    x, y = ground_xy[mark, 0], ground_xy[mark, 1]
    slopes, kappas = np.arange(-0.2, 0.201, 0.01), np.arange(-0.04, 0.0401, 0.002)
    resid = y - slopes[:, None, None] * x - kappas[None, :, None] * x**2 / 2  # [B, K, N]
    bins = np.floor(resid / 0.3).astype(np.int64)
    bins -= bins.min()
    span = int(bins.max()) + 1
    combo = np.arange(len(slopes) * len(kappas)).reshape(len(slopes), len(kappas), 1)
    counts = np.bincount((combo * span + bins).ravel(), minlength=combo.size * span).reshape(len(slopes), len(kappas), span)
    score = (counts.astype(np.int64) ** 2).sum(-1)  # peaky histograms: markings line up
    return float(kappas[np.unravel_index(score.argmax(), score.shape)[1]])


def test_curvature_ahead_is_visible_in_front_camera(tmp_path):
    width, height = 160, 96
    (m,) = synth_fleet(f"file://{tmp_path}/curv", ["US"], 3, clip=ClipSpec(seconds=8.0, width=width, height=height), clips_per_shard=3)
    estimated, actual = [], []
    for sample in _samples(m):
        ego = decode_npy(sample["ego.npy"], "x")
        calib = parse_calib(sample["calib.json"], CAMERAS, "x")["CAM_FRONT"]
        K, T = calib["K"], calib["T_cam_to_ego"]
        u, v = np.meshgrid(np.arange(width), np.arange(height))
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ T[:3, :3].T  # [H, W, 3] ego frame
        lam = np.where(rays[..., 2] < 0, -T[2, 3] / np.minimum(rays[..., 2], -1e-9), np.inf)
        ground_xy = T[:2, 3] + lam[..., None] * rays[..., :2]  # [H, W, 2]
        frames = _decode(sample["CAM_FRONT.mp4"]).astype(np.float32)
        travelled = np.cumsum(ego[:, 4]) / m.fps
        for i in range(0, len(ego), 2):
            ahead = np.searchsorted(travelled - travelled[i], 30.0)  # the next 30 m of the stored path
            if ahead >= len(ego):
                break
            estimated.append(_marking_curvature(ground_xy, frames[i]))
            actual.append(np.mean(ego[i:ahead, 5] / ego[i:ahead, 4]))
    estimated, actual = np.array(estimated), np.array(actual)
    curved = np.abs(actual) > 1 / 150
    assert curved.sum() >= 20 and (actual[curved] > 0).any() and (actual[curved] < 0).any()  # curves both ways
    assert (np.sign(estimated[curved]) == np.sign(actual[curved])).mean() > 0.9
    assert np.corrcoef(estimated, actual)[0, 1] > 0.8


def _ground_points(calib: dict, width: int, height: int) -> np.ndarray:
    """Where each pixel's ray meets the road, [H, W, 2] ego frame (inf above the horizon), from the stored calibration."""
    K, T = calib["K"], calib["T_cam_to_ego"]
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ T[:3, :3].T  # [H, W, 3] ego frame
    lam = np.where(rays[..., 2] < 0, -T[2, 3] / np.minimum(rays[..., 2], -1e-9), np.inf)
    return T[:2, 3] + lam[..., None] * rays[..., :2]


def test_surround8_clips_decode_with_consistent_calib(tmp_path):
    rig = make_rig("surround8")
    names = [c.name for c in rig]
    (m,) = synth_fleet(f"file://{tmp_path}/r8", ["DE"], 1, clip=ClipSpec(seconds=1.0, width=64, height=32, fps=8.0, rig="surround8"))
    assert m.cameras == names and len(names) == 8 and m.fps == 8.0
    (sample,) = _samples(m)
    meta = parse_meta(sample["meta.json"], "x")
    assert meta.cameras == names and meta.tags["rig"] == "surround8" and meta.frames == 8
    calib = parse_calib(sample["calib.json"], names, "x")
    assert set(json.loads(sample["calib.json"])) == set(names)
    for cam in rig:
        frames = _decode(sample[f"{cam.name}.mp4"])
        assert frames.shape == (8, 32, 64, 3) and frames.std() > 5
        assert calib[cam.name]["size"] == (64, 32)
        assert np.allclose(calib[cam.name]["K"], intrinsics(cam, 64, 32)) and np.allclose(calib[cam.name]["T_cam_to_ego"], cam_to_ego(cam))
    assert len(sample) == 4 + 8  # key, meta, calib, ego + one video per camera


def test_conditions_in_decoded_frames(tmp_path):
    clips = {}
    for condition in ("day", "night", "rain"):
        (m,) = synth_fleet(f"file://{tmp_path}/{condition}", ["US"], 1, clip=ClipSpec(seconds=1.0, width=64, height=48), scenario=Scenario(conditions=condition))
        (clips[condition],) = _samples(m)
        assert json.loads(clips[condition]["meta.json"])["tags"]["condition"] == condition
    # same seed otherwise: the same drive, only the light and weather differ
    assert clips["day"]["ego.npy"] == clips["night"]["ego.npy"] == clips["rain"]["ego.npy"]
    video = {c: np.stack([_decode(s[f"{cam}.mp4"]) for cam in CAMERAS]).astype(np.float32) for c, s in clips.items()}
    for i, cam in enumerate(CAMERAS):  # [N_cam, F, H, W, 3]
        assert video["night"][i].mean() < 0.35 * video["day"][i].mean(), cam
    assert np.abs(video["rain"] - video["day"]).mean() > 10
    sky_day, sky_rain = video["day"][:, :, :6], video["rain"][:, :, :6]
    assert (sky_rain[..., 2] - sky_rain[..., 0]).mean() < 0.3 * (sky_day[..., 2] - sky_day[..., 0]).mean()  # grey, not blue


def test_condition_weights_and_traffic():
    scenario = Scenario(conditions="day=2,night=1,rain=1", vehicles="10-14")
    assert scenario.conditions == {"day": 2.0, "night": 1.0, "rain": 1.0} and scenario.vehicles == (10, 14)
    plans = [plan_clip("GB", seed=clip_seed(0, "train", "GB", i), seconds=4.0, scenario=scenario) for i in range(40)]
    seen = [p.condition for p in plans]
    assert seen == [p.tags["condition"] for p in plans]
    assert 12 <= seen.count("day") <= 28 and seen.count("night") >= 4 and seen.count("rain") >= 4
    assert {plan_clip("GB", seed=i, scenario=Scenario(conditions={"night": 1, "rain": 0})).condition for i in range(5)} == {"night"}
    counts = [len(p.vehicles) for p in plans]
    assert max(counts) <= 14 and np.mean(counts) >= 10
    for p in plans:  # dense traffic, yet no two cars in one lane closer than their half lengths and 3 m
        for i, a in enumerate(p.vehicles):
            for b in p.vehicles[:i]:
                if abs(a.d - b.d) < 1.0:
                    assert np.abs(a.s - b.s).min() >= (a.size[0] + b.size[0]) / 2 + 3.0
    # nor does the ego change lanes into a car: while the ego is in a car's lane, the car keeps its distance
    for i in range(20):
        p = plan_clip("US", seed=i, seconds=6.0, scenario=Scenario(vehicles="8-12", lane_change=1.0))
        assert p.lane_end != p.lane
        for v in p.vehicles:
            shared = np.abs(v.d - p.d) < 2.0  # [F] the ego's and the car's footprints overlap sideways
            assert (np.abs(v.s - p.s - 1.4)[shared] >= (4.8 + v.size[0]) / 2).all()


def _centre_line_y(img: np.ndarray, ground: np.ndarray) -> float:
    """Median lateral position (ego frame, m) of the yellow centre line 4-20 m ahead in a front-camera image [H, W, 3]."""
    zone = (ground[..., 0] > 4) & (ground[..., 0] < 20) & (np.abs(ground[..., 1]) < 10)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    yellow = zone & (r > 130) & (g > 0.6 * r) & (b < 0.6 * g)
    assert yellow.sum() >= 10
    return float(np.median(ground[yellow, 1]))


def test_lane_change_in_poses_and_front_camera(tmp_path):
    width, height, seconds = 160, 96, 6.0
    scenario = dict(lane_change=1.0, vehicles="0")  # no cars: nothing hides the centre line
    (m,) = synth_fleet(f"file://{tmp_path}/lc", ["US"], 3, clip=ClipSpec(seconds=seconds, width=width, height=height), clips_per_shard=3, scenario=Scenario(**scenario))
    renderer = Renderer(default_rig(), width, height)
    for i, sample in enumerate(_samples(m)):
        tags = json.loads(sample["meta.json"])["tags"]
        seed = clip_seed(0, "train", "US", i)
        plan = plan_clip("US", seed=seed, seconds=seconds, scenario=Scenario(**scenario))
        still = plan_clip("US", seed=seed, seconds=seconds, scenario=Scenario(vehicles="0"))  # the same drive without the change
        assert np.array_equal(decode_npy(sample["ego.npy"], "x"), plan.ego)  # the shards hold exactly the plan
        # the ego's offset from the road moves one lane over, on its own (right) side of the road
        w, start = tags["lane_width_m"], tags["lane_change_start_s"]
        assert tags["lane_change"] in ("left", "right") and abs(tags["ego_lane_end"] - tags["ego_lane"]) == 1
        moved = plan.d[-1] - plan.d[0]
        assert abs(abs(moved) - w) < 0.4 and np.sign(moved) == (1 if tags["lane_change"] == "left" else -1)
        assert (plan.d < 0).all() and 0.5 < start and start + tags["lane_change_duration_s"] < 0.9 * seconds
        before = plan.ego[:, 0] < start - 0.05  # (finite differences reach one fine step past a frame)
        assert np.array_equal(plan.ego[before], still.ego[before])  # identical until the change starts
        assert abs(np.linalg.norm(plan.ego[-1, 1:3] - still.ego[-1, 1:3]) - w) < 0.3  # then one lane width apart
        # ... and the markings move under the car: the yellow centre line seen by the front camera shifts by a lane
        ground = _ground_points(parse_calib(sample["calib.json"], CAMERAS, "x")["CAM_FRONT"], width, height)
        front = _decode(sample["CAM_FRONT.mp4"]).astype(np.int16)
        seen = _centre_line_y(front[-1], ground) - _centre_line_y(front[0], ground)
        assert np.sign(seen) == -np.sign(moved) and abs(seen) > 2.0 and abs(seen + moved) < 1.5
        steady = renderer.render(still)[:, 0].astype(np.int16)  # without the change the line stays where it was
        assert abs(_centre_line_y(steady[-1], ground) - _centre_line_y(steady[0], ground)) < 1.5 < abs(seen)


def test_new_options_are_deterministic(tmp_path):
    args = dict(seconds=1.0, width=48, height=32, rig="surround8", conditions="day,night,rain", vehicles="3-8", lane_change=0.5, seed=11)

    def shas(name: str, **kw) -> list[str]:
        return [s.sha256 for s in synth_fleet(f"file://{tmp_path}/{name}", ["JP"], 4, clips_per_shard=1, **_specs({**args, **kw}))[0].shards]

    first = shas("a")
    assert shas("b", workers=2) == first and len(set(first)) == 4


def test_rendering_a_subset_of_cameras_gives_the_same_frames_for_them():
    clip = ClipSpec(seconds=0.5, width=32, height=32, rig="surround6_narrow")
    every = make_clip("DE", seed=3, index=1, clip=clip)
    one = make_clip("DE", seed=3, index=1, clip=ClipSpec(seconds=0.5, width=32, height=32, rig="surround6_narrow", only=("CAM_FRONT_NARROW",)))
    assert sorted(k for k in one if k.endswith(".mp4")) == ["CAM_FRONT_NARROW.mp4"]
    assert one["CAM_FRONT_NARROW.mp4"] == every["CAM_FRONT_NARROW.mp4"] and one["ego.npy"] == every["ego.npy"]
    assert list(json.loads(one["calib.json"])) == ["CAM_FRONT_NARROW"] and parse_meta(one["meta.json"], "x").cameras == ["CAM_FRONT_NARROW"]
    with pytest.raises(ConfigError, match="rig surround6 has CAM_FRONT, .*name at least one"):
        ClipSpec(only=("CAM_FRONT_NARROW",))
