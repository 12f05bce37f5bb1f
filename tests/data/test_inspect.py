from pathlib import Path

import pytest

from fsdtrain.data.inspect import find_manifests, format_inspect, inspect, verify
from fsdtrain.errors import DataError
from fsdtrain.store import objects


def copy_tree(url: str, dest: Path) -> Path:
    src = Path(url.removeprefix("file://"))
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_inspect_finds_every_manifest_below_a_root(tiny_fleet):
    root = tiny_fleet["CN"]["train"].rsplit("/", 2)[0]  # .../tiny
    rows = inspect(root)
    assert {(r["split"], r["country"], r["zone"]) for r in rows} == {
        (s, c, "cn" if c == "CN" else "global") for s in ("train", "val") for c in ("US", "DE", "CN")
    }
    assert all(r["clips"] > 0 and r["hours"] > 0 for r in rows)
    assert "total" in format_inspect(rows)


def test_verify_reports_each_problem_with_its_shard(tiny_fleet, tmp_path):
    d = copy_tree(tiny_fleet["US"]["train"], tmp_path / "US")
    assert verify(str(d)) == []
    (d / "shard-000001.tar").unlink()
    (d / "shard-000007.tar").write_bytes(b"stray")
    shard = d / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify(str(d))
    assert any("shard-000001.tar: missing" in p for p in problems)
    assert any("shard-000007.tar: shard in the store but not in the manifest" in p for p in problems)
    assert any("shard-000000.tar: sha256" in p for p in problems)
    assert len(problems) == 3


def test_verify_on_s3_and_no_manifest(tiny_fleet, s3_bucket):
    src = Path(tiny_fleet["DE"]["val"].removeprefix("file://"))
    for f in src.iterdir():
        objects.write_bytes(f"{s3_bucket}/tiny/val/DE/{f.name}", f.read_bytes())
    assert [m.country for m in find_manifests(f"{s3_bucket}/tiny")] == ["DE"]
    assert verify(f"{s3_bucket}/tiny/val/DE") == []
    with pytest.raises(DataError, match="no manifest"):
        find_manifests(f"{s3_bucket}/elsewhere")
