"""nuScenes tables -> shards: a small release in the documented nuScenes schema, written here (tables,
JPEGs made with PIL, ego poses along known arcs, two logs: Boston and Singapore), converted, verified,
checked against the fixture (1 cm / 0.1 degree) and trained on for two steps."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.index import IndexedShards
from fsdtrain.format.manifest import Manifest, load_manifest
from fsdtrain.format.schema import DEFAULT_CAMERAS, decode_npy, parse_meta
from fsdtrain.format.verify import verify
from fsdtrain.ingest.nuscenes import country_of_location, write_nuscenes
from fsdtrain.store.gate import ZoneGate
from helpers.fleet import ANY_ZONE

REPO = Path(__file__).resolve().parents[2]
VERSION = "v1.0-mini"
W, H = 64, 48
LIDAR_US = 50_000  # the lidar turns at 20 Hz; cameras fire on its phase
CAM_OFFSET_US = dict(zip(DEFAULT_CAMERAS, (15_000, 7_000, 22_000, 40_000, 49_000, 31_000)))  # from the lidar's turn start
CAM_YAW = dict(zip(DEFAULT_CAMERAS, (0.0, 0.96, -0.96, math.pi, 1.9, -1.9)))  # optical axis heading in the ego frame, rad
CAM_MOUNT = dict(zip(DEFAULT_CAMERAS, ([1.70, 0.0, 1.51], [1.52, 0.49, 1.51], [1.55, -0.49, 1.52], [0.05, 0.0, 1.56], [1.04, 0.48, 1.56], [1.05, -0.48, 1.56])))
LOGS = {  # log -> (location, vehicle, logfile)
    "boston": ("boston-seaport", "n008", "n008-2018-08-01-15-16-36-0400"),
    "singapore": ("singapore-onenorth", "n015", "n015-2018-07-24-11-22-45+0800"),
}
# scene -> log, start time, world start (x, y, yaw), speed m/s, yaw rate rad/s, dropped sweeps (camera, lidar turn)
SCENES = {
    "scene-0061": ("singapore", 1_532_402_927_000_000, (411.3, 1180.9, 2.9), 6.0, 0.25, []),  # yaw crosses +-pi
    "scene-0103": ("boston", 1_533_151_603_000_000, (1982.4, 872.1, -0.7), 9.0, -0.1, [("CAM_BACK", 32)]),
    "scene-0553": ("boston", 1_533_151_900_000_000, (640.0, 1605.5, 1.2), 4.0, 0.0, []),
}
TURNS = 70  # 3.5 s of lidar turns per scene; key frames every 10th turn (2 Hz), cameras on 3 of every 5 turns (12 Hz)
CLIP_SECONDS, FPS = 1.5, 12.0  # 18 frames; 2 clips per scene


def token(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def truth(scene: str, t_us: np.ndarray) -> np.ndarray:
    """World x, y, yaw of the ego at ``t_us``: a circular arc (or a line) at constant speed."""
    _, t0, (x0, y0, yaw0), v, w, _ = SCENES[scene]
    t = (np.asarray(t_us, dtype=np.int64) - t0) / 1e6
    yaw = yaw0 + w * t
    if w == 0:
        return np.stack([x0 + v * t * np.cos(yaw0), y0 + v * t * np.sin(yaw0), yaw], axis=1)
    return np.stack([x0 + v / w * (np.sin(yaw) - np.sin(yaw0)), y0 - v / w * (np.cos(yaw) - np.cos(yaw0)), yaw], axis=1)


def quat_z(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])  # fmt: skip


CAM_BASE_Q = np.array([0.5, -0.5, 0.5, -0.5])  # OpenCV camera looking along ego x (nuScenes CAM_FRONT, roughly)
CAM_BASE_R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # the same, as a matrix: camera z -> ego x


def expected_T(cam: str) -> np.ndarray:
    c, s = math.cos(CAM_YAW[cam]), math.sin(CAM_YAW[cam])
    T = np.eye(4)
    T[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ CAM_BASE_R
    T[:3, 3] = CAM_MOUNT[cam]
    return T


def intrinsic(cam: str) -> list[list[float]]:
    f = 50.0 if cam != "CAM_BACK" else 32.0
    return [[f, 0.0, W / 2 - 0.5], [0.0, f, H / 2 + 0.25], [0.0, 0.0, 1.0]]


def image(cam: str, k: int) -> Image.Image:
    """A picture that says which camera and which lidar turn it is: a colour per camera, a bar per turn."""
    i = DEFAULT_CAMERAS.index(cam)
    a = np.zeros((H, W, 3), np.uint8)
    a[:] = (40 + 35 * i, 200 - 30 * i, 90 + 20 * (i % 3))
    a[:, (k % 16) * 4 : (k % 16) * 4 + 4] = 255
    return Image.fromarray(a)


def write_release(root: Path) -> Path:
    """A nuScenes DATAROOT: ``v1.0-mini/*.json`` tables and ``samples/``, ``sweeps/`` JPEGs."""
    tables: dict[str, list[dict]] = {n: [] for n in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")}
    sensors = {ch: token("sensor", ch) for ch in (*DEFAULT_CAMERAS, "LIDAR_TOP")}
    for ch, tok in sensors.items():
        tables["sensor"].append({"token": tok, "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"})
    for log, (location, vehicle, logfile) in LOGS.items():
        tables["log"].append({"token": token("log", log), "logfile": logfile, "vehicle": vehicle, "date_captured": "2018-08-01", "location": location})
        for cam in DEFAULT_CAMERAS:
            q = quat_mul(quat_z(CAM_YAW[cam]), CAM_BASE_Q)
            tables["calibrated_sensor"].append({"token": token("cs", log, cam), "sensor_token": sensors[cam], "translation": CAM_MOUNT[cam],
                                                "rotation": q.tolist(), "camera_intrinsic": intrinsic(cam)})  # fmt: skip
        tables["calibrated_sensor"].append({"token": token("cs", log, "LIDAR_TOP"), "sensor_token": sensors["LIDAR_TOP"],
                                            "translation": [0.94, 0.0, 1.84], "rotation": [0.707, 0.0, 0.0, -0.707], "camera_intrinsic": []})  # fmt: skip
    for name, (log, t0, _, _, _, dropped) in SCENES.items():
        logfile = LOGS[log][2]
        keys = list(range(0, TURNS + 1, 10))
        samples = [token("sample", name, k) for k in keys]
        for i, k in enumerate(keys):
            tables["sample"].append({"token": samples[i], "timestamp": t0 + k * LIDAR_US, "scene_token": token("scene", name),
                                     "prev": samples[i - 1] if i else "", "next": samples[i + 1] if i + 1 < len(samples) else ""})  # fmt: skip
        tables["scene"].append({"token": token("scene", name), "name": name, "description": f"fixture {log}", "log_token": token("log", log),
                                "nbr_samples": len(keys), "first_sample_token": samples[0], "last_sample_token": samples[-1]})  # fmt: skip
        for ch in (*DEFAULT_CAMERAS, "LIDAR_TOP"):
            turns = [k for k in range(TURNS + 1) if ch == "LIDAR_TOP" or (k % 5 in (0, 2, 4) and (ch, k) not in dropped)]
            records = []
            for k in turns:
                t = t0 + k * LIDAR_US + (0 if ch == "LIDAR_TOP" else CAM_OFFSET_US[ch])
                key = k % 10 == 0
                folder = "samples" if key else "sweeps"
                ext = "pcd.bin" if ch == "LIDAR_TOP" else "jpg"
                filename = f"{folder}/{ch}/{logfile}__{ch}__{t}.{ext}"
                if ch != "LIDAR_TOP":
                    (root / folder / ch).mkdir(parents=True, exist_ok=True)
                    image(ch, k).save(root / filename, quality=95)
                x, y, yaw = truth(name, np.array([t]))[0]
                pose = token("pose", name, ch, k)
                tables["ego_pose"].append({"token": pose, "translation": [x, y, 0.0], "rotation": quat_z(yaw).tolist(), "timestamp": t})
                records.append({"token": token("sd", name, ch, k), "sample_token": samples[min(-(-k // 10), len(keys) - 1)],
                                "ego_pose_token": pose, "calibrated_sensor_token": token("cs", log, ch), "filename": filename,
                                "fileformat": ext.split(".")[-1], "width": 0 if ch == "LIDAR_TOP" else W, "height": 0 if ch == "LIDAR_TOP" else H,
                                "timestamp": t, "is_key_frame": key})  # fmt: skip
            for i, r in enumerate(records):
                r["prev"] = records[i - 1]["token"] if i else ""
                r["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""
            tables["sample_data"] += records
    (root / VERSION).mkdir(parents=True)
    for name, records in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(records, indent=0))
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("nuscenes") / "data")


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "nusc"
    messages: list[str] = []
    summary = write_nuscenes(release, f"file://{out}", version=VERSION, clip_seconds=CLIP_SECONDS, progress=messages.append)
    return summary, out, messages


def samples(m: Manifest) -> list[dict[str, bytes]]:
    reader = IndexedShards(m, ZoneGate(m.zone))
    return [reader.read_sample(k) for k in reader.keys()]


def test_scenes_become_clips_per_country_and_verify(converted):
    summary, out, messages = converted
    assert summary.skipped == [] and summary.written == ["scene-0061", "scene-0103", "scene-0553"]
    assert [(m.country, m.zone, m.samples) for m in summary.manifests] == [("SG", "global", 2), ("US", "global", 4)]
    for m in summary.manifests:
        loaded = load_manifest(f"file://{out}/train/{m.country}", ANY_ZONE, check_zone=False)
        assert (loaded.cameras, loaded.fps, loaded.frames) == (list(DEFAULT_CAMERAS), FPS, 18)
    assert messages[0] == "SG: scene scene-0061 (singapore-onenorth): 2 clips"
    assert verify(f"file://{out}") == []


def test_poses_and_calibration_match_the_fixture(converted):
    """ego.npy against the known arcs at the clip's frame times (1 cm, 0.1 degree), calib.json against the
    calibrated_sensor records (the matrices built here from the mount yaw, not from the quaternions)."""
    summary, _, _ = converted
    checked = 0
    for m in summary.manifests:
        for sample in samples(m):
            meta = parse_meta(sample["meta.json"], sample["__key__"])
            assert meta.tags["source"] == "nuscenes" and meta.tags["scene"] == meta.drive_id and meta.tags["version"] == VERSION
            assert meta.country == {"boston": "US", "singapore": "SG"}[SCENES[meta.drive_id][0]]
            ego = decode_npy(sample["ego.npy"], sample["__key__"])
            assert np.allclose(ego[:, 0], np.arange(18) / FPS, atol=1e-6)
            world = truth(meta.drive_id, meta.timestamp_us + np.round(ego[:, 0] * 1e6).astype(np.int64))  # [18, 3]
            c, s = math.cos(world[0, 2]), math.sin(world[0, 2])
            d = world[:, :2] - world[0, :2]
            want = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
            assert np.hypot(*(ego[:, 1:3] - want).T).max() < 0.01
            dyaw = (ego[:, 3] - (world[:, 2] - world[0, 2]) + math.pi) % (2 * math.pi) - math.pi
            assert np.degrees(np.abs(dyaw)).max() < 0.1
            assert np.abs(ego[:, 4] - SCENES[meta.drive_id][3]).max() < 0.05  # speed, m/s
            assert np.abs(ego[:, 5] - SCENES[meta.drive_id][4]).max() < 0.01  # yaw rate, rad/s
            calib = json.loads(sample["calib.json"])
            for cam in DEFAULT_CAMERAS:
                T = np.array(calib[cam]["T_cam_to_ego"])
                assert np.abs(T[:3, 3] - expected_T(cam)[:3, 3]).max() < 0.01
                angle = math.acos(np.clip((np.trace(T[:3, :3].T @ expected_T(cam)[:3, :3]) - 1) / 2, -1, 1))
                assert math.degrees(angle) < 0.1
                assert calib[cam]["K"] == intrinsic(cam) and calib[cam]["size"] == [W, H]
            checked += 1
    assert checked == 6


def test_each_frame_shows_the_nearest_sweep(converted, release):
    summary, _, _ = converted
    sample = samples(summary.manifests[0])[0]  # scene-0061, frames 0..17
    meta = parse_meta(sample["meta.json"], "x")
    t0 = SCENES["scene-0061"][1]
    with av.open(io.BytesIO(sample["CAM_FRONT.mp4"])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 18 and frames[0].shape == (H, W, 3)
    cam_turns = np.array([k for k in range(TURNS + 1) if k % 5 in (0, 2, 4)])
    cam_t = t0 + cam_turns * LIDAR_US + CAM_OFFSET_US["CAM_FRONT"]
    for j in (0, 7, 17):
        t = meta.timestamp_us + round(j * 1e6 / FPS)
        k = int(cam_turns[np.argmin(np.abs(cam_t - t))])
        want = np.asarray(image("CAM_FRONT", k)).astype(int)
        assert np.abs(frames[j].astype(int) - want).mean() < 8  # the same picture, after JPEG and H.264


def test_same_release_gives_the_same_bytes_with_two_workers(converted, release, tmp_path):
    _, out, _ = converted
    again = tmp_path / "nusc"
    write_nuscenes(release, str(again), version=VERSION, clip_seconds=CLIP_SECONDS, workers=2)

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}

    assert digests(again) == digests(out)


def test_a_missing_image_names_the_scene_and_skip_bad_writes_the_rest(release, tmp_path):
    broken = tmp_path / "data"  # the release, with one sweep's file name pointing nowhere
    (broken / VERSION).mkdir(parents=True)
    for folder in ("samples", "sweeps"):
        os.symlink(release / folder, broken / folder)
    for name in ("scene", "sample", "ego_pose", "calibrated_sensor", "sensor", "log"):
        os.symlink(release / VERSION / f"{name}.json", broken / VERSION / f"{name}.json")
    records = json.loads((release / VERSION / "sample_data.json").read_text())
    victim = next(r for r in records if "CAM_BACK_LEFT__" in r["filename"] and r["timestamp"] > SCENES["scene-0553"][1] + 1_000_000)
    victim["filename"] = victim["filename"].replace(".jpg", "_gone.jpg")
    (broken / VERSION / "sample_data.json").write_text(json.dumps(records))
    out = f"file://{tmp_path}/nusc"
    with pytest.raises(DataError, match=r"^drive scene-0553: CAM_BACK_LEFT image .*_gone\.jpg is missing"):
        write_nuscenes(broken, out, version=VERSION, clip_seconds=CLIP_SECONDS)
    summary = write_nuscenes(broken, out, version=VERSION, clip_seconds=CLIP_SECONDS, skip_bad=True, scenes=["scene-0103", "scene-0553"])
    assert summary.written == ["scene-0103"] and [s.name for s in summary.skipped] == ["scene-0553"]
    assert [m.country for m in summary.manifests] == ["US"] and verify(out) == []


def test_a_gap_longer_than_one_dropped_sweep_is_refused(release, tmp_path):
    """One dropped sweep (scene-0103's CAM_BACK) is within the 100 ms tolerance; two in a row leave a 300 ms gap."""
    broken = tmp_path / "data"
    (broken / VERSION).mkdir(parents=True)
    for folder in ("samples", "sweeps"):
        os.symlink(release / folder, broken / folder)
    for name in ("scene", "sample", "ego_pose", "calibrated_sensor", "sensor", "log"):
        os.symlink(release / VERSION / f"{name}.json", broken / VERSION / f"{name}.json")
    t0 = SCENES["scene-0553"][1]
    gone = {t0 + k * LIDAR_US + CAM_OFFSET_US["CAM_FRONT_RIGHT"] for k in (22, 24)}  # 20 -> 25: 250 ms without a frame
    records = [r for r in json.loads((release / VERSION / "sample_data.json").read_text()) if not ("CAM_FRONT_RIGHT__" in r["filename"] and r["timestamp"] in gone)]
    (broken / VERSION / "sample_data.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"^drive scene-0553: CAM_FRONT_RIGHT has no frame within 100 ms"):
        write_nuscenes(broken, str(tmp_path / "o"), version=VERSION, clip_seconds=CLIP_SECONDS, scenes=["scene-0553"])


def test_location_decides_the_country():
    assert country_of_location("boston-seaport") == "US"
    assert country_of_location("singapore-hollandvillage") == "SG"
    with pytest.raises(DataError, match="log location 'las-vegas-strip' has no known country"):
        country_of_location("las-vegas-strip")


def test_bad_settings_fail_in_one_line(release, tmp_path):
    with pytest.raises(ConfigError, match="--version 'v2.0' is not a nuScenes release"):
        write_nuscenes(release, str(tmp_path / "o"), version="v2.0")
    with pytest.raises(ConfigError, match=r"no nuScenes tables at .*v1\.0-trainval; .* holds v1\.0-mini"):
        write_nuscenes(release, str(tmp_path / "o"), version="v1.0-trainval")
    with pytest.raises(ConfigError, match="--scenes: 1 scene"):
        write_nuscenes(release, str(tmp_path / "o"), version=VERSION, scenes=["scene-9999"])
    with pytest.raises(ConfigError, match="--accept-implausible names 'scene-0061', not a scene being converted"):
        write_nuscenes(release, str(tmp_path / "o"), version=VERSION, scenes=["scene-0553"], accept_implausible=frozenset({"scene-0061"}))


def test_cli_from_nuscenes(release, tmp_path, capsys):
    out = f"file://{tmp_path}/nusc"
    (tmp_path / "val.txt").write_text("scene-0553\n\n")
    argv = ["data", "write", "--from", "nuscenes", str(release), "--version", VERSION, "--out", out, "--clip-seconds", "1.5",
            "--scenes", str(tmp_path / "val.txt"), "--split", "val"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 clips from 1 of 1 drives" in printed and f"{out}/val/US" in printed
    assert load_manifest(f"{out}/val/US", ANY_ZONE, check_zone=False).fps == 12.0
    for bad, message in (
        (["data", "write", "--from", "nuscenes", str(release), "--out", out], "--from nuscenes needs --version"),
        (["data", "write", str(release), "--version", VERSION, "--out", out], "--version is for --from nuscenes"),
        (["data", "write", "--out", out], "data write needs the input folder"),
        (["data", "write", "--raw", str(release), str(tmp_path), "--out", out], "give the input folder once"),
    ):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fsdtrain: error: ") and message in err and "\n" not in err, err


@pytest.mark.slow
def test_trains_two_steps(converted, tmp_path):
    summary, _, _ = converted
    env = {k: v for k, v in os.environ.items() if k != "FSDTRAIN_SITE_ZONE"}
    env |= {"PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled"}
    train = ",".join(m.url for m in summary.manifests)
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "fit", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml",
         "--data.train", f"[{train}]", "--data.val", "[]", "--data.cameras", "[" + ",".join(DEFAULT_CAMERAS) + "]",
         "--data.country_weights", "null", "--data.window.history", "2", "--data.window.history_spacing_s", "0.25",
         "--data.window.horizon_s", "1.0", "--data.window.future_hz", "2.0", "--data.window.stride_s", "0.5",
         "--data.batch_size", "2", "--data.num_workers", "0", "--data.image_size", "null",
         "--trainer.devices", "1", "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    with open(next(tmp_path.glob("metrics/*/metrics.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)  # one logged loss per step, both US and SG clips in the stream
    assert max(int(r["step"]) for r in rows) <= 2 and (tmp_path / "model.safetensors").is_file()
