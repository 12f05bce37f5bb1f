"""What real logs get wrong, on real raw drive files: wrong frames (ECEF, yaw in degrees, a sensor's
heading), wrong timestamp units, real camera rates, and output rates windows cannot use."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.index import IndexedShards
from fsdtrain.format.motion import check_motion
from fsdtrain.format.schema import parse_meta
from fsdtrain.format.verify import find_manifests, verify
from fsdtrain.ingest.drives import clip_egos, cut_drive, write_drives
from fsdtrain.ingest.raw import RawLimits, load_drive
from fsdtrain.store.gate import ZoneGate
from fsdtrain.synth.raw_drives import synth_raw_drives
from helpers.fleet import clone_drive

# US seed 1 drive 0 has 3 s of straight road in its 5 s: enough to judge a constant heading offset
RAW = dict(seed=1, seconds=5.0, width=64, height=48, fps=10.0, pose_hz=25.0)
NAME = "bad_drive"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    (drive,) = synth_raw_drives(tmp_path_factory.mktemp("raw") / "raw", ["US"], 1, **RAW)
    return drive


def read_poses(drive: Path) -> dict[str, np.ndarray]:
    with open(drive / "poses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def write_poses(drive: Path, cols: dict[str, np.ndarray]) -> None:
    names = list(cols)
    lines = [",".join(names)]
    for i in range(len(cols["timestamp_us"])):
        lines.append(",".join(str(int(cols[n][i])) if n == "timestamp_us" else f"{cols[n][i]:.6f}" for n in names))
    (drive / "poses.csv").write_text("\n".join(lines) + "\n")


def camera_times(drive: Path, edit) -> None:
    """Replaces every camera's frame times ``t`` [M] by ``edit(t)``: timestamps files and JPEG names."""
    for ts in drive.glob("*.timestamps.csv"):
        t = np.array([int(v) for v in ts.read_text().split()[1:]], np.int64)
        ts.write_text("timestamp_us\n" + "".join(f"{int(v)}\n" for v in edit(t)))
    for folder in (p for p in drive.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir(), key=lambda p: int(p.stem))
        new = edit(np.array([int(p.stem) for p in files], np.int64))
        for f, t in zip(files, new):
            f.rename(folder / f"tmp-{int(t)}")
        for f in folder.iterdir():
            f.rename(folder / f"{f.name[4:]}.jpg")


def _ecef(cols: dict[str, np.ndarray], with_z: bool) -> dict[str, np.ndarray]:
    """The poses as a logger in Earth-centred coordinates would write them (Munich), yaw still the local heading."""
    lat, lon, radius = math.radians(48.1), math.radians(11.6), 6_378_137.0
    origin = radius * np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
    east = np.array([-math.sin(lon), math.cos(lon), 0.0])
    north = np.array([-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)])
    e, n = cols["x"] - cols["x"][0], cols["y"] - cols["y"][0]
    p = origin + e[:, None] * east + n[:, None] * north  # [N, 3]
    out = {"timestamp_us": cols["timestamp_us"], "x": p[:, 0], "y": p[:, 1], "yaw": cols["yaw"]}
    return {**out, "z": p[:, 2]} if with_z else out


def _degrees(cols):
    return {**cols, "yaw": np.degrees(np.arctan2(np.sin(cols["yaw"]), np.cos(cols["yaw"])))}  # wrapped to +-180, as loggers write


def _offset(deg):
    return lambda cols: {**cols, "yaw": cols["yaw"] + math.radians(deg)}


WRONG_FRAMES = {
    "ECEF with z": (lambda c: _ecef(c, True), r"implausible poses at \+0\.0 s: the pose lies 6378 km from the origin .*poses in ECEF"),
    "ECEF without z": (lambda c: _ecef(c, False), r"implausible poses at \+0\.2 s: heading .* off the direction of motion .*poses in ECEF"),
    "yaw in degrees": (_degrees, r"implausible poses at \+\d+\.\d s: .*likely cause: yaw in degrees\? poses.csv yaw must be radians"),
    "compass heading": (lambda c: {**c, "yaw": math.pi / 2 - c["yaw"]}, "yaw as a compass heading"),
    "sensor heading 0.9 degrees": (_offset(0.9), r"heading \+0\.90 degrees off the direction of motion \(median over straight driving; at most 0\.5\) .*camera or IMU"),
    "sensor heading -3 degrees": (_offset(-3.0), r"heading -3\.00 degrees off .*a constant offset of -3\.00 degrees"),
    "positions in cm": (lambda c: {**c, "x": c["x"] * 100, "y": c["y"] * 100}, r"speed \d+\.\d m/s .*positions not in metres"),
}


@pytest.mark.parametrize("case", list(WRONG_FRAMES), ids=lambda c: c.replace(" ", "_"))
def test_wrong_frames_are_one_line_naming_drive_time_and_cause(good, tmp_path, case):
    edit, match = WRONG_FRAMES[case]
    drive = clone_drive(good, tmp_path)
    write_poses(drive, edit(read_poses(drive)))
    with pytest.raises(DataError, match=match) as info:
        load_drive(drive)
    message = str(info.value)
    assert message.startswith(f"drive {NAME}: implausible poses at +") and "\n" not in message, message
    assert message.endswith(f"--accept-implausible {NAME} writes the drive anyway")
    accepted = load_drive(drive, limits=RawLimits(accept_implausible={NAME}))  # the flag lets it through
    assert accepted.accepted_implausible


def test_the_real_drive_and_small_offsets_pass(good, tmp_path):
    assert not load_drive(good).accepted_implausible
    drive = clone_drive(good, tmp_path)
    write_poses(drive, _offset(0.3)(read_poses(drive)))  # under the 0.5 degree threshold: a good INS's error
    load_drive(drive)
    rng = np.random.default_rng(0)
    cols = read_poses(good)  # 2 cm and 0.1 degree noise, as a good localisation gives
    noisy = {**cols, "x": cols["x"] + rng.normal(0, 0.02, len(cols["x"])), "y": cols["y"] + rng.normal(0, 0.02, len(cols["x"])),
             "yaw": cols["yaw"] + rng.normal(0, math.radians(0.1), len(cols["x"]))}  # fmt: skip
    write_poses(drive, noisy)
    cut = cut_drive(load_drive(drive), fps=10.0, clip_frames=10)
    assert len(clip_egos(cut)) == 5  # the clips pass the same checks data verify runs


def test_physical_limits_name_the_first_violation():
    t = np.arange(0, 10, 0.04)
    x = 10.0 * t
    x[t >= 3] += 5.0  # a 5 m jump at 3 s ...
    x[t >= 7] += 50.0  # ... and a larger one later: the first is reported
    bad = check_motion(t, np.stack([x, np.zeros_like(t)], axis=1), np.zeros_like(t))
    assert bad is not None and 2.5 <= bad.t <= 3.0 and "acceleration" in bad.what, bad
    yaw = np.where(t >= 4, 1.0, 0.0)  # heading reset of 1 rad while parked
    bad = check_motion(t, np.zeros((len(t), 2)), yaw)
    assert bad is not None and "yaw rate" in bad.what and "a jump in yaw" in bad.cause and 3.7 <= bad.t <= 4.0, bad
    shuffled = t.copy()
    shuffled[[20, 21]] = shuffled[[21, 20]]  # a clip's t column out of order (the schema checks only its range)
    bad = check_motion(shuffled, np.zeros((len(t), 2)), np.zeros_like(t))
    assert bad is not None and "at frame 21 does not increase" in bad.what, bad


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t * 1000, r"poses.csv timestamps are 40 s apart \(median, 0\.025 Hz\): timestamps in nanoseconds\? .*/1000 gives 25 Hz"),
        (lambda t: t // 1000, r"poses.csv timestamps are 40 us apart \(median, 2\.5e\+04 Hz\): timestamps in milliseconds\? .*x1000 gives 25 Hz"),
    ],
    ids=["ns", "ms"],
)
def test_timestamp_units_are_diagnosed_before_gaps(good, tmp_path, edit, match):
    drive = clone_drive(good, tmp_path)
    cols = read_poses(drive)
    write_poses(drive, {**cols, "timestamp_us": edit(cols["timestamp_us"].astype(np.int64))})
    camera_times(drive, edit)
    with pytest.raises(DataError, match=match) as info:
        load_drive(drive)
    assert "gap" not in str(info.value) and "split the drive" not in str(info.value)


def test_camera_timestamps_in_ns_are_a_unit_problem_not_a_short_video(good, tmp_path):
    drive = clone_drive(good, tmp_path)
    camera_times(drive, lambda t: t * 1000)
    with pytest.raises(DataError, match=r"drive bad_drive: CAM_FRONT.timestamps.csv timestamps are 100 s apart .*timestamps in nanoseconds\? .*/1000 gives 10 Hz"):
        load_drive(drive)


def test_gap_errors_name_the_flag_and_the_first_gap(good, tmp_path):
    drive = clone_drive(good, tmp_path)
    lines = (drive / "poses.csv").read_text().splitlines()
    (drive / "poses.csv").write_text("\n".join(lines[:10] + lines[26:40] + lines[66:]) + "\n")  # 0.68 s gap, then a 1.08 s gap
    with pytest.raises(DataError, match=r"has a 0\.680 s gap in poses .*\(line 11, \+0\.3 s\); at most --max-pose-gap 0\.5 s allowed"):
        load_drive(drive)


def _camera_at(rate: float):
    return lambda t: t[0] + np.round(np.arange(len(t)) * 1e6 / rate).astype(np.int64)


def test_a_9_65_hz_camera_ingests_at_10_fps(good, tmp_path):
    drive_dir = clone_drive(good, tmp_path / "raw")
    camera_times(drive_dir, _camera_at(9.65))
    drive = load_drive(drive_dir)
    cut = cut_drive(drive, fps=10.0, clip_frames=10)
    idx = cut.frame_index["CAM_FRONT"]
    offset = np.abs(drive.cameras["CAM_FRONT"].t_us[idx] - cut.t_us) / 1e6
    assert cut.clips == 5 and offset.max() <= 0.52 / 9.65  # nearest frame: at most half a camera period off
    assert 1 <= np.count_nonzero(np.diff(idx) == 0) <= 2  # a camera frame used twice about every 2.9 s, none skipped
    assert np.diff(idx).max() == 1
    out = f"file://{tmp_path}/fleet"
    summary = write_drives(str(tmp_path / "raw"), out, clip_seconds=1.0, fps=10.0)
    assert summary.clips == 5 and verify(out) == []
    with pytest.raises(DataError, match=r"CAM_FRONT runs at 9\.65 Hz .*too slow for --fps 12: .*; use --fps 8 \(whole rates up to the camera's"):
        cut_drive(drive, fps=12.0, clip_frames=12)  # 12 fps would repeat one frame in five; 9 Hz is no rate the windows can use


def test_write_refuses_an_output_rate_windows_cannot_use(good, tmp_path):
    with pytest.raises(ConfigError, match=r"^--fps 9: the default windows cannot use clips at this rate \(.*\); use --fps 10; whole rates that work: .*8, 10"):
        write_drives(str(good), f"file://{tmp_path}/fleet", clip_seconds=1.0, fps=9.0)
    assert not (tmp_path / "fleet").exists()
    with pytest.raises(ConfigError, match="--accept-implausible names nope, not a drive under"):
        write_drives(str(good), f"file://{tmp_path}/fleet", clip_seconds=1.0, limits=RawLimits(accept_implausible={"nope"}))


def test_accepted_drives_are_written_tagged_and_verified(good, tmp_path, capsys):
    raw = tmp_path / "raw"
    drive = clone_drive(good, raw)
    write_poses(drive, _offset(2.0)(read_poses(drive)))
    out = f"file://{tmp_path}/fleet"
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fsdtrain: error: drive {NAME}: implausible poses at +") and err.count("\n") == 0, err
    assert err.endswith(f"--accept-implausible {NAME} writes the drive anyway")
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1", "--accept-implausible", NAME]) == 0
    assert "wrote 5 clips from 1 of 1 drives" in capsys.readouterr().out
    (m,) = find_manifests(out, ZoneGate(None))
    reader = IndexedShards(m, ZoneGate(m.zone))
    assert all(parse_meta(reader.read_sample(k)["meta.json"], k).tags["plausibility"] == "accepted" for k in reader.keys())
    assert verify(out) == []


def test_frame_tolerance_and_max_edge_flags(good, tmp_path, capsys):
    raw = tmp_path / "raw"
    drive = clone_drive(good, raw)
    frames = sorted((drive / "CAM_BACK").iterdir())
    for f in frames[10:12]:  # 0.2 s of dropped frames: 0.3 s between frames
        f.unlink()
    out = f"file://{tmp_path}/fleet"
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1"]) == 2
    assert "the nearest is 100 ms away (dropped frames?); --frame-tolerance 1 would take every frame of the drive" in capsys.readouterr().err
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1", "--frame-tolerance", "1"]) == 0
    info = json.loads((drive / "drive.json").read_text())
    assert info["drive_id"] == NAME
    lines = (drive / "poses.csv").read_text().splitlines()
    (drive / "poses.csv").write_text("\n".join(lines[:-40]) + "\n")  # poses end 1.6 s before the cameras
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1", "--replace"]) == 2
    assert "at most --max-edge 1 s" in capsys.readouterr().err
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1", "--replace", "--frame-tolerance", "1", "--max-edge", "2"]) == 0
