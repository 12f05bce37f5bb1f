"""Small synthetic fleets for tests, built with the product's own seeded generator."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from fsdtrain.format.index import MemberSpan, SampleSpan, ShardIndex
from fsdtrain.format.manifest import load_manifest, save_manifest
from fsdtrain.format.windows import WindowSpec
from fsdtrain.store.gate import ZoneGate
from fsdtrain.synth.fleet import ClipSpec, synth_fleet

# For reading a manifest's metadata whatever its zone (``load_manifest(url, ANY_ZONE, check_zone=False)``):
# made at import, before any test sets FSDTRAIN_BUCKET_ZONES, so it declares no bucket zones either.
# Reading a zone's data goes through ``ZoneGate(manifest.zone)`` instead.
ANY_ZONE = ZoneGate("global")

# 5 s clips at 10 Hz, 64x48 pixels: 8 windows per clip with this spec, fast to render and decode; the
# demo's rig (surround6 + CAM_FRONT_NARROW), so configs/demo.yaml's cameras are there
TINY_WINDOW = WindowSpec(history=2, frame_stride=5, horizon_s=3.0, future_hz=2.0, window_stride=2)
TINY_SIZE = {"width": 64, "height": 48, "seconds": 5.0, "rig": "surround6_narrow"}
TINY_CLIP = ClipSpec(**TINY_SIZE)
COUNTRIES = ("US", "DE", "CN")


def build_tiny_fleet(root: str | Path, *, train_clips: int = 2, val_clips: int = 1) -> dict[str, dict[str, str]]:
    """Writes US, DE and CN train/val splits under ``root``; returns URLs by country and split."""
    out = Path(root) / "tiny"
    urls: dict[str, dict[str, str]] = {}
    for country in COUNTRIES:
        synth_fleet(str(out), [country], train_clips, clips_per_shard=1, split="train", seed=0, clip=TINY_CLIP)
        synth_fleet(str(out), [country], val_clips, clips_per_shard=1, split="val", seed=1, clip=TINY_CLIP)
        urls[country] = {split: f"file://{out}/{split}/{country}" for split in ("train", "val")}
    return urls


@pytest.fixture(scope="session")
def tiny_fleet(tmp_path_factory) -> dict[str, dict[str, str]]:
    """US, DE and CN tiny train (2 clips) and val (1 clip) splits on file://, built once per session."""
    return build_tiny_fleet(tmp_path_factory.mktemp("fleet"))


def rewrite_shard(directory: Path, edit) -> None:
    """Rewrites shard-000000.tar with ``edit(members) -> members`` and fixes the manifest checksum and
    the shard's index (so range reads reach the damaged members, as after a bad write)."""
    path = directory / "shard-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    m = load_manifest(str(directory), ANY_ZONE, check_zone=False)
    m.shards[0].sha256 = hashlib.sha256(buf.getvalue()).hexdigest()
    m.shards[0].bytes = len(buf.getvalue())
    index = _index_of(buf.getvalue(), m.shards[0].name)
    (directory / m.shards[0].index).write_bytes(index)
    m.shards[0].index_sha256 = hashlib.sha256(index).hexdigest()
    save_manifest(str(directory), m)


def _index_of(data: bytes, name: str) -> bytes:
    """The shard index (docs/data-format.md) of a tar's bytes, read from its headers."""
    samples: list[SampleSpan] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            key, _, suffix = info.name.partition(".")
            if not samples or samples[-1].key != key:
                samples.append(SampleSpan(key=key, offset=info.offset, size=0))
            s = samples[-1]
            member = data[info.offset_data : info.offset_data + info.size]
            s.members[suffix] = MemberSpan(info.offset_data, info.size, hashlib.sha256(member).hexdigest())
            samples[-1] = SampleSpan(s.key, s.offset, info.offset_data + info.size - s.offset, s.members)
    return ShardIndex(shard=name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), samples=samples).to_json()


def clone_drive(src: Path, root: Path, name: str = "bad_drive") -> Path:
    """A copy of raw drive ``src`` under ``root`` with its own drive id, to damage in a test."""
    dst = root / name
    shutil.copytree(src, dst)
    info = json.loads((dst / "drive.json").read_text())
    info["drive_id"] = name
    (dst / "drive.json").write_text(json.dumps(info))
    return dst
