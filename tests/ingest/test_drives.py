"""Raw drives -> shards: the issue's round trip, determinism, bad drives, and the real loader on the result."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
from torch.utils.data import DataLoader

from fsdtrain.cli import main
from fsdtrain.data.stream import FleetStream, Source
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.index import IndexedShards
from fsdtrain.format.manifest import Manifest, load_manifest
from fsdtrain.format.schema import SCHEMA, decode_npy, parse_meta
from fsdtrain.format.verify import verify
from fsdtrain.format.windows import WindowSpec
from fsdtrain.ingest.drives import ego_array, write_drives
from fsdtrain.residency import ResidencyError
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate
from fsdtrain.synth.raw_drives import plan_drive, synth_raw_drives
from fsdtrain.synth.rig import default_rig
from helpers.fleet import ANY_ZONE, clone_drive

CAMERAS = [c.name for c in default_rig()]
SEED, SECONDS, FPS, POSE_HZ = 3, 4.0, 10.0, 25.0
RAW = dict(seed=SEED, seconds=SECONDS, width=64, height=48, fps=FPS, pose_hz=POSE_HZ)
SHARD_BYTES = 150_000  # a few clips per shard at 64x48
WINDOW = WindowSpec(history=2, frame_stride=2, horizon_s=0.4, future_hz=5.0, window_stride=2)  # fits 10-frame clips


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    """2 CN + 2 US synthetic raw drives of 4 s; drive 1 of each faces west, so its yaw wraps at +-pi."""
    root = tmp_path_factory.mktemp("ingest") / "raw"
    synth_raw_drives(root, ["CN", "US"], 2, **RAW)
    return root


@pytest.fixture(scope="module")
def ingested(raw_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "fleet"
    messages: list[str] = []
    summary = write_drives(str(raw_root), f"file://{out}", clip_seconds=1.0, fps=FPS, shard_bytes=SHARD_BYTES, progress=messages.append)
    return summary, out, messages


def samples(m: Manifest) -> list[dict[str, bytes]]:
    reader = IndexedShards(m, ZoneGate(m.zone))
    return [reader.read_sample(k) for k in reader.keys()]


def shard_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def read_poses(path: Path) -> dict[int, tuple[float, float, float]]:
    with open(path, newline="") as f:
        return {int(r["timestamp_us"]): (float(r["x"]), float(r["y"]), float(r["yaw"])) for r in csv.DictReader(f)}


def test_layout_manifests_and_summary(ingested):
    summary, out, messages = ingested
    assert summary.drives == 4 and summary.skipped == [] and len(summary.written) == 4
    assert [m.country for m in summary.manifests] == ["CN", "US"]
    for m in summary.manifests:
        loaded = load_manifest(f"file://{out}/train/{m.country}", ANY_ZONE, check_zone=False)
        assert (loaded.dataset, loaded.split, loaded.schema, loaded.cameras, loaded.fps, loaded.frames) == ("fleet", "train", SCHEMA, CAMERAS, FPS, 10)
        assert loaded.zone == ("cn" if m.country == "CN" else "global")
        assert loaded.samples == 8 and len(loaded.shards) > 1  # 2 drives x 4 clips (3.9 s of overlap, 1 s clips)
        for shard in loaded.shards:
            assert shard.index == shard.name.replace(".tar", ".index.json") and (out / "train" / m.country / shard.index).is_file()
    assert summary.clips == 16
    assert messages[0] == "CN: drive synth_cn_s3_d0000: 4 clips"
    text = summary.format()
    assert text.startswith("wrote 16 clips from 4 of 4 drives") and "zone cn" in text


def test_shards_respect_the_target_size(ingested):
    summary, _, _ = ingested
    for m in summary.manifests:
        sizes = [s.bytes for s in m.shards]
        assert all(size <= SHARD_BYTES for size, s in zip(sizes, m.shards) if s.samples > 1)
        assert sum(s.samples for s in m.shards) == m.samples


def test_round_trip_poses_match_raw_to_1cm_and_0_1deg(ingested, raw_root):
    """The issue's done-when: ego.npy in the shards against the raw poses, transformed the same way, at frame times."""
    summary, _, _ = ingested
    wrapped = 0
    checked_exact = 0
    for m in summary.manifests:
        for sample in samples(m):
            meta = parse_meta(sample["meta.json"], sample["__key__"])
            ego = decode_npy(sample["ego.npy"], sample["__key__"])
            index, first = int(meta.drive_id[-4:]), meta.tags["first_frame"]
            assert ego.shape == (10, 6) and ego.dtype == np.float64
            assert np.allclose(ego[:, 0], np.arange(10) / FPS) and np.allclose(ego[0, 1:4], 0.0)
            # 1) the synthetic world's true pose at every frame time (poses.csv holds 25 Hz samples, frames are 10 Hz)
            truth = plan_drive(meta.country, seed=SEED, index=index, seconds=SECONDS, rate=FPS)
            pw = truth.pose_world[first : first + 10]  # [10, 3]
            want = ego_array(np.column_stack([pw, np.zeros((10, 2))]), meta.timestamp_us + np.arange(10) * 100_000)
            assert np.hypot(*(ego[:, 1:3] - want[:, 1:3]).T).max() < 0.01
            assert np.degrees(np.abs(ego[:, 3] - want[:, 3])).max() < 0.1
            assert np.abs(ego[:, 4] - truth.ego[first : first + 10, 4]).max() < 0.1  # speed, m/s
            # 2) the raw CSV rows themselves where a frame time is also a pose time (every 200 ms)
            raw = read_poses(raw_root / meta.drive_id / "poses.csv")
            yaws = np.array([v[2] for _, v in sorted(raw.items())])
            wrapped += bool(np.abs(np.diff(yaws)).max() > math.pi)
            x0, y0, yaw0 = raw[meta.timestamp_us]
            for k in range(0, 10, 2):
                x, y, yaw = raw[meta.timestamp_us + k * 100_000]
                c, s = math.cos(yaw0), math.sin(yaw0)
                assert math.hypot(c * (x - x0) + s * (y - y0) - ego[k, 1], -s * (x - x0) + c * (y - y0) - ego[k, 2]) < 0.01
                dyaw = (yaw - yaw0 - ego[k, 3] + math.pi) % (2 * math.pi) - math.pi
                assert abs(math.degrees(dyaw)) < 0.1
                checked_exact += 1
    assert wrapped > 0, "no drive's raw yaw crossed +-pi: the angle-aware resampling went untested"
    assert checked_exact == 16 * 5


def test_clips_decode_and_show_the_raw_frames(ingested, raw_root):
    summary, _, _ = ingested
    sample = samples(summary.manifests[0])[1]  # CN drive 0, frames 10..19
    meta = parse_meta(sample["meta.json"], "x")
    assert meta.tags["vehicle"] == "synth-suv-6cam" and meta.tags["source"] == "raw" and meta.tags["first_frame"] == 10
    assert json.loads(sample["calib.json"]) == json.loads((raw_root / meta.drive_id / "calib.json").read_text())
    for cam in ("CAM_FRONT", "CAM_FRONT_LEFT"):  # re-encoded MP4, and JPEG frames encoded
        with av.open(io.BytesIO(sample[f"{cam}.mp4"])) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
        if cam == "CAM_FRONT_LEFT":
            jpg = raw_root / meta.drive_id / cam / f"{meta.timestamp_us}.jpg"
            with av.open(str(jpg)) as c:
                raw = next(c.decode(video=0)).to_ndarray(format="rgb24")
            assert np.abs(frames[0].astype(int) - raw.astype(int)).mean() < 6  # the same picture, after H.264


def test_written_shards_are_read_by_the_loader_and_verify(ingested):
    summary, out, _ = ingested
    with pytest.raises(ResidencyError, match="zone 'cn' but this job runs at site zone 'global'"):
        verify(f"file://{out}")  # the CN drives: before any shard byte
    assert verify(f"file://{out}", site_zone="cn") == []
    stream = FleetStream(Source.all(summary.manifests), WINDOW, cameras=CAMERAS, batch_size=4, gate=ZoneGate("cn"))
    batches = list(DataLoader(stream, batch_size=4))
    assert sum(len(b["clip_id"]) for b in batches) == len(stream) == 16 * WINDOW.count(10, FPS) == 32
    assert tuple(batches[0]["images"].shape) == (4, 6, 2, 3, 48, 64)
    assert {c for b in batches for c in b["country"]} == {"CN", "US"}


def test_same_input_gives_the_same_bytes_with_any_worker_count(ingested, raw_root, tmp_path):
    _, out, _ = ingested
    again = tmp_path / "fleet"
    write_drives(str(raw_root), str(again), clip_seconds=1.0, fps=FPS, shard_bytes=SHARD_BYTES, workers=2)
    assert shard_digests(again) == shard_digests(out)


def test_skip_bad_lists_bad_drives_and_writes_the_good_ones(raw_root, tmp_path):
    root = tmp_path / "raw"
    clone_drive(raw_root / "synth_us_s3_d0000", root, "a_good")
    clone_drive(raw_root / "synth_us_s3_d0001", root, "d_good")
    gap = clone_drive(raw_root / "synth_us_s3_d0000", root, "b_gap")  # found by the first pass
    lines = (gap / "poses.csv").read_text().splitlines()
    (gap / "poses.csv").write_text("\n".join(lines[:30] + lines[50:]) + "\n")
    broken = clone_drive(raw_root / "synth_us_s3_d0001", root, "c_broken_jpeg")  # found while encoding
    victim = sorted((broken / "CAM_BACK").iterdir())[12]
    victim.write_bytes(b"not a jpeg")
    zone = clone_drive(raw_root / "synth_us_s3_d0000", root, "e_zone")  # disagrees with the other US drives
    info = json.loads((zone / "drive.json").read_text())
    (zone / "drive.json").write_text(json.dumps({**info, "zone": "eu"}))

    out = f"file://{tmp_path}/fleet"
    with pytest.raises(DataError, match=r"^drive b_gap: poses.csv has a 0\.840 s gap in poses"):
        write_drives(str(root), out, clip_seconds=1.0)
    assert not list(objects.list_keys(out))  # found before anything was written
    messages: list[str] = []
    summary = write_drives(str(root), out, clip_seconds=1.0, skip_bad=True, progress=messages.append)
    assert summary.written == ["a_good", "d_good"] and summary.drives == 5
    assert [s.name for s in summary.skipped] == ["b_gap", "e_zone", "c_broken_jpeg"]
    reasons = [s.reason for s in summary.skipped]
    assert reasons[0].startswith("drive b_gap: poses.csv has a 0.840 s gap")
    assert reasons[1].startswith("drive e_zone: ") and "zone 'eu'" in reasons[1]  # refused by the residency policy (CN -> cn, else global)
    assert reasons[2].startswith(f"drive c_broken_jpeg: unreadable frame CAM_BACK/{victim.name}")
    assert all("\n" not in r for r in reasons) and "skipped 3 bad drive(s):" in summary.format()
    assert sum("skipped:" in msg for msg in messages) == 3
    (m,) = summary.manifests
    assert m.samples == 8 and {k.split("-")[0] for k in IndexedShards(m, ZoneGate(m.zone)).keys()} == {"a_good", "d_good"}
    assert verify(out) == []


def test_a_drive_failing_while_encoding_publishes_no_manifest(raw_root, tmp_path):
    root = tmp_path / "raw"
    clone_drive(raw_root / "synth_cn_s3_d0000", root, "a_good")
    broken = clone_drive(raw_root / "synth_cn_s3_d0001", root, "b_broken")
    (broken / "CAM_FRONT_LEFT" / sorted(p.name for p in (broken / "CAM_FRONT_LEFT").iterdir())[30]).write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "fleet"
    with pytest.raises(DataError, match="^drive b_broken: unreadable frame CAM_FRONT_LEFT/"):
        write_drives(str(root), str(out), clip_seconds=1.0, shard_bytes=SHARD_BYTES)
    assert not [p for p in out.rglob("*") if p.is_file()]  # a_good's shards were written, then removed again
    with pytest.raises(DataError, match="none of the 1 drive"):
        write_drives(str(broken), str(out), clip_seconds=1.0, skip_bad=True)


def test_replace_keeps_a_country_whose_drives_all_fail_and_the_countries_not_written(raw_root, tmp_path):
    out = tmp_path / "fleet"
    write_drives(str(raw_root), str(out), clip_seconds=1.0, shard_bytes=SHARD_BYTES)
    write_drives(str(raw_root / "synth_us_s3_d0000"), str(out), clip_seconds=1.0, split="val")
    before = shard_digests(out)
    root = tmp_path / "raw"
    clone_drive(raw_root / "synth_cn_s3_d0000", root, "a_good")
    broken = clone_drive(raw_root / "synth_us_s3_d0001", root, "b_broken")
    (broken / "CAM_BACK" / sorted(p.name for p in (broken / "CAM_BACK").iterdir())[3]).write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="train/CN already holds a dataset"):
        write_drives(str(root), str(out), clip_seconds=1.0)
    summary = write_drives(str(root), str(out), clip_seconds=1.0, skip_bad=True, replace=True)
    assert [m.country for m in summary.manifests] == ["CN"] and [s.name for s in summary.skipped] == ["b_broken"]
    after = shard_digests(out)
    assert {k: v for k, v in after.items() if not k.startswith("train/CN/")} == {k: v for k, v in before.items() if not k.startswith("train/CN/")}
    (m,) = summary.manifests
    assert {k.split("-")[0] for k in IndexedShards(m, ZoneGate(m.zone)).keys()} == {"a_good"}
    assert sorted(k for k in after if k.startswith("train/CN/")) == sorted(
        ["train/CN/manifest.json"] + [f"train/CN/{n}" for s in m.shards for n in (s.name, s.index)]
    )


def test_cli_synth_raw_then_write(tmp_path, capsys):
    raw, out = tmp_path / "raw", f"file://{tmp_path}/fleet"
    assert main(["data", "synth", "--raw", "--out", str(raw), "--countries", "DE", "--clips", "1", "--seconds", "2"]) == 0
    assert (raw / "synth_de_s0_d0000" / "drive.json").is_file()
    capsys.readouterr()
    argv = ["data", "write", "--raw", str(raw), "--out", out, "--clip-seconds", "1", "--gop", "5", "--shard-bytes", "1000000", "--workers", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 clips from 1 of 1 drives" in printed and f"{out}/train/DE" in printed
    assert load_manifest(f"{out}/train/DE", ANY_ZONE, check_zone=False).samples == 2

    info = json.loads((raw / "synth_de_s0_d0000" / "drive.json").read_text())
    (raw / "synth_de_s0_d0000" / "drive.json").write_text(json.dumps({**info, "country": "XX"}))
    assert main(["data", "write", "--raw", str(raw), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fsdtrain: error: drive synth_de_s0_d0000: unknown country 'XX': use an ISO 3166-1 alpha-2 code such as 'CN', 'US' or 'DE'"
    assert main(["data", "write", "--raw", str(raw), "--out", out, "--skip-bad"]) == 2  # nothing left to write
    assert "none of the 1 drive(s)" in capsys.readouterr().err
