"""Clips -> webdataset tar shards + per-shard indexes + ``manifest.json`` (docs/data-format.md).

A shard is built whole in memory, then uploaded with one atomic write, so readers never see a
partial shard; its index (:mod:`fsdtrain.format.index`) follows it. The manifest is saved only after
every shard and index is written: a directory with a manifest is complete. Shards are deterministic (fixed member order, zero mtime/uid/gid, empty
owner names), so the same clips give byte-identical shards and the same sha256.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.index import MemberSpan, SampleSpan, ShardIndex, index_name
from fsdtrain.format.manifest import MANIFEST_NAME, Manifest, ShardInfo, save_manifest
from fsdtrain.format.schema import FIXED_MEMBERS, parse_meta, validate_key, validate_member
from fsdtrain.residency import validate_zone
from fsdtrain.store import objects

__all__ = ["shard_name", "ShardSet", "ShardWriter", "write_shards"]

def shard_name(index: int) -> str:
    """``shard-000042.tar`` for index 42."""
    return f"shard-{index:06d}.tar"


_TAR_END = 2 * tarfile.BLOCKSIZE  # two zero blocks close a tar


def _tar_record(name: str, data: bytes) -> tuple[bytes, bytes]:
    """One tar member as written by ``tarfile`` in PAX format: (header blocks, data padded to 512).

    Zero mtime/uid/gid, empty owner names and mode 0644, so the bytes depend on the content only.
    """
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    pad = -len(data) % tarfile.BLOCKSIZE
    return header, data + tarfile.NUL * pad


def _tar_size(records_bytes: int) -> int:
    """Size of a tar holding ``records_bytes`` of member records: end blocks, padded to a whole record."""
    n = records_bytes + _TAR_END
    return n + (-n % tarfile.RECORDSIZE)


@dataclass
class _Pending:
    """One clip serialized as tar records, with its members' offsets relative to the clip's start."""

    key: str
    records: bytes
    members: dict[str, tuple[int, int, str]]  # name -> (data offset in records, size, sha256)


@dataclass(frozen=True)
class ShardSet:
    """What every clip of one shard directory shares, as its manifest records it.

    Args:
        dataset, split, country, zone: manifest fields; every clip's meta must agree on country and zone.
        cameras: camera names in rig order; each clip holds exactly one ``<camera>.mp4`` per name.
        fps: frame rate; every clip's meta must agree.
    """

    dataset: str
    split: str
    country: str
    zone: str
    cameras: tuple[str, ...]
    fps: float

    def __post_init__(self) -> None:
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras must be a non-empty list of unique names, got {list(self.cameras)}")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "fps", float(self.fps))
        validate_zone(self.zone)


class ShardWriter:
    """Writes clips into ``<out>/shard-NNNNNN.tar`` files (each with its ``.index.json``) and, on
    :meth:`close`, ``manifest.json``.

    A new shard starts when the current one holds ``clips_per_shard`` clips, or when adding the
    next clip would make it larger than ``shard_bytes`` (a single clip larger than that gets a
    shard of its own). Give either limit or both.

    Use it as a context manager: when the block raises, the shards written so far stay but no
    manifest is saved, so readers treat the directory as incomplete. An existing manifest in
    ``out`` is removed before the first shard is written, for the same reason; shards and indexes
    of an earlier, larger write that the new manifest does not list are removed on close.

    Args:
        out: shard directory URL, ``<root>/<dataset>/<split>/<country>`` (``s3://`` or ``file://``).
        shard_set: what every clip shares (dataset, split, country, zone, cameras, fps).
        clips_per_shard: most clips per tar file, or None for no count limit.
        shard_bytes: target tar size in bytes, or None for no size limit.
    """

    def __init__(
        self,
        out: str,
        shard_set: ShardSet,
        *,
        clips_per_shard: int | None = None,
        shard_bytes: int | None = None,
    ) -> None:
        if clips_per_shard is None and shard_bytes is None:
            raise ConfigError("give clips_per_shard or shard_bytes (or both) to say when a shard is full")
        if clips_per_shard is not None and clips_per_shard < 1:
            raise ConfigError(f"clips_per_shard={clips_per_shard} must be at least 1")
        if shard_bytes is not None and shard_bytes < 1:
            raise ConfigError(f"shard_bytes={shard_bytes} must be a positive number of bytes, e.g. 268435456 (256 MiB)")
        self.out = out
        self.clips_per_shard = clips_per_shard
        self.shard_bytes = shard_bytes
        s = shard_set
        self.manifest = Manifest(dataset=s.dataset, split=s.split, country=s.country, zone=s.zone, cameras=list(s.cameras), fps=s.fps, frames=0)
        self._members = list(FIXED_MEMBERS) + [f"{c}.mp4" for c in s.cameras]
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._started = False
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def write(self, sample: dict[str, bytes]) -> None:
        """Adds one clip (webdataset sample dict); uploads the current shard first when the clip would overfill it."""
        if self._closed:
            raise DataError(f"{self.out}: ShardWriter is closed; open a new one to write more clips")
        self._check(sample)
        clip = self._serialize(sample)
        if self._pending and self.shard_bytes is not None and _tar_size(self._pending_bytes + len(clip.records)) > self.shard_bytes:
            self._flush()
        self._pending.append(clip)
        self._pending_bytes += len(clip.records)
        if self.clips_per_shard is not None and len(self._pending) == self.clips_per_shard:
            self._flush()

    def close(self) -> Manifest:
        """Uploads the last partial shard, removes stale shards, then saves and returns the manifest."""
        if self._closed:
            return self.manifest
        if self._pending:
            self._flush()
        if not self.manifest.shards:
            raise DataError(f"{self.out}: no clips were written; a manifest needs at least one clip")
        self._remove_stale()
        save_manifest(self.out, self.manifest)
        self._closed = True
        self.manifest.url = self.out.rstrip("/")
        return self.manifest

    def _check(self, sample: dict[str, bytes]) -> None:
        key = validate_key(sample.get("__key__", ""))
        members = [k for k in sample if k != "__key__"]
        for m in members:
            validate_member(key, m, self.manifest.cameras)
            if not isinstance(sample[m], bytes):
                raise DataError(f"sample {key}: member '{m}' must be bytes, got {type(sample[m]).__name__}")
        missing = [m for m in self._members if m not in sample]
        if missing:
            raise DataError(f"sample {key}: missing members {missing}; every clip needs {self._members}")
        meta = parse_meta(sample["meta.json"], f"sample {key}")
        m = self.manifest
        for field, want, got in (("country", m.country, meta.country), ("zone", m.zone, meta.zone), ("cameras", m.cameras, meta.cameras)):
            if want != got:
                raise DataError(f"sample {key}: meta {field} {got!r} differs from this shard directory's {want!r}; write it to its own directory")
        if abs(float(meta.fps) - m.fps) > 1e-9:
            raise DataError(f"sample {key}: fps {meta.fps} differs from the manifest's {m.fps}; one directory holds one frame rate")
        if m.frames == 0:
            m.frames = int(meta.frames)
        elif int(meta.frames) != m.frames:
            raise DataError(f"sample {key}: {meta.frames} frames, other clips here have {m.frames}; all clips of one manifest need the same length")

    def _serialize(self, sample: dict[str, bytes]) -> _Pending:
        parts, members, pos = [], {}, 0
        for member in self._members:
            data = sample[member]
            header, body = _tar_record(f"{sample['__key__']}.{member}", data)
            members[member] = (pos + len(header), len(data), hashlib.sha256(data).hexdigest())
            parts += [header, body]
            pos += len(header) + len(body)
        return _Pending(key=sample["__key__"], records=b"".join(parts), members=members)

    def _flush(self) -> None:
        if not self._started:
            # A stale manifest would describe shards that are about to be replaced.
            objects.delete(objects.join_url(self.out, MANIFEST_NAME))
            self._started = True
        name = shard_name(len(self.manifest.shards))
        samples, pos = [], 0
        for clip in self._pending:
            members = {m: MemberSpan(pos + off, size, digest) for m, (off, size, digest) in clip.members.items()}
            samples.append(SampleSpan(key=clip.key, offset=pos, size=len(clip.records), members=members))
            pos += len(clip.records)
        data = b"".join(c.records for c in self._pending)
        data += tarfile.NUL * (_tar_size(len(data)) - len(data))
        digest = hashlib.sha256(data).hexdigest()
        index = ShardIndex(shard=name, bytes=len(data), sha256=digest, samples=samples).to_json()
        objects.write_bytes(objects.join_url(self.out, name), data)
        objects.write_bytes(objects.join_url(self.out, index_name(name)), index)  # before the manifest names it
        self.manifest.shards.append(
            ShardInfo(name=name, samples=len(self._pending), bytes=len(data), sha256=digest, index=index_name(name),
                      index_sha256=hashlib.sha256(index).hexdigest())
        )  # fmt: skip
        self._pending, self._pending_bytes = [], 0

    def _remove_stale(self) -> None:
        """Deletes ``shard-*`` objects directly in ``out`` that an earlier write left and this manifest does not list."""
        keep = {s.name for s in self.manifest.shards} | {s.index for s in self.manifest.shards}
        here = objects.join_url(self.out)  # normalized, as list_keys spells URLs
        for url in objects.list_keys(self.out):
            parent, name = url.rsplit("/", 1)
            if parent == here and _STALE_RE.match(name) and name not in keep:
                objects.delete(url)


_STALE_RE = re.compile(r"^shard-\d{6}\.(tar|index\.json)$")


def write_shards(
    out: str,
    samples: Iterable[dict[str, bytes]],
    shard_set: ShardSet,
    *,
    clips_per_shard: int | None = None,
    shard_bytes: int | None = None,
) -> Manifest:
    """Writes all ``samples`` as shards into ``out`` and saves the manifest last; see :class:`ShardWriter`.

    Each sample dict has ``__key__`` (``<drive_id>-<first_frame:06d>``), ``meta.json``,
    ``calib.json``, ``ego.npy`` and ``<camera>.mp4`` for every camera, all as bytes.
    """
    with ShardWriter(out, shard_set, clips_per_shard=clips_per_shard, shard_bytes=shard_bytes) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.manifest
