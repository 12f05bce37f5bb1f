"""Per-shard indexes: one clip or one member read with a range request, on a real S3 store and file://."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from fsdtrain.errors import DataError
from fsdtrain.format.index import INDEX_SCHEMA, IndexedShards, index_name, load_index, parse_index
from fsdtrain.format.manifest import MANIFEST_NAME, load_manifest, save_manifest
from fsdtrain.format.schema import ClipMeta, encode_npy
from fsdtrain.format.writer import ShardSet, write_shards
from fsdtrain.residency import ResidencyError
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate
from helpers.fleet import ANY_ZONE

CAMS = ["CAM_FRONT", "CAM_BACK"]


CALIB = {"K": [[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]], "T_cam_to_ego": np.eye(4).tolist(), "size": [64, 48]}


def _sample(i: int, zone: str = "cn") -> dict[str, bytes]:
    key = f"drive_{i:03d}-000000"
    meta = ClipMeta(clip_id=key, drive_id=f"drive_{i:03d}", country="CN", zone=zone, timestamp_us=i, fps=10.0, frames=4, cameras=CAMS)
    rng = np.random.default_rng(i)
    calib = json.dumps({c: CALIB for c in CAMS}).encode()
    sample = {"__key__": key, "meta.json": meta.to_json(), "calib.json": calib, "ego.npy": encode_npy(np.full((4, 6), float(i)))}
    for c in CAMS:
        sample[f"{c}.mp4"] = rng.integers(0, 256, 1000 + 777 * i, dtype=np.uint8).tobytes()  # sizes not multiples of 512
    return sample


def _write(out: str, n: int = 5, zone: str = "cn", **kw):
    shard_set = ShardSet(dataset="toy", split="train", country="CN", zone=zone, cameras=CAMS, fps=10.0)
    return write_shards(out, (_sample(i, zone) for i in range(n)), shard_set, clips_per_shard=2, **kw)


def _tar_members(data: bytes) -> dict[str, tuple[int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.offset_data, tar.extractfile(m).read()) for m in tar.getmembers()}


def test_read_member_and_sample_by_range_on_s3(s3_bucket):
    out = f"{s3_bucket}/toy/train/CN"
    _write(out)
    m = load_manifest(out, ANY_ZONE, check_zone=False)
    assert [s.index for s in m.shards] == ["shard-000000.index.json", "shard-000001.index.json", "shard-000002.index.json"]
    for s in m.shards:
        assert hashlib.sha256(objects.read_bytes(objects.join_url(out, s.index))).hexdigest() == s.index_sha256
    reader = IndexedShards(m, ZoneGate(m.zone))
    assert reader.keys() == [f"drive_{i:03d}-000000" for i in range(5)]
    for i in range(5):
        want = _sample(i)
        assert reader.read_member(want["__key__"], "CAM_BACK.mp4") == want["CAM_BACK.mp4"]
        assert reader.read_sample(want["__key__"]) == want
    # the offsets are tar's own: the data of each member, as tarfile finds it
    shard = m.shards[1]
    members = _tar_members(objects.read_bytes(m.shard_url(shard)))
    for span in load_index(m, shard, ZoneGate(m.zone)).samples:
        for name, ms in span.members.items():
            offset, data = members[f"{span.key}.{name}"]
            assert (ms.offset, ms.size, ms.sha256) == (offset, len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(DataError, match="no sample 'nope'"):
        reader.read_sample("nope")
    with pytest.raises(DataError, match=r"no member 'CAM_SIDE.mp4'; it has \['CAM_BACK.mp4'"):
        reader.read_member("drive_000-000000", "CAM_SIDE.mp4")
    _write(out, n=2, replace=True)  # a smaller replacement (under new shard numbers) leaves no stale shard or index behind
    assert [k.rsplit("/", 1)[1] for k in objects.list_keys(out)] == ["manifest.json", "shard-000003.index.json", "shard-000003.tar"]


def test_changed_bytes_are_caught(tmp_path):
    out = f"file://{tmp_path}/toy/train/CN"
    _write(out)
    m = load_manifest(out, ANY_ZONE, check_zone=False)
    reader = IndexedShards(m, ZoneGate(m.zone))
    span = load_index(m, m.shards[0], ZoneGate(m.zone)).samples[1]
    target = span.members["CAM_FRONT.mp4"].offset + 10
    path = tmp_path / "toy/train/CN/shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[target] ^= 0xFF
    path.write_bytes(bytes(data))
    assert reader.read_member("drive_000-000000", "CAM_FRONT.mp4") == _sample(0)["CAM_FRONT.mp4"]  # other clips unaffected
    with pytest.raises(DataError, match=r"shard-000000.tar:drive_001-000000.CAM_FRONT.mp4: bytes at \[\d+, \d+\) do not match the index"):
        reader.read_member("drive_001-000000", "CAM_FRONT.mp4")
    with pytest.raises(DataError, match="do not match the index"):
        reader.read_sample("drive_001-000000")

    index_path = tmp_path / "toy/train/CN/shard-000001.index.json"
    index_path.write_bytes(index_path.read_bytes().replace(b'"offset":', b'"offset": ', 1))
    with pytest.raises(DataError, match="shard-000001.index.json: sha256 does not match the manifest"):
        IndexedShards(m, ZoneGate(m.zone)).read_sample("drive_002-000000")


def test_residency_checked_before_any_byte(tmp_path):
    out = f"file://{tmp_path}/toy/train/CN"
    _write(out, n=2, zone="cn")
    m = load_manifest(out, ANY_ZONE, check_zone=False)
    with pytest.raises(ResidencyError, match="zone 'cn' but this job runs at site zone 'global'"):
        IndexedShards(m, ZoneGate("global")).read_member("drive_000-000000", "meta.json")
    assert IndexedShards(m, ZoneGate("cn")).read_member("drive_000-000000", "meta.json") == _sample(0, "cn")["meta.json"]


def test_manifests_without_index_still_load(tmp_path):
    out = f"file://{tmp_path}/toy/train/CN"
    _write(out, n=2)
    raw = json.loads(objects.read_bytes(objects.join_url(out, MANIFEST_NAME)))
    for s in raw["shards"]:
        del s["index"], s["index_sha256"]
    objects.write_bytes(objects.join_url(out, MANIFEST_NAME), json.dumps(raw).encode())
    old = load_manifest(out, ANY_ZONE, check_zone=False)
    assert old.shards[0].index is None and old.samples == 2
    with pytest.raises(DataError, match="lists no index for this shard"):
        IndexedShards(old, ZoneGate(old.zone)).keys()
    old.shards[0].index = "../../etc/passwd"
    save_manifest(out, old)
    with pytest.raises(DataError, match="index name '../../etc/passwd' of shard-000000.tar is not shard-NNNNNN.index.json"):
        load_manifest(out, ANY_ZONE, check_zone=False)


def test_index_format_checks():
    assert index_name("shard-000042.tar") == "shard-000042.index.json"
    with pytest.raises(DataError, match="not shard-NNNNNN.tar"):
        index_name("x.tar")
    good = {"schema": INDEX_SCHEMA, "shard": "shard-000000.tar", "bytes": 10240, "sha256": "0" * 64,
            "samples": [{"key": "k-000000", "offset": 0, "size": 1024, "members": {"meta.json": {"offset": 512, "size": 3, "sha256": "1" * 64}}}]}  # fmt: skip
    assert parse_index(json.dumps(good).encode(), "w").samples[0].members["meta.json"].end == 515
    with pytest.raises(DataError, match="w: not a shard index .*expected 'fsdtrain.shard-index/1'"):
        parse_index(json.dumps({**good, "schema": "other"}).encode(), "w")
    good["samples"][0]["members"]["meta.json"]["offset"] = 2000
    with pytest.raises(DataError, match="member k-000000.meta.json lies outside its sample's span"):
        parse_index(json.dumps(good).encode(), "w")
    good["samples"][0]["size"] = 20000
    with pytest.raises(DataError, match="outside the 10240-byte shard"):
        parse_index(json.dumps(good).encode(), "w")
