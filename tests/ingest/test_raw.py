"""Raw drives: the layout is read as documented, and every bad input is one line naming the drive."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.video import encode_video
from fsdtrain.ingest.drives import cut_drive
from fsdtrain.ingest.raw import CameraReader, RawLimits, find_drives, load_drive
from fsdtrain.synth.raw_drives import synth_raw_drives
from fsdtrain.synth.rig import default_rig
from helpers.fleet import clone_drive

CAMERAS = [c.name for c in default_rig()]
SIZE = dict(width=64, height=48, seconds=3.0, fps=10.0, pose_hz=25.0)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """One synthetic CN drive: even cameras as MP4 + timestamps, odd cameras as JPEG folders."""
    (drive,) = synth_raw_drives(tmp_path_factory.mktemp("raw") / "raw", ["CN"], 1, seed=5, **SIZE)
    return drive


def edit_json(drive: Path, **fields) -> None:
    info = json.loads((drive / "drive.json").read_text())
    info.update(fields)
    (drive / "drive.json").write_text(json.dumps(info))


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_good_drive_loads(good):
    drive = load_drive(good)
    assert drive.info.drive_id == good.name and drive.info.country == "CN" and drive.info.zone == "cn"
    assert list(drive.cameras) == CAMERAS == list(drive.info.cameras)
    assert [drive.cameras[c].kind for c in CAMERAS] == ["mp4", "jpeg"] * 3
    assert len(drive.poses.t_us) == 75 and np.all(np.diff(drive.poses.t_us) == 40_000)  # 25 Hz
    assert all(len(c.t_us) == 30 and np.all(np.diff(c.t_us) == 100_000) for c in drive.cameras.values())  # 10 Hz
    assert np.abs(np.diff(drive.poses.yaw)).max() < 0.5  # unwrapped, although poses.csv wraps at +-pi
    for cam in ("CAM_FRONT", "CAM_FRONT_LEFT"):  # one MP4, one JPEG folder
        with CameraReader(drive.cameras[cam], drive.calib[cam]["size"], drive.where) as reader:
            frames = [reader.read(i) for i in (0, 0, 5, 29)]
        assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
        assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[3])
    assert json.loads(drive.calib_json())["CAM_BACK"]["size"] == [64, 48]


def test_find_drives(good, tmp_path):
    assert find_drives(good) == [good]  # a drive folder itself
    root = tmp_path / "root"
    for name in ("b_drive", "a_drive", ".hidden"):
        (root / name).mkdir(parents=True)
    (root / "README.txt").write_text("notes")
    assert [p.name for p in find_drives(root)] == ["a_drive", "b_drive"]
    with pytest.raises(DataError, match="no drives under"):
        find_drives(tmp_path / "root" / ".hidden")
    with pytest.raises(ConfigError, match="not a directory"):
        find_drives(tmp_path / "missing")


def _set_cell(path: Path, line: int, column: int, value: str) -> None:
    lines = csv_lines(path)
    cells = lines[line].split(",")
    cells[column] = value
    lines[line] = ",".join(cells)
    write_lines(path, lines)


def _drop_rows(path: Path, lo: int, hi: int) -> None:
    lines = csv_lines(path)
    write_lines(path, lines[:lo] + lines[hi:])


def _swap_rows(path: Path, i: int, j: int) -> None:
    lines = csv_lines(path)
    lines[i], lines[j] = lines[j], lines[i]
    write_lines(path, lines)


def _short_video(d: Path) -> None:
    """CAM_FRONT: 2 s of video (and timestamps) for 3 s of poses."""
    ts = csv_lines(d / "CAM_FRONT.timestamps.csv")[:21]
    write_lines(d / "CAM_FRONT.timestamps.csv", ts)
    (d / "CAM_FRONT.mp4").write_bytes(encode_video(np.zeros((20, 48, 64, 3), np.uint8), 10.0))


def _video_fewer_frames_than_timestamps(d: Path) -> None:
    (d / "CAM_FRONT.mp4").write_bytes(encode_video(np.zeros((25, 48, 64, 3), np.uint8), 10.0))


def _non_utf8_name(d: Path) -> None:
    (d / os.fsdecode(b"notes-caf\xe9.txt")).write_text("x")


def _jpeg_duplicate(d: Path) -> None:
    first = sorted((d / "CAM_BACK").iterdir())[0]
    shutil.copy(first, d / "CAM_BACK" / ("0" + first.name))


def _calib_size(d: Path) -> None:
    calib = json.loads((d / "calib.json").read_text())
    calib["CAM_FRONT"]["size"] = [128, 96]
    (d / "calib.json").write_text(json.dumps(calib))


def _timestamps_in_ms(d: Path) -> None:
    lines = csv_lines(d / "CAM_FRONT.timestamps.csv")
    t0 = int(lines[1])
    write_lines(d / "CAM_FRONT.timestamps.csv", lines[:1] + [str(t0 + (int(t) - t0) // 1000) for t in lines[1:]])


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing camera": (lambda d: (d / "CAM_FRONT.mp4").unlink(), "missing camera CAM_FRONT: expected CAM_FRONT.mp4"),
    "missing jpeg camera": (lambda d: shutil.rmtree(d / "CAM_BACK"), "missing camera CAM_BACK"),
    "missing timestamps": (lambda d: (d / "CAM_FRONT.timestamps.csv").unlink(), "no CAM_FRONT.timestamps.csv"),
    "pose timestamps not increasing": (lambda d: _swap_rows(d / "poses.csv", 5, 6), r"poses.csv line 7: timestamp_us \d+ is not after"),
    "frame timestamps not increasing": (lambda d: _swap_rows(d / "CAM_FRONT.timestamps.csv", 3, 4), "CAM_FRONT.timestamps.csv line 5: timestamp_us"),
    "jpeg timestamps repeat": (_jpeg_duplicate, "CAM_BACK/ has two frames at timestamp_us"),
    "gap in poses": (lambda d: _drop_rows(d / "poses.csv", 20, 40), r"0\.840 s gap in poses between timestamp_us \d+ and \d+ \(line 21, \+0\.7 s\); at most --max-pose-gap 0\.5 s"),
    "video shorter than poses": (_short_video, r"CAM_FRONT ends 1\.060 s before the last pose \(video shorter than its poses"),
    "video shorter than timestamps": (_video_fewer_frames_than_timestamps, "CAM_FRONT.mp4 has 25 frames but CAM_FRONT.timestamps.csv lists 30"),
    "poses shorter than video": (lambda d: _drop_rows(d / "poses.csv", 40, 80), "poses shorter than the video"),
    "file name with ..": (lambda d: (d / "notes..txt").write_text("x"), "file 'notes..txt' contains '..'"),
    "jpeg name with ..": (lambda d: (d / "CAM_BACK" / "1..jpg").write_bytes(b"x"), "file 'CAM_BACK/1..jpg' contains '..'"),
    "non-UTF-8 file name": (_non_utf8_name, r"file 'notes-caf\\xe9.txt' is not valid UTF-8"),
    "absolute camera path": (lambda d: edit_json(d, cameras=["/data/CAM_FRONT"]), "camera name '/data/CAM_FRONT' is a path"),
    "camera path with ..": (lambda d: edit_json(d, cameras=["../CAM_FRONT"]), "camera name '../CAM_FRONT' is a path"),
    "unknown country": (lambda d: edit_json(d, country="XX"), "unknown country 'XX'"),
    "lower-case country": (lambda d: edit_json(d, country="cn"), "did you mean 'CN'"),
    "bad zone": (lambda d: edit_json(d, zone="China!"), "drive.json zone 'China!' is not a zone name"),
    "zone missing": (lambda d: (d / "drive.json").write_text(json.dumps({k: v for k, v in json.loads((d / "drive.json").read_text()).items() if k != "zone"})), r"lacks \['zone'\]"),
    "unknown drive.json field": (lambda d: edit_json(d, contry="CN"), r"unknown field\(s\) \['contry'\]"),
    "drive_id differs from folder": (lambda d: edit_json(d, drive_id="other"), "differs from its folder name"),
    "no drive.json": (lambda d: (d / "drive.json").unlink(), "no drive.json"),
    "drive.json not JSON": (lambda d: (d / "drive.json").write_text("{country: CN"), "drive.json is not valid JSON"),
    "no calib": (lambda d: (d / "calib.json").unlink(), "no calib.json"),
    "calib lacks camera": (lambda d: (d / "calib.json").write_text("{}"), r"calib.json CAM_FRONT is missing \(every camera needs K, T_cam_to_ego and size\)"),
    "zone not the country's": (lambda d: edit_json(d, zone="global"), "drive.json zone 'global' is not the residency policy's zone 'cn' for country CN"),
    "frame size differs from calib": (_calib_size, "CAM_FRONT.mp4 is 64x48 but calib.json says 128x96"),
    "timestamps in ms": (_timestamps_in_ms, r"CAM_FRONT.timestamps.csv timestamps are 100 us apart \(median, 1e\+04 Hz\): timestamps in milliseconds\? .*x1000 gives 10 Hz"),
    "fps disagrees with drive.json": (lambda d: edit_json(d, fps=25), "CAM_FRONT timestamps say 10 Hz but drive.json fps is 25"),
    "pose not a number": (lambda d: _set_cell(d / "poses.csv", 3, 1, "nan"), "poses.csv line 4: x 'nan' is not a finite number"),
    "pose time not integer": (lambda d: write_lines(d / "poses.csv", csv_lines(d / "poses.csv")[:1] + ["1.5e6,0,0,0,0"] + csv_lines(d / "poses.csv")[2:]), "'1.5e6' is not an integer number of microseconds"),
    "pose column missing": (lambda d: write_lines(d / "poses.csv", ["timestamp_us,x,y,z"] + csv_lines(d / "poses.csv")[1:]), r"lacks column\(s\) \['yaw'\]"),
    "unexpected file in camera folder": (lambda d: (d / "CAM_BACK" / "frame.png").write_bytes(b"x"), "unexpected CAM_BACK/frame.png"),
}


@pytest.mark.parametrize("case", list(BAD), ids=lambda c: c.replace(" ", "_"))
def test_bad_raw_input_is_one_line_naming_the_drive(good, tmp_path, case):
    mutate, match = BAD[case]
    drive = clone_drive(good, tmp_path)
    mutate(drive)
    with pytest.raises(DataError, match=match) as info:
        load_drive(drive)
    message = str(info.value)
    assert message.startswith("drive bad_drive: ") and "\n" not in message, message


def test_unreadable_frame(good, tmp_path):
    drive_dir = clone_drive(good, tmp_path)
    victim = sorted((drive_dir / "CAM_BACK").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated JPEG
    drive = load_drive(drive_dir)  # frames are only decoded when used
    with CameraReader(drive.cameras["CAM_BACK"], (64, 48), drive.where) as reader:
        reader.read(2)
        with pytest.raises(DataError, match=rf"^drive bad_drive: unreadable frame CAM_BACK/{victim.name} "):
            reader.read(3)
    (drive_dir / "CAM_FRONT.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(DataError, match="drive bad_drive: CAM_FRONT.mp4 is not a readable video"):
        load_drive(drive_dir)


def test_non_utf8_drive_folder(good, tmp_path):
    name = os.fsdecode(b"drive-\xff")
    shutil.copytree(good, tmp_path / name)
    with pytest.raises(DataError, match=r"^drive drive-\\xff: drive folder 'drive-\\xff' is not valid UTF-8"):
        load_drive(tmp_path / name)


def test_cut_drive_frame_grid_and_problems(good, tmp_path):
    drive = load_drive(good)
    cut = cut_drive(drive, fps=10.0, clip_frames=10)
    assert cut.clips == 3 and len(cut.t_us) == 30  # 2.9 s of overlap: 30 grid frames at 0.0 .. 2.9 s
    assert np.array_equal(cut.t_us, drive.poses.t_us[0] + 100_000 * np.arange(30))
    assert all(np.array_equal(idx, np.arange(30)) for idx in cut.frame_index.values())
    cut5 = cut_drive(drive, fps=5.0, clip_frames=4)  # a camera faster than the output: every second frame
    assert np.array_equal(cut5.frame_index["CAM_FRONT"], 2 * np.arange(12))
    with pytest.raises(DataError, match=r"drive \S+: poses and all cameras overlap for 2\.90 s, shorter than one clip"):
        cut_drive(drive, fps=10.0, clip_frames=50)
    with pytest.raises(DataError, match=r"CAM_FRONT runs at 10 Hz \(mean frame interval\), too slow for --fps 20: .*; use --fps 10 "):
        cut_drive(drive, fps=20.0, clip_frames=10)  # 10 Hz cameras cannot give 20 fps

    dropped = clone_drive(good, tmp_path)
    frames = sorted((dropped / "CAM_BACK").iterdir())
    for f in frames[10:14]:  # 0.4 s of dropped frames
        f.unlink()
    with pytest.raises(DataError, match=r"drive bad_drive: CAM_BACK has no frame within 60 ms \(--frame-tolerance 0\.6 of a 100 ms period\) .*; the nearest is 100 ms away \(dropped frames\?\); --frame-tolerance 2 would take every frame"):
        cut_drive(load_drive(dropped), fps=10.0, clip_frames=10)
    lenient = RawLimits(max_frame_offset_s=0.3)
    assert cut_drive(load_drive(dropped), fps=10.0, clip_frames=10, limits=lenient).clips == 3


def test_limits_are_validated_and_configurable(good, tmp_path):
    with pytest.raises(ConfigError, match="--max-pose-gap 0 must be positive"):
        RawLimits(max_pose_gap_s=0)
    drive = clone_drive(good, tmp_path)
    _drop_rows(drive / "poses.csv", 20, 40)
    assert load_drive(drive, limits=RawLimits(max_pose_gap_s=1.0)).info.drive_id == "bad_drive"
