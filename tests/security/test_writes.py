"""Writes never destroy what exists (issue 16, item 4).

A `data write`/`data synth` into a directory that holds a dataset is refused unless told to
replace it; a replacement that fails midway leaves the previous dataset byte for byte, on file://
and on the real store; one that succeeds leaves only the new version, and a reader of the old
manifest keeps reading until the switch. Disk full is one line, on a real full filesystem.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fsdtrain.errors import ConfigError, DataError, StoreError
from fsdtrain.format.index import IndexedShards
from fsdtrain.format.manifest import load_manifest
from fsdtrain.format.verify import verify
from fsdtrain.ingest.drives import write_drives
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate
from fsdtrain.synth.fleet import ClipSpec, synth_fleet
from fsdtrain.synth.raw_drives import synth_raw_drives
from helpers.fleet import ANY_ZONE, clone_drive

TINY = ClipSpec(seconds=0.5, width=32, height=32)  # ~30 KB per clip: fast, and many fit a small disk


class Interrupted(Exception):
    """Stands for whatever stops a run midway (a crash, Ctrl-C, a lost node)."""


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), temp files included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def objects_under(url: str) -> dict[str, bytes]:
    return {key: objects.read_bytes(key) for key in objects.list_keys(url)}


def published(url: str, countries: list[str], split: str = "train") -> set[str]:
    """Object URLs the manifests under ``url`` publish: each manifest and the shards and indexes it lists."""
    names = set()
    for c in countries:
        m = load_manifest(objects.join_url(url, split, c), ANY_ZONE, check_zone=False)
        names |= {objects.join_url(m.url, n) for s in m.shards for n in (s.name, s.index)} | {objects.join_url(m.url, "manifest.json")}
    return names


# --- data write: the case --------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("writes") / "raw"
    synth_raw_drives(root, ["CN", "US"], 2, seed=5, seconds=2.0, width=64, height=48)
    return root


def test_a_failed_reingest_leaves_the_old_dataset_byte_for_byte(raw_root, tmp_path):
    out = tmp_path / "fleet"
    ingest = dict(clip_seconds=1.0, shard_bytes=60_000)  # a shard per clip or two: shards are flushed drive by drive
    first = write_drives(str(raw_root), f"file://{out}", **ingest)
    assert [m.country for m in first.manifests] == ["CN", "US"]
    before = files(out)

    again = tmp_path / "raw2"  # the same drives under new ids, and a later drive with a bad frame
    for src in sorted(raw_root.iterdir()):
        clone_drive(src, again, f"a_{src.name}")
    broken = clone_drive(raw_root / "synth_us_s5_d0001", again, "z_broken")
    (broken / "CAM_BACK" / sorted(p.name for p in (broken / "CAM_BACK").iterdir())[5]).write_bytes(b"not a jpeg")

    with pytest.raises(ConfigError, match=r"already holds a dataset \(manifest.json\); pass --replace"):
        write_drives(str(again), f"file://{out}", **ingest)
    assert files(out) == before

    new_files_seen: list[set[str]] = []
    with pytest.raises(DataError, match="^drive z_broken: unreadable frame CAM_BACK/"):
        write_drives(str(again), f"file://{out}", replace=True, progress=lambda _: new_files_seen.append(set(files(out)) - set(before)), **ingest)
    assert any(new_files_seen)  # the new version's shards were in the store when the bad frame came
    assert files(out) == before  # ...and are gone again; the old version is untouched
    for m in first.manifests:
        assert verify(m.url, site_zone=m.zone) == []

    shutil.rmtree(broken)
    second = write_drives(str(again), f"file://{out}", replace=True, **ingest)
    assert {f"file://{out}/{name}" for name in files(out)} == published(f"file://{out}", ["CN", "US"])  # only the new version
    for m in second.manifests:
        assert verify(m.url, site_zone=m.zone) == []
        assert all(k.startswith("a_") for k in IndexedShards(m, ZoneGate(m.zone)).keys())


# --- data synth: refusal, replace, a reader of the old version ---------------------------------


def test_synth_refuses_a_dataset_and_a_replace_publishes_only_the_new_version(tmp_path):
    out = f"file://{tmp_path}/fleet"
    (old_us, _) = synth_fleet(out, ["US", "DE"], 3, clips_per_shard=2, clip=TINY)
    before = files(tmp_path)
    rendered: list[str] = []
    with pytest.raises(ConfigError, match="fleet/train/DE already holds a dataset"):
        synth_fleet(out, ["GB", "DE"], 3, clip=TINY, progress=rendered.append)
    assert rendered == [] and files(tmp_path) == before  # refused before any clip, and GB not started either

    reader = IndexedShards(old_us, ZoneGate("global"))
    key = reader.keys()[-1]
    clip = reader.read_sample(key)
    reads: list[bool] = []
    new = synth_fleet(
        out, ["US", "DE"], 2, clips_per_shard=1, seed=7, clip=TINY, replace=True,
        progress=lambda _: reads.append(reader.read_sample(key) == clip),  # the old manifest, while the new version is written
    )  # fmt: skip
    assert reads == [True] * 4
    assert {f"file://{tmp_path}/{name}" for name in files(tmp_path)} == published(out, ["US", "DE"])
    assert [s.name for s in new[0].shards] == ["shard-000002.tar", "shard-000003.tar"]  # numbers the old version did not use
    for m in new:
        assert verify(m.url) == []
    with pytest.raises(StoreError, match="no such file"):
        reader.read_sample(key)  # after the switch the old version is gone


def test_a_failed_replace_on_the_store_leaves_every_object_as_it_was(s3_bucket):
    out = f"{s3_bucket}/fleet"
    synth_fleet(out, ["US", "DE"], 2, clips_per_shard=1, clip=TINY)
    before = objects_under(s3_bucket)
    seen: list[int] = []

    def crash(message: str) -> None:
        if message.startswith("DE: clip 2/"):  # US complete and DE's first shard written, nothing published
            seen.append(len(objects_under(s3_bucket)) - len(before))
            raise Interrupted(message)

    with pytest.raises(Interrupted):
        synth_fleet(out, ["US", "DE"], 3, clips_per_shard=1, seed=9, clip=TINY, replace=True, progress=crash)
    assert seen == [2 * (3 + 1)]  # 4 new shards with their indexes were in the bucket
    assert objects_under(s3_bucket) == before

    new = synth_fleet(out, ["US", "DE"], 3, clips_per_shard=1, seed=9, clip=TINY, replace=True)
    assert set(objects_under(s3_bucket)) == published(out, ["US", "DE"])
    assert [s.name for s in new[1].shards] == ["shard-000002.tar", "shard-000003.tar", "shard-000004.tar"]
    for m in new:
        assert verify(m.url) == []


# --- disk full ---------------------------------------------------------------------------------

_DISK_FULL = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile
    from pathlib import Path
    from fsdtrain.errors import FsdtrainError
    from fsdtrain.ingest.drives import write_drives
    from fsdtrain.synth.fleet import ClipSpec, synth_fleet

    disk, raw, ingest_out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    tiny = ClipSpec(seconds=0.5, width=32, height=32)
    size = ["--seconds", "0.5", "--width", "32", "--height", "32"]

    def files():
        return {str(p.relative_to(disk)): p.read_bytes().hex() for p in sorted(disk.rglob("*")) if p.is_file()}

    synth_fleet(f"file://{disk}/fleet", ["US"], 2, clips_per_shard=1, clip=tiny)  # fits
    before = files()
    try:
        synth_fleet(f"file://{disk}/fleet", ["US"], 30, clips_per_shard=1, clip=tiny, replace=True)  # does not
        error = None
    except FsdtrainError as exc:
        error = f"{type(exc).__name__}: {exc}"
    after_replace = files()
    cli = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "data", "synth", "--out", f"file://{disk}/fresh", "--countries", "DE",
         "--clips", "30", "--clips-per-shard", "1", *size],
        capture_output=True, text=True, timeout=300,
    )
    same_after_cli = files() == before

    # data write encodes each drive into a temporary folder first: let that one be the full disk
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(st.f_bavail * st.f_frsize - 8192))
    tempfile.tempdir = str(disk)
    try:
        write_drives(raw, f"file://{ingest_out}", clip_seconds=1.0)
        ingest_error = None
    except FsdtrainError as exc:
        ingest_error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"error": error, "same_after_replace": after_replace == before, "same_after_cli": same_after_cli,
                      "cli_rc": cli.returncode, "cli_stderr": cli.stderr, "ingest_error": ingest_error,
                      "ingest_left": [str(p) for p in ingest_out.rglob("*") if p.is_file()]}))
    """
)


def _full_disk_available(tmp_path: Path) -> bool:
    """Whether a user namespace may mount a tmpfs here (no root needed where the kernel allows it)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)], capture_output=True)
    return probe.returncode == 0


def test_disk_full_is_one_line_and_leaves_the_old_dataset(raw_root, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _full_disk_available(disk):
        pytest.skip("no unprivileged user namespaces to mount a small tmpfs in")
    script = tmp_path / "disk_full.py"
    script.write_text(_DISK_FULL)
    mount = f"mount -t tmpfs -o size=256k tmpfs {disk} && exec {sys.executable} {script} {disk} {raw_root} {tmp_path / 'ingested'}"
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", mount], capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    error = result["error"]
    assert error is not None and error.startswith(f"StoreError: cannot write file://{disk}/fleet/train/US/shard-0000"), error
    assert "No space left on device; free space there or write to another --out" in error and "\n" not in error
    assert result["same_after_replace"] and result["same_after_cli"]  # the old version, byte for byte; the fresh write cleaned up
    assert result["cli_rc"] == 2 and "Traceback" not in result["cli_stderr"]
    lines = [line for line in result["cli_stderr"].splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(f"fsdtrain: error: cannot write file://{disk}/fresh/train/DE/"), result["cli_stderr"]
    assert "No space left on device" in lines[0]
    ingest_error = result["ingest_error"]
    assert ingest_error is not None and ingest_error.startswith(f"StoreError: cannot write encoded clips to {disk}/"), ingest_error
    assert ingest_error.endswith("No space left on device; free space there or set TMPDIR to a larger disk")
    assert result["ingest_left"] == []  # nothing half-written in --out
