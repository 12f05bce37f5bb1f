"""Tests for fsdtrain.format.verify: ``inspect`` tables and ``verify`` naming every kind of damage,
on file:// and on s3:// (a real SeaweedFS)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fsdtrain.errors import DataError
from fsdtrain.format import schema
from fsdtrain.format.manifest import MANIFEST_NAME, load_manifest, save_manifest
from fsdtrain.format.verify import find_manifests, format_inspect, inspect, verify, verify_manifest
from fsdtrain.store import objects
from helpers.fleet import ANY_ZONE

Members = list[tuple[str, bytes]]


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable URL prefix on each backend."""
    if request.param == "file":
        return f"file://{tmp_path}/root"
    return request.getfixturevalue("s3_bucket") + "/root"


def copy_dir(src: str, dest: str) -> str:
    """Copies every object of the shard directory ``src`` to ``dest`` (any backends); returns ``dest``."""
    prefix = src.rstrip("/") + "/"
    for key in objects.list_keys(src):
        objects.write_bytes(objects.join_url(dest, key[len(prefix) :]), objects.read_bytes(key))
    return dest


@pytest.fixture
def us_train(tiny_fleet: dict[str, dict[str, str]], root: str) -> str:
    """A private copy of the tiny US train split (2 shards of 1 clip each) on the backend under test."""
    return copy_dir(tiny_fleet["US"]["train"], objects.join_url(root, "tiny", "train", "US"))


def tar_members(data: bytes) -> Members:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]


def build_tar(members: Members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def rewrite_shard(shard_dir: str, name: str, edit: Callable[[Members], Members]) -> str:
    """Replaces shard ``name`` by ``edit(its members)``, updates the manifest's size and sha256 and
    drops the shard's index (as in a manifest from before indexes), so the only problems left are
    those inside the tar. Returns the sample key of its first member."""
    url = objects.join_url(shard_dir, name)
    members = tar_members(objects.read_bytes(url))
    data = build_tar(edit(members))
    objects.write_bytes(url, data)
    m = load_manifest(shard_dir, ANY_ZONE, check_zone=False)
    for shard in m.shards:
        if shard.name == name:
            shard.bytes, shard.sha256 = len(data), hashlib.sha256(data).hexdigest()
            if shard.index:
                objects.delete(objects.join_url(shard_dir, shard.index))
            shard.index = shard.index_sha256 = None
    save_manifest(shard_dir, m)
    return members[0][0].split(".", 1)[0]


NO_INDEX = "the manifest lists no index for this shard"


def first_key(shard_dir: str, name: str = "shard-000000.tar") -> str:
    return tar_members(objects.read_bytes(objects.join_url(shard_dir, name)))[0][0].split(".", 1)[0]


def member_offset(data: bytes, suffix: str) -> tuple[int, int]:
    """(offset, size) of the first member whose name ends with ``suffix``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if info.name.endswith(suffix):
                return info.offset_data, info.size
    raise AssertionError(f"no member *{suffix}")


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_finds_every_manifest_below_a_root(tiny_fleet):
    root = tiny_fleet["CN"]["train"].rsplit("/", 2)[0]  # .../tiny
    rows = inspect(root)
    assert {(r["split"], r["country"], r["zone"]) for r in rows} == {
        (s, c, "cn" if c == "CN" else "global") for s in ("train", "val") for c in ("US", "DE", "CN")
    }
    for r in rows:
        assert r["clips"] == (2 if r["split"] == "train" else 1)
        assert r["hours"] == pytest.approx(r["clips"] * 5.0 / 3600)  # 5 s clips
        assert r["bytes"] > 0 and r["cameras"] == 7 and r["fps"] == 10.0  # the tiny fleet's rig: surround6_narrow
        assert r["camera_names"] == [*schema.DEFAULT_CAMERAS, "CAM_FRONT_NARROW"]
    table = format_inspect(rows)
    lines = table.splitlines()
    for by, value in (("zone", "cn"), ("zone", "global"), ("country", "CN"), ("split", "val")):
        assert any(line.startswith(f"total {by}") and f" {value} " in line for line in lines), (by, value)
    cn_total = next(line for line in lines if line.startswith("total zone") and " cn " in line)
    assert cn_total.split()[3] == "3"  # 2 train + 1 val CN clips
    assert any(line.startswith("cameras (7): CAM_FRONT,") for line in lines)


# --- verify: intact --------------------------------------------------------------------------


def test_verify_intact_dataset_on_both_backends(us_train: str) -> None:
    checked: list[str] = []
    assert verify(us_train, progress=checked.append) == []
    assert len(checked) == 2 and all("0 problem(s)" in line for line in checked)
    assert verify(us_train, fast=True) == []
    # From the dataset root too, and as a plain path.
    assert verify(us_train.rsplit("/", 2)[0]) == []
    if us_train.startswith("file://"):
        assert verify(us_train.removeprefix("file://")) == []


# --- verify: each kind of damage, named -------------------------------------------------------


def test_flipped_byte_names_shard_and_sample(us_train: str) -> None:
    url = objects.join_url(us_train, "shard-000000.tar")
    key = first_key(us_train)
    data = bytearray(objects.read_bytes(url))
    offset, size = member_offset(bytes(data), ".meta.json")
    data[offset + size // 2] ^= 0xFF
    objects.write_bytes(url, bytes(data))
    problems = verify(us_train)
    assert problems == [
        f"{url}: sha256 does not match the manifest",
        next(p for p in problems if p.startswith(f"{url}:{key}: meta.json is not valid JSON")),
        f"{url}:{key}: corrupt bytes in meta.json (sha256 differs from the index)",
    ]


def test_flipped_byte_in_video_is_named_through_the_index(us_train: str) -> None:
    # A flipped bit inside H.264 data may still decode; the index's per-member sha256 names it.
    url = objects.join_url(us_train, "shard-000001.tar")
    key = first_key(us_train, "shard-000001.tar")
    data = bytearray(objects.read_bytes(url))
    offset, size = member_offset(bytes(data), ".CAM_BACK.mp4")
    data[offset + size // 2] ^= 0x01
    objects.write_bytes(url, bytes(data))
    problems = verify(us_train, fast=True)
    assert problems == [
        f"{url}: sha256 does not match the manifest",
        f"{url}:{key}: corrupt bytes in CAM_BACK.mp4 (sha256 differs from the index)",
    ]


def test_truncated_tar_inside_a_member_names_the_sample(us_train: str) -> None:
    url = objects.join_url(us_train, "shard-000000.tar")
    key = first_key(us_train)
    data = objects.read_bytes(url)
    offset, size = member_offset(data, ".CAM_FRONT_RIGHT.mp4")
    objects.write_bytes(url, data[: offset + size // 2])
    problems = verify(us_train)
    assert f"{url}: {offset + size // 2} bytes, the manifest says {len(data)}" in problems
    assert any(p.startswith(f"{url}:{key}: tar unreadable in sample {key}") for p in problems), problems
    assert f"{url}: 1 samples, the manifest says 1" not in problems


def test_truncated_tar_between_members_names_the_sample(us_train: str) -> None:
    # Cut right after a member: tarfile sees a complete archive of fewer members.
    url = objects.join_url(us_train, "shard-000000.tar")
    key = first_key(us_train)
    data = objects.read_bytes(url)
    offset, size = member_offset(data, ".ego.npy")
    cut = offset + -(-size // 512) * 512  # end of the member's last data block
    objects.write_bytes(url, data[:cut])
    problems = verify(us_train)
    assert any(p.startswith(f"{url}:{key}: member(s) ") and "missing" in p for p in problems), problems
    assert f"{url}: truncated: the tar does not end with its end-of-archive blocks" in problems


def test_missing_and_extra_objects_are_named(us_train: str) -> None:
    objects.delete(objects.join_url(us_train, "shard-000001.tar"))
    objects.write_bytes(objects.join_url(us_train, "shard-000007.tar"), b"stray")
    objects.write_bytes(objects.join_url(us_train, "notes", "readme.txt"), b"stray")
    problems = verify(us_train)
    assert sorted(problems) == sorted([
        f"{objects.join_url(us_train, 'shard-000001.tar')}: missing from the store",
        f"{objects.join_url(us_train, 'shard-000007.tar')}: in the store but not in the manifest",
        f"{objects.join_url(us_train, 'notes/readme.txt')}: in the store but not in the manifest",
    ])  # fmt: skip


def _set_meta(members: Members, **changes: object) -> Members:
    out = []
    for name, data in members:
        if name.endswith(".meta.json"):
            data = json.dumps({**json.loads(data), **changes}).encode()
        out.append((name, data))
    return out


WRONG_SCHEMA: dict[str, tuple[Callable[[Members], Members], str]] = {
    "schema version": (lambda ms: _set_meta(ms, schema="fsdtrain.clip/0"), "schema is 'fsdtrain.clip/0'"),
    "zone": (lambda ms: _set_meta(ms, zone="cn"), "meta.json zone 'cn' is not the residency policy's zone 'global' for country US"),
    "frames": (lambda ms: _set_meta(ms, frames=7), "meta.json frames is 7, the manifest says 50"),
    "extra member": (lambda ms: ms + [(ms[0][0].split(".")[0] + ".pose.pkl", b"x")], "member 'pose.pkl' is not part of schema"),
    "missing camera": (lambda ms: [m for m in ms if not m[0].endswith(".CAM_BACK.mp4")], "CAM_BACK.mp4 missing"),
    "ego dtype": (
        lambda ms: [(n, schema.encode_npy(np.zeros((50, 6), np.float32)) if n.endswith(".ego.npy") else d) for n, d in ms],
        "ego.npy is float32[50, 6], expected float64[50, 6]",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_SCHEMA))
def test_wrong_schema_names_the_sample(us_train: str, case: str) -> None:
    edit, expected = WRONG_SCHEMA[case]
    key = rewrite_shard(us_train, "shard-000001.tar", edit)
    problems = [p for p in verify(us_train, fast=True) if NO_INDEX not in p]  # rewrite_shard drops the index
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{objects.join_url(us_train, 'shard-000001.tar')}:{key}")
    assert expected in problems[0]


def test_video_that_does_not_decode_is_named_unless_fast(us_train: str) -> None:
    key = rewrite_shard(
        us_train, "shard-000000.tar", lambda ms: [(n, b"\x00" * 64 if n.endswith(".CAM_FRONT.mp4") else d) for n, d in ms]
    )
    problems = [p for p in verify(us_train) if NO_INDEX not in p]  # rewrite_shard drops the index
    assert len(problems) == 1
    assert problems[0].startswith(f"{objects.join_url(us_train, 'shard-000000.tar')}:{key}/CAM_FRONT.mp4: ")
    assert [p for p in verify(us_train, fast=True) if NO_INDEX not in p] == []


def test_sample_split_across_the_tar_is_named(us_train: str) -> None:
    def split(ms: Members) -> Members:
        return ms[:2] + [("other_sample-000000.note", b"")] + ms[2:]

    key = rewrite_shard(us_train, "shard-000000.tar", split)
    problems = verify(us_train, fast=True)
    surl = objects.join_url(us_train, "shard-000000.tar")
    assert any(p.startswith(f"{surl}:{key}: sample key appears more than once") for p in problems), problems


def test_broken_manifest_is_a_problem_not_a_crash(us_train: str) -> None:
    objects.write_bytes(objects.join_url(us_train, MANIFEST_NAME), b"{not json")
    problems = verify(us_train.rsplit("/", 2)[0])
    assert len(problems) == 1 and "not valid JSON" in problems[0]


# --- per-shard index files (manifest fields ``index`` / ``index_sha256``) ---------------------


def test_index_files_are_expected_only_when_listed(us_train: str) -> None:
    m = load_manifest(us_train, ANY_ZONE, check_zone=False)
    assert all(s.index == s.name.replace(".tar", ".index.json") for s in m.shards)
    assert verify_manifest(m, ANY_ZONE, fast=True) == []
    # A manifest from before indexes lists none: the index files are then stray objects.
    for shard in m.shards:
        shard.index = shard.index_sha256 = None
    save_manifest(us_train, m)
    problems = verify(us_train, fast=True)
    assert problems[:2] == [
        f"{objects.join_url(us_train, f'shard-00000{i}.index.json')}: in the store but not in the manifest" for i in (0, 1)
    ]
    # and the shards are reported: the loader reads clips only through their index
    assert [p.split(": ", 1)[0] for p in problems[2:]] == [objects.join_url(us_train, f"shard-00000{i}.tar") for i in (0, 1)]
    assert all(NO_INDEX in p for p in problems[2:])


def test_index_with_wrong_checksum_or_missing_is_named(us_train: str) -> None:
    first = objects.join_url(us_train, "shard-000000.index.json")
    objects.write_bytes(first, objects.read_bytes(first) + b" ")
    objects.delete(objects.join_url(us_train, "shard-000001.index.json"))
    assert verify(us_train, fast=True) == [
        f"{first}: sha256 does not match the manifest",
        f"{objects.join_url(us_train, 'shard-000001.index.json')}: index missing from the store",
    ]


def test_index_of_another_shard_is_named(us_train: str) -> None:
    m = load_manifest(us_train, ANY_ZONE, check_zone=False)
    one, two = m.shards
    one.index, one.index_sha256 = two.index, two.index_sha256  # shard 0 now points at shard 1's index
    save_manifest(us_train, m)
    assert verify(us_train, fast=True) == [  # refused as the manifest is read
        f"{objects.join_url(us_train, MANIFEST_NAME)}: index name 'shard-000001.index.json' of shard-000000.tar is not shard-NNNNNN.index.json of that shard"
    ]
    one.index, one.index_sha256 = "shard-000000.index.json", two.index_sha256  # its own name, shard 1's bytes
    save_manifest(us_train, m)
    objects.write_bytes(objects.join_url(us_train, one.index), objects.read_bytes(objects.join_url(us_train, two.index)))
    problems = verify(us_train, fast=True)
    assert f"{objects.join_url(us_train, one.index)}: describes shard-000001.tar of {two.bytes} bytes, not the manifest's shard-000000.tar of {one.bytes} bytes" in problems


# --- no manifest -----------------------------------------------------------------------------


def test_no_manifest_is_one_line_error(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no manifest"):
        find_manifests(f"{s3_bucket}/elsewhere", ANY_ZONE)
    with pytest.raises(DataError, match="no manifest") as info:
        verify(str(tmp_path))
    assert "\n" not in str(info.value)


def _edit_ego(members: Members, edit: Callable[[np.ndarray], np.ndarray]) -> Members:
    return [(n, schema.encode_npy(edit(schema.decode_npy(d, n).copy())) if n.endswith(".ego.npy") else d) for n, d in members]


def _scaled(column: int, factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def edit(ego: np.ndarray) -> np.ndarray:
        ego[:, column] *= factor
        return ego

    return edit


IMPLAUSIBLE: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "speed in km/h": (_scaled(4, 3.6), "likely cause: speed in km/h? ego.npy speed is m/s"),
    "yaw_rate in degrees/s": (_scaled(5, 180 / np.pi), "likely cause: yaw_rate in degrees/s? ego.npy yaw_rate is rad/s"),
    "y axis mirrored (y right)": (lambda e: np.column_stack([e[:, :2], -e[:, 2], e[:, 3:]]), "off the direction of motion"),
}


@pytest.mark.parametrize("case", sorted(IMPLAUSIBLE))
def test_implausible_motion_names_the_clip_time_and_cause(us_train: str, case: str) -> None:
    """The motion checks of data write (fsdtrain/format/motion.py) on ego.npy of clips written by any writer."""
    edit, expected = IMPLAUSIBLE[case]
    key = rewrite_shard(us_train, "shard-000001.tar", lambda ms: _edit_ego(ms, edit))
    problems = [p for p in verify(us_train, fast=True) if NO_INDEX not in p]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{objects.join_url(us_train, 'shard-000001.tar')}:{key}: ego.npy implausible motion at +")
    assert expected in problems[0] and "\n" not in problems[0]
    accepted = rewrite_shard(us_train, "shard-000001.tar", lambda ms: _set_meta(ms, tags={"plausibility": "accepted"}))
    assert accepted == key and [p for p in verify(us_train, fast=True) if NO_INDEX not in p] == []  # data write --accept-implausible
