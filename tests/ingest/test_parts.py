"""Ingest at fleet scale (fsdtrain/ingest/parts.py, source.py): raw drives read from the local store
through the zone gate, written in parts by parallel processes, published once as one run would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.ingest.drives import write_drives
from fsdtrain.ingest.parts import PartsMissing, PartSpec, group_of
from fsdtrain.residency import ResidencyError
from fsdtrain.store import objects
from fsdtrain.store.gate import AuditLog
from fsdtrain.synth.raw_drives import synth_raw_drives

REPO = Path(__file__).resolve().parents[2]
RAW = dict(seed=5, seconds=3.0, width=64, height=48, fps=10.0, pose_hz=25.0)
FLAGS = ["--clip-seconds", "1", "--fps", "10", "--shard-bytes", "150000"]
KW = dict(clip_seconds=1.0, fps=10.0, shard_bytes=150_000)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    """2 CN + 2 US drives of 3 s: 3 clips of 1 s each."""
    root = tmp_path_factory.mktemp("parts") / "raw"
    synth_raw_drives(root, ["CN", "US"], 2, **RAW)
    return root


def upload(root: Path, url: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            objects.write_bytes(objects.join_url(url, str(path.relative_to(root))), path.read_bytes())


def dataset(url: str) -> dict[str, bytes]:
    """Every object of a dataset but the run folder: relative name -> bytes."""
    base = objects.join_url(url)
    return {u[len(base) + 1 :]: objects.read_bytes(u) for u in objects.list_keys(url) if "/.ingest/" not in u}


def fsdtrain(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fsdtrain", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("drives", "group"), [(1, 1), (4, 1), (7, 2), (10, 3), (33, 4)])
def test_parts_take_whole_groups_and_every_drive_once(drives, group):
    for n in range(1, 9):
        taken = [i for p in range(1, n + 1) for i in PartSpec(p, n).drives(drives, group)]
        assert taken == list(range(drives))  # each drive once, in order
        for p in range(1, n + 1):
            mine = PartSpec(p, n).drives(drives, group)
            if len(mine):  # a part starts and ends on a group boundary
                assert mine.start % group == 0 and (mine.stop % group == 0 or mine.stop == drives)
                assert group_of(mine.start, group) != group_of(mine.start - 1, group) or mine.start == 0


def test_bad_part_flags_are_one_line():
    for text, want in (("3/2", "the part must be 1..2"), ("0/2", "the part must be 1..2"), ("two", "must be I/N")):
        with pytest.raises(ConfigError, match=want):
            PartSpec.parse(text)


def test_two_parallel_parts_from_s3_give_the_dataset_of_one_run(raw_root, s3_bucket, s3_env, tmp_path):
    """The issue's done-when: raw drives in the local store, written as 2 parts by 2 processes at once,
    give the manifests and shard bytes of one run; every raw object was read through the gate."""
    upload(raw_root, f"{s3_bucket}/raw")
    env = {**os.environ, **s3_env.env(), "FSDTRAIN_SITE_ZONE": "cn"}  # a cn site may read CN and global data
    audit = tmp_path / "audit.jsonl"
    one = write_drives(f"{s3_bucket}/raw", f"{s3_bucket}/one/fleet", site_zone="cn", audit_log=str(audit), **KW)
    assert one.clips == 12 and all(len(m.shards) >= 2 for m in one.manifests)  # a shard never holds two drives
    procs = [fsdtrain("data", "write", "--raw", f"{s3_bucket}/raw", "--out", f"{s3_bucket}/two/fleet", *FLAGS, "--part", f"{i}/2", env=env) for i in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, _, err in results:
        assert code == 0, err
    outs = "\n".join(out for _, out, _ in results)
    assert "published the run" in outs, outs
    single, parts = dataset(f"{s3_bucket}/one/fleet"), dataset(f"{s3_bucket}/two/fleet")
    assert sorted(single) == sorted(parts) and "train/CN/manifest.json" in single
    assert all(single[k] == parts[k] for k in single)  # same manifest content, indexes and shard bytes
    for name, data in single.items():  # --group-drives 1: a shard holds the clips of one drive
        if name.endswith(".index.json"):
            assert len({sample["key"].rsplit("-", 1)[0] for sample in json.loads(data)["samples"]}) == 1, name
    assert not [u for u in objects.list_keys(f"{s3_bucket}/two/fleet/.ingest") if u.endswith((".tar", ".index.json"))]  # staging emptied
    records = AuditLog.read(audit)
    assert {r["zone"] for r in records} == {"cn", "global"} and all(r["url"].startswith(f"{s3_bucket}/raw/") for r in records)
    assert not any(r["url"].endswith("drive.json") for r in records)  # read before its zone is known: bucket check only
    # a finished part run again does nothing
    assert main(["data", "write", "--raw", f"{s3_bucket}/raw", "--out", f"{s3_bucket}/two/fleet", *FLAGS, "--part", "1/2", "--site.zone", "cn"]) == 0
    assert dataset(f"{s3_bucket}/two/fleet") == parts


def test_missing_part_publishes_nothing_and_names_it(raw_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    out = f"file://{tmp_path}/fleet"
    args = ["data", "write", "--raw", str(raw_root), "--out", out, *FLAGS]
    assert main([*args, "--part", "2/3"]) == 0
    assert "waiting for part(s) 1/3, 3/3 of 3 not complete" in capsys.readouterr().out
    assert main([*args, "--publish", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsdtrain: error: not published: part(s) 1/3, 3/3 of 3 not complete"), err
    assert not list(tmp_path.rglob("manifest.json"))


def test_a_failed_part_leaves_the_old_dataset_and_can_be_rerun(raw_root, tmp_path, monkeypatch):
    """Replacing a dataset in parts: until the last part is done the old version stays byte for byte;
    a failed part is rerun with the same flags, and the result is what one run would have written."""
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    raw = tmp_path / "raw"
    synth_raw_drives(raw, ["CN", "US"], 2, **{**RAW, "seed": 6})
    out = f"file://{tmp_path}/fleet"
    write_drives(str(raw_root), out, **KW)  # the old version, from other drives
    old = dataset(out)
    poses = sorted(raw.glob("*/poses.csv"))[-1]  # a drive of part 2
    good = poses.read_bytes()
    poses.write_bytes(good.replace(b",", b";", 3))
    assert write_drives(str(raw), out, part=PartSpec(1, 2), replace=True, **KW).waiting
    with pytest.raises(DataError, match="poses.csv"):
        write_drives(str(raw), out, part=PartSpec(2, 2), replace=True, **KW)
    assert dataset(out) == old
    with pytest.raises(PartsMissing, match="part.s. 2/2 of 2"):
        write_drives(str(raw), out, publish=2, replace=True, **KW)
    assert dataset(out) == old
    poses.write_bytes(good)
    summary = write_drives(str(raw), out, part=PartSpec(2, 2), replace=True, **KW)
    assert summary.completed and summary.clips == 12 and summary.written == sorted(p.name for p in raw.iterdir())
    replaced = f"file://{tmp_path}/one-run/fleet"  # the same replacement written in one run
    write_drives(str(raw_root), replaced, **KW)
    write_drives(str(raw), replaced, replace=True, **KW)
    assert dataset(out) == dataset(replaced)
    manifest = json.loads(dataset(out)["train/CN/manifest.json"])
    assert [s["name"] for s in manifest["shards"]] == ["shard-000002.tar", "shard-000003.tar"]  # numbers the old version did not use
    assert not list((tmp_path / "fleet" / ".ingest").rglob("*.tar"))  # staged shards moved, none left behind


def test_s3_drives_are_read_through_the_zone_gate(raw_root, s3_env):
    """A bucket tied to zone cn cannot be listed from a global site (refused before any request), and a
    drive whose drive.json gives its country another zone is refused before its other objects are read."""
    cn_raw = "s3://fleet-cn/raw-drives"
    objects.write_bytes(f"{cn_raw}/synth_cn_s5_d0000/drive.json", (raw_root / "synth_cn_s5_d0000" / "drive.json").read_bytes())
    with pytest.raises(ResidencyError, match="site zone 'global'"):
        write_drives(cn_raw, "file:///nonexistent/fleet", site_zone="global", **KW)
    us = sorted(raw_root.glob("synth_us*"))[0]
    bad = "s3://fleet-global/relabelled"
    info = json.loads((us / "drive.json").read_text())
    upload(us, f"{bad}/{us.name}")
    objects.write_bytes(f"{bad}/{us.name}/drive.json", json.dumps({**info, "zone": "cn"}).encode())
    with pytest.raises(DataError, match="zone 'cn' is not the residency policy's zone 'global' for country US"):
        write_drives(bad, "file:///nonexistent/fleet", site_zone="cn", **KW)


def test_a_second_publisher_finds_the_shards_moved_and_publishes_the_same_bytes(raw_root, tmp_path, monkeypatch):
    """The last two parts can finish together and both publish: the one that comes second finds every
    staged shard and index already moved (and a dataset where the plan put it) and leaves the same bytes."""
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    out = f"file://{tmp_path}/fleet"
    assert write_drives(str(raw_root), out, part=PartSpec(1, 2), **KW).waiting
    assert write_drives(str(raw_root), out, part=PartSpec(2, 2), **KW).completed
    first = dataset(out)
    (done,) = (tmp_path / "fleet" / ".ingest").glob("*/published.json")
    done.unlink()  # as the second publisher saw the run: not published yet, staging already emptied by the first
    again = write_drives(str(raw_root), out, publish=2, **KW)
    assert again.clips == 12 and dataset(out) == first and done.is_file()
