"""Video encoding and webdataset shards: plain tars, deterministic, manifest written last."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile

import av
import numpy as np
import pytest

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.manifest import load_manifest
from fsdtrain.format.schema import ClipMeta, decode_npy, encode_npy
from fsdtrain.format.video import encode_video
from fsdtrain.format.writer import ShardSet, ShardWriter, write_shards
from fsdtrain.store import objects
from helpers.fleet import ANY_ZONE

CAMS = ["CAM_FRONT", "CAM_BACK"]
FPS = 10.0
CALIB = {"K": [[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]], "T_cam_to_ego": np.eye(4).tolist(), "size": [64, 48]}


def _frames(n: int = 12, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients, [n, h, w, 3] uint8: compressible like camera frames, not noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6, 3)
    out = [
        np.stack([127 + 100 * np.sin(xx / 9 + i / 3 + phase[c] + c * yy / 17) for c in range(3)], -1) for i in range(n)
    ]
    return np.clip(out, 0, 255).astype(np.uint8)


def _decode(data: bytes) -> tuple[np.ndarray, list[bool]]:
    with av.open(io.BytesIO(data)) as c:
        frames = list(c.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [f.key_frame for f in frames]


def _sample(index: int, frames: int = 6, country: str = "US", zone: str = "global") -> dict[str, bytes]:
    key = f"drive_{index:03d}-000000"
    meta = ClipMeta(clip_id=key, drive_id=f"drive_{index:03d}", country=country, zone=zone, timestamp_us=index,
                    fps=FPS, frames=frames, cameras=CAMS)
    sample = {
        "__key__": key,
        "meta.json": meta.to_json(),
        "calib.json": json.dumps({"index": index, **{c: CALIB for c in CAMS}}).encode(),
        "ego.npy": encode_npy(np.full((frames, 6), float(index))),
    }
    for c in CAMS:
        sample[f"{c}.mp4"] = f"video {c} {index}".encode()  # the writer stores bytes; it never decodes them
    return sample


TOY = ShardSet(dataset="toy", split="train", country="US", zone="global", cameras=CAMS, fps=FPS)


def _write(out: str, n: int, **kw) -> object:
    """``n`` toy clips; keywords name writer limits or fields of the TOY shard set to change."""
    shard_set = dataclasses.replace(TOY, **{k: kw.pop(k) for k in list(kw) if k in TOY.__dataclass_fields__})
    return write_shards(out, (_sample(i) for i in range(n)), shard_set, **{"clips_per_shard": 2, **kw})


def test_encode_decode_round_trip():
    frames = _frames(23)
    data = encode_video(frames, FPS, gop=5)
    assert data[4:8] == b"ftyp"
    decoded, keys = _decode(data)
    assert decoded.shape == frames.shape
    assert [i for i, k in enumerate(keys) if k] == [0, 5, 10, 15, 20]  # fixed GOP, no scene-cut keyframes
    err = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
    assert err.mean() < 4.0 and np.percentile(err, 99) < 25
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == FPS
        assert [round(float(p.pts * stream.time_base) * FPS) for p in c.demux(stream) if p.pts is not None] == list(range(23))


def test_encode_is_deterministic_and_gop_changes_size():
    frames = _frames(20)
    outputs = {encode_video(frames.copy(), FPS, gop=10) for _ in range(5)}
    assert len(outputs) == 1
    assert len(encode_video(frames, FPS, gop=1)) > len(outputs.pop())


def test_encode_rejects_bad_input():
    with pytest.raises(ConfigError, match="even"):
        encode_video(_frames(2, h=47, w=64), FPS)
    with pytest.raises(ConfigError, match="even"):
        encode_video(_frames(2, h=48, w=63), FPS)
    with pytest.raises(ConfigError, match="uint8"):
        encode_video(_frames(2).astype(np.float32), FPS)
    with pytest.raises(ConfigError, match="unknown codec"):
        encode_video(_frames(2), FPS, codec="mjpeg2000")
    with pytest.raises(ConfigError, match="fps"):
        encode_video(_frames(2), 0.0)


def test_shards_are_plain_tars_read_by_webdataset(tmp_path):
    out = f"file://{tmp_path}/toy/train/US"
    manifest = _write(out, 5)
    assert [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s.samples for s in manifest.shards] == [2, 2, 1] and manifest.frames == 6
    shard0 = tmp_path / "toy/train/US/shard-000000.tar"
    with tarfile.open(shard0) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:5]] == [
        "drive_000-000000.meta.json", "drive_000-000000.calib.json", "drive_000-000000.ego.npy",
        "drive_000-000000.CAM_FRONT.mp4", "drive_000-000000.CAM_BACK.mp4",
    ]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644 for m in members)

    import webdataset as wds

    samples = list(wds.WebDataset(str(shard0), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["drive_000-000000", "drive_001-000000"]
    # stock webdataset lower-cases member suffixes by default (group_by_keys(lcase=True))
    assert set(samples[1]) >= {"meta.json", "calib.json", "ego.npy", "cam_front.mp4", "cam_back.mp4"}
    assert samples[1]["cam_back.mp4"] == b"video CAM_BACK 1"
    assert json.loads(samples[1]["meta.json"])["drive_id"] == "drive_001"
    assert decode_npy(samples[1]["ego.npy"], "t")[0, 0] == 1.0


def test_manifest_matches_files_and_is_deterministic(tmp_path):
    a = _write(f"file://{tmp_path}/a/train/US", 3)
    b = _write(str(tmp_path / "b/train/US"), 3)  # a plain path means file://
    loaded = load_manifest(f"file://{tmp_path}/a/train/US", ANY_ZONE, check_zone=False)
    assert loaded.to_json() == a.to_json()
    assert (loaded.dataset, loaded.split, loaded.country, loaded.zone, loaded.cameras, loaded.fps, loaded.frames) == (
        "toy", "train", "US", "global", CAMS, FPS, 6,
    )
    for shard in loaded.shards:
        data = objects.read_bytes(loaded.shard_url(shard))
        assert len(data) == shard.bytes and hashlib.sha256(data).hexdigest() == shard.sha256
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]


def test_manifest_written_last_and_a_failed_write_leaves_nothing(tmp_path):
    folder, seen = tmp_path / "toy/train/US", []

    def samples():
        for i in range(5):
            if i == 3:
                seen.append(sorted(p.name for p in folder.iterdir()))
                raise RuntimeError("renderer crashed")
            yield _sample(i)

    out = f"file://{folder}"
    with pytest.raises(RuntimeError, match="crashed"):
        write_shards(out, samples(), TOY, clips_per_shard=2)
    assert seen == [["shard-000000.index.json", "shard-000000.tar"]]  # the shard and its index first, no manifest yet
    assert list(folder.iterdir()) == []  # what the failed write wrote is gone again
    with pytest.raises(DataError, match="no manifest"):
        load_manifest(out, ANY_ZONE, check_zone=False)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_replace_leaves_the_old_version_as_it_was(tmp_path):
    folder = tmp_path / "toy/train/US"
    _write(str(folder), 2)
    before = _files(folder)
    with pytest.raises(DataError, match="missing members"), ShardWriter(str(folder), TOY, clips_per_shard=1, replace=True) as writer:
        writer.write(_sample(5))
        assert (folder / "shard-000001.tar").is_file()  # a number the old version does not use
        bad = _sample(6)
        del bad["CAM_BACK.mp4"]
        writer.write(bad)
    assert _files(folder) == before
    with pytest.raises(DataError, match="no clips"):
        write_shards(str(folder), iter([]), TOY, clips_per_shard=1, replace=True)
    assert _files(folder) == before


def test_a_dataset_or_an_unfinished_write_is_refused_without_replace(tmp_path):
    folder = tmp_path / "toy/train/US"
    _write(str(folder), 2)
    before = _files(folder)
    with pytest.raises(ConfigError, match="^" + re.escape(f"file://{folder} already holds a dataset (manifest.json); pass --replace")):
        _write(str(folder), 1)
    assert _files(folder) == before
    (folder / "manifest.json").unlink()  # as a writer killed before its manifest leaves it
    with pytest.raises(ConfigError, match="shard files of an unfinished write"):
        _write(str(folder), 1)
    m = _write(str(folder), 1, replace=True)  # strays go too
    assert sorted(_files(folder)) == ["manifest.json", "shard-000001.index.json", "shard-000001.tar"] == sorted(
        ["manifest.json", m.shards[0].name, m.shards[0].index]
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a dataset")
    assert _write(str(other), 1).shards[0].name == "shard-000000.tar"  # other files do not count


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update({"__key__": "bad key!"}), "bad sample key"),
        (lambda s: s.update({"model.pkl": b"x"}), "not part of schema"),
        (lambda s: s.update({"CAM_SIDE.mp4": b"x"}), "not part of schema"),
        (lambda s: s.update({"meta.json": _sample(1, country="CN", zone="cn")["meta.json"]}), "country"),
        (lambda s: s.update({"meta.json": _sample(1, frames=7)["meta.json"]}), "meta.json frames is 7, the manifest says 6"),
        # exactly the manifest's fps, as verify and the loader check it
        (lambda s: s.update({"meta.json": json.dumps({**json.loads(s["meta.json"]), "fps": FPS + 1e-10}).encode()}), "meta.json fps is 10.0000000001, the manifest says 10.0"),
    ],
)
def test_bad_samples_raise_data_error(tmp_path, change, match):
    bad = _sample(1)
    change(bad)
    with pytest.raises(DataError, match=match):
        write_shards(f"file://{tmp_path}/x", iter([_sample(0), bad]), TOY, clips_per_shard=4)


def test_no_samples_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match="no clips"):
        _write(f"file://{tmp_path}/empty", 0)
    with pytest.raises(ConfigError, match="clips_per_shard"):
        _write(f"file://{tmp_path}/x", 1, clips_per_shard=0)
    with pytest.raises(ConfigError, match="zone"):
        _write(f"file://{tmp_path}/x", 1, zone="Not A Zone")
    with pytest.raises(ConfigError, match="zone 'cn' is not the residency policy's zone 'global' for country US"):
        _write(f"file://{tmp_path}/x", 1, zone="cn")


def _tarfile_bytes(samples: list[dict[str, bytes]]) -> bytes:
    """The same clips written by the standard library's tarfile, the way the writer used to."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for s in samples:
            for member in ["meta.json", "calib.json", "ego.npy"] + [f"{c}.mp4" for c in CAMS]:
                info = tarfile.TarInfo(f"{s['__key__']}.{member}")
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(s[member]), 0, 0o644, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(s[member]))
    return buf.getvalue()


def test_shards_are_byte_identical_to_tarfile_output(tmp_path):
    manifest = _write(str(tmp_path / "x"), 3)
    assert (tmp_path / "x/shard-000000.tar").read_bytes() == _tarfile_bytes([_sample(0), _sample(1)])
    assert manifest.shards[1].bytes == len(_tarfile_bytes([_sample(2)]))


@pytest.mark.parametrize(
    ("limits", "per_shard"),
    [
        (dict(clips_per_shard=None, shard_bytes=20480), [3, 3, 1]),  # 5 KiB of records per clip; a tar ends in 1 KiB, padded to 10 KiB
        (dict(clips_per_shard=2, shard_bytes=20480), [2, 2, 2, 1]),  # whichever limit comes first
        (dict(clips_per_shard=None, shard_bytes=5000), [1] * 7),  # a clip bigger than the target gets a shard of its own
        (dict(clips_per_shard=None, shard_bytes=10 * 2**20), [7]),
    ],
)
def test_shard_bytes_starts_a_new_shard_before_the_target_is_exceeded(tmp_path, limits, per_shard):
    manifest = _write(f"file://{tmp_path}/toy/train/US", 7, **limits)
    assert [s.samples for s in manifest.shards] == per_shard
    for s in manifest.shards:
        data = (tmp_path / "toy/train/US" / s.name).read_bytes()
        assert len(data) == s.bytes and (s.samples == 1 or s.bytes <= limits["shard_bytes"])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert len(tar.getmembers()) == 5 * s.samples


def test_shard_limits_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="give clips_per_shard or shard_bytes"):
        _write(str(tmp_path / "x"), 1, clips_per_shard=None)
    with pytest.raises(ConfigError, match="shard_bytes=0 must be a positive number of bytes"):
        _write(str(tmp_path / "x"), 1, shard_bytes=0)


def test_every_shard_has_an_index_and_rewrites_remove_stale_shards(tmp_path):
    out = tmp_path / "toy/train/US"
    first = _write(str(out), 5, clips_per_shard=1)
    assert len(first.shards) == 5 and all(s.index and (out / s.index).is_file() and s.index_sha256 for s in first.shards)
    index = json.loads((out / "shard-000002.index.json").read_bytes())
    assert index["shard"] == "shard-000002.tar" and index["sha256"] == first.shards[2].sha256
    assert [s["key"] for s in index["samples"]] == ["drive_002-000000"]
    (out / "notes.txt").write_text("kept: not a shard")
    second = _write(str(out), 2, clips_per_shard=1, replace=True)
    assert [s.name for s in second.shards] == ["shard-000005.tar", "shard-000006.tar"]  # after the old version's numbers
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "notes.txt", "shard-000005.index.json", "shard-000005.tar", "shard-000006.index.json", "shard-000006.tar",
    ]  # fmt: skip
    assert load_manifest(str(out), ANY_ZONE, check_zone=False).to_json() == second.to_json()
    third = _write(str(out), 3, clips_per_shard=1, replace=True)
    assert [s.name for s in third.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]  # the lowest free numbers
