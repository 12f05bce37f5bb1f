"""Clips -> webdataset tar shards + per-shard indexes + ``manifest.json`` (docs/data-format.md).

A shard is built whole in memory, then uploaded with one atomic write, so readers never see a
partial shard; its index (:mod:`fsdtrain.format.index`) follows it. The manifest is saved only after
every shard and index is written: a directory with a manifest is complete. Shards are deterministic (fixed member order, zero mtime/uid/gid, empty
owner names), so the same clips give byte-identical shards and the same sha256.

A write never destroys what a directory holds before the new version is complete ("Writing a
dataset" in docs/data-format.md): a directory that already holds a dataset is refused unless
``replace`` is given; a replacement's shards take shard numbers no object there uses yet, so the
old manifest and every shard it lists stay untouched and readable until the new manifest replaces
it in one atomic write (a rename on file://, a PUT on S3); only then are the old shards and indexes
removed. A write that fails removes what it wrote (best effort) and leaves the old version as it was.

An ingest written in parts (fsdtrain/ingest/parts.py) uses the same pieces: each part's writer
:meth:`~ShardWriter.stage`\ s its shards without a manifest, and the publish step takes shard
numbers with :func:`survey` and :func:`free_names`, saves the manifest, then :func:`remove_unlisted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fsdtrain.errors import ConfigError, DataError, StoreError
from fsdtrain.format.index import MemberSpan, SampleSpan, ShardIndex, index_name
from fsdtrain.format.manifest import MANIFEST_NAME, Manifest, ShardInfo, save_manifest
from fsdtrain.format.samples import check_same_size, manifest_expect, parse_clip
from fsdtrain.format.schema import (
    FIXED_MEMBERS,
    ClipMeta,
    is_camera_list,
    is_country,
    validate_key,
    validate_member,
)
from fsdtrain.residency import check_country_zone, validate_zone
from fsdtrain.store import objects

__all__ = ["shard_name", "ShardSet", "ShardWriter", "publish_all", "write_shards", "survey", "free_names", "remove_unlisted"]

log = logging.getLogger(__name__)


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
        dataset, split, country, zone: manifest fields; every clip's meta must agree on country and zone,
            and ``zone`` must be the residency policy's zone for ``country`` (a ConfigError otherwise).
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
        if not is_camera_list(list(self.cameras)):  # the checks the manifest is read with
            raise ConfigError(f"cameras must be a non-empty list of unique names of [A-Za-z0-9_], got {list(self.cameras)}")
        if not is_country(self.country):
            raise ConfigError(f"country {self.country!r} must be an ISO 3166-1 alpha-2 code such as 'CN'")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "fps", float(self.fps))
        validate_zone(self.zone)
        reason = check_country_zone(self.country, self.zone)
        if reason:  # no clip could match it (parse_meta applies the same policy): refuse before any is made
            raise ConfigError(f"shard set {self.dataset}/{self.split}/{self.country}: {reason}")


class ShardWriter:
    """Writes clips into ``<out>/shard-NNNNNN.tar`` files (each with its ``.index.json``) and, on
    :meth:`close`, ``manifest.json``.

    A new shard starts when the current one holds ``clips_per_shard`` clips, or when adding the
    next clip would make it larger than ``shard_bytes`` (a single clip larger than that gets a
    shard of its own). Give either limit or both.

    ``out`` must not hold a dataset yet (a manifest or any shard) unless ``replace`` is given. When
    replacing, the new shards take shard numbers that no object in ``out`` uses (the lowest free
    ones), so nothing the old manifest lists is touched until :meth:`close` saves the new
    manifest over it; the old version's shards and indexes (and any others the new manifest does
    not list) are removed after that. Use it as a context manager: when the block raises,
    :meth:`abort` removes the shards and indexes written so far and ``out`` stays as it was.

    Args:
        out: shard directory URL, ``<root>/<dataset>/<split>/<country>`` (``s3://`` or ``file://``).
        shard_set: what every clip shares (dataset, split, country, zone, cameras, fps).
        clips_per_shard: most clips per tar file, or None for no count limit.
        shard_bytes: target tar size in bytes, or None for no size limit.
        replace: write a new version over a dataset already in ``out`` instead of refusing it.

    Raises:
        ConfigError: ``out`` already holds a dataset and ``replace`` is not given.
        StoreError: ``out`` cannot be listed or written (unreachable, denied, disk full).
    """

    def __init__(
        self,
        out: str,
        shard_set: ShardSet,
        *,
        clips_per_shard: int | None = None,
        shard_bytes: int | None = None,
        replace: bool = False,
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
        self._closed = False
        self._taken = self._survey(replace)  # shard numbers of objects already in out: never written over
        self._next = 0
        self._written: list[str] = []  # this version's shard and index names, removed again by abort
        self._publishing = False
        self._sizes: dict[str, tuple[tuple[int, int], str]] = {}  # camera -> (W, H) of the first clip, and where
        self._keys: set[str] = set()  # clip keys written so far: each clip once

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()  # a no-op once the manifest is saved
            raise

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

    def seal(self) -> Manifest:
        """Uploads the last partial shard; returns the manifest, not published yet (see :meth:`close`)."""
        if self._closed:
            raise DataError(f"{self.out}: ShardWriter is closed; open a new one to write more clips")
        if self._pending:
            self._flush()
        if not self.manifest.shards:
            raise DataError(f"{self.out}: no clips were written; a manifest needs at least one clip")
        return self.manifest

    def end_group(self) -> None:
        """Uploads the current partial shard, so that the next clip starts a new one: shards never
        hold clips of two groups (an ingest's groups of drives, which parts take whole)."""
        if self._closed:
            raise DataError(f"{self.out}: ShardWriter is closed; open a new one to write more clips")
        if self._pending:
            self._flush()

    def stage(self) -> Manifest:
        """Seals and closes without saving a manifest: the shards stay where they are for a later
        publish step (an ingest part's staging folder); returns the manifest that would list them."""
        manifest = self.seal()
        self._closed = True
        manifest.url = self.out.rstrip("/")
        return manifest

    def close(self) -> Manifest:
        """Seals, saves the manifest (the one atomic switch to the new version), then removes the
        shards and indexes it does not list (the old version's); returns the manifest."""
        if self._closed:
            return self.manifest
        self.seal()
        murl = objects.join_url(self.out, MANIFEST_NAME)
        self._publishing = True
        with _writing(murl):
            save_manifest(self.out, self.manifest)
        self._closed = True
        self.manifest.url = self.out.rstrip("/")
        self._remove_stale()
        return self.manifest

    def abort(self) -> None:
        """Removes the shards and indexes this writer wrote (best effort) and publishes nothing:
        ``out`` keeps the dataset it held before. A no-op after :meth:`close`."""
        if self._closed:
            return
        self._closed = True
        self._pending, self._pending_bytes = [], 0
        if self._publishing and self._published():
            return  # the manifest save failed late (e.g. its answer was lost) but took effect
        for name in self._written:
            url = objects.join_url(self.out, name)
            try:
                objects.delete(url)
            except (StoreError, OSError) as exc:  # the failure that got us here matters more; the stray is harmless
                log.warning("could not remove unpublished %s (%s); `fsdtrain data verify` lists it, the next write with replace removes it", url, exc)

    def _published(self) -> bool:
        """Whether the manifest in ``out`` is this writer's: a failed PUT may still have landed."""
        murl = objects.join_url(self.out, MANIFEST_NAME)
        try:
            return objects.exists(murl) and objects.read_bytes(murl) == self.manifest.to_json()
        except (StoreError, OSError):
            return True  # cannot tell: keeping the new shards never breaks a manifest that lists them

    def _survey(self, replace: bool) -> set[int]:
        return survey(self.out, replace)

    def _next_name(self) -> str:
        """The next shard name whose number no object in ``out`` had when this writer started."""
        while self._next in self._taken:
            self._next += 1
        self._next += 1
        return shard_name(self._next - 1)

    def _put(self, name: str, data: bytes) -> None:
        url = objects.join_url(self.out, name)
        self._written.append(name)  # first: a write that fails halfway may leave the object behind
        with _writing(url):
            objects.write_bytes(url, data)

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
        if key in self._keys:
            raise DataError(f"sample {key}: the same clip key was written before; a clip appears once in a shard directory (else it is trained on twice)")
        m, where = self.manifest, f"sample {key}"

        def as_shard_set(meta: ClipMeta) -> None:  # the check verify and the loader make; the first clip sets the length
            manifest_expect(dataclasses.replace(m, frames=m.frames or meta.frames), where)(meta)

        # the one clip schema verify and the loader apply (every field of meta.json, calib.json and
        # ego.npy, the zone the residency policy gives the country), so what is written reads back;
        # videos are not decoded here
        clip = parse_clip(key, {k: sample[k] for k in members}, m.cameras, where, known_cameras=m.cameras, expect=as_shard_set)
        check_same_size(self._sizes, clip, m.cameras, where, "one shard directory holds one resolution per camera; write other sizes to their own directory")
        self._keys.add(key)
        m.frames = m.frames or clip.meta.frames

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
        name = self._next_name()
        samples, pos = [], 0
        for clip in self._pending:
            members = {m: MemberSpan(pos + off, size, digest) for m, (off, size, digest) in clip.members.items()}
            samples.append(SampleSpan(key=clip.key, offset=pos, size=len(clip.records), members=members))
            pos += len(clip.records)
        data = b"".join(c.records for c in self._pending)
        data += tarfile.NUL * (_tar_size(len(data)) - len(data))
        digest = hashlib.sha256(data).hexdigest()
        index = ShardIndex(shard=name, bytes=len(data), sha256=digest, samples=samples).to_json()
        self._put(name, data)
        self._put(index_name(name), index)  # before the manifest names it
        self.manifest.shards.append(
            ShardInfo(name=name, samples=len(self._pending), bytes=len(data), sha256=digest, index=index_name(name),
                      index_sha256=hashlib.sha256(index).hexdigest())
        )  # fmt: skip
        self._pending, self._pending_bytes = [], 0

    def _remove_stale(self) -> None:
        remove_unlisted(self.out, self.manifest)


_SHARD_FILE_RE = re.compile(r"^shard-(\d{6})\.(tar|index\.json)$")


@contextlib.contextmanager
def _writing(url: str) -> Iterator[None]:
    """Turns a local write failure (disk full, quota, permissions) into one StoreError line naming ``url``."""
    try:
        yield
    except OSError as exc:
        fix = "; free space there or write to another --out" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise StoreError(f"cannot write {url}: {exc.strerror or exc}{fix}") from None


def survey(out: str, replace: bool) -> set[int]:
    """Numbers of the ``shard-NNNNNN`` objects directly in ``out`` (a new version never writes over
    them); refuses an ``out`` that holds a dataset or shards of an unfinished write unless ``replace``.

    Raises:
        ConfigError: ``out`` is not empty and ``replace`` is not given.
        StoreError: ``out`` cannot be listed.
    """
    here = objects.join_url(out)  # normalized, as list_keys spells URLs
    names = [name for parent, name in (url.rsplit("/", 1) for url in objects.list_keys(out)) if parent == here]
    taken = {int(m.group(1)) for m in map(_SHARD_FILE_RE.match, names) if m}
    if not replace and (MANIFEST_NAME in names or taken):
        what = "a dataset (manifest.json)" if MANIFEST_NAME in names else "shard files of an unfinished write (no manifest)"
        raise ConfigError(
            f"{here} already holds {what}; pass --replace (replace=True) to write a new version over it "
            "(the old one stays readable until the new one is complete), or write to another --out"
        )
    return taken


def free_names(taken: set[int], count: int) -> list[str]:
    """The ``count`` lowest shard names whose numbers are not in ``taken``, in order: the names a
    :class:`ShardWriter` started on the same directory gives its first ``count`` shards."""
    names, n = [], 0
    while len(names) < count:
        if n not in taken:
            names.append(shard_name(n))
        n += 1
    return names


def remove_unlisted(out: str, manifest: Manifest) -> None:
    """Deletes ``shard-*`` objects directly in ``out`` that ``manifest`` does not list: the previous
    version's, and strays of failed writes. Runs after the manifest is saved; a failure is logged
    (the new version is published and whole; a leftover is only a stray)."""
    keep = {s.name for s in manifest.shards} | {s.index for s in manifest.shards}
    here = objects.join_url(out)  # normalized, as list_keys spells URLs
    try:
        urls = objects.list_keys(out)
    except (StoreError, OSError) as exc:  # published; the old files are only strays
        log.warning("published %s but could not list it to remove the old version (%s); `fsdtrain data verify` lists what is left", out, exc)
        return
    for url in urls:
        parent, name = url.rsplit("/", 1)
        if parent == here and _SHARD_FILE_RE.match(name) and name not in keep:
            try:
                objects.delete(url)
            except (StoreError, OSError) as exc:  # the new version is published and whole; a leftover is only a stray
                log.warning("published %s but could not remove the old %s (%s); `fsdtrain data verify` lists it", out, url, exc)


def publish_all(writers: Iterable[ShardWriter]) -> list[Manifest]:
    """Seals every writer, then closes them one by one: no directory switches to its new version
    before every directory's shards are written. Returns the manifests in the writers' order."""
    writers = list(writers)
    for w in writers:
        w.seal()
    return [w.close() for w in writers]


def write_shards(
    out: str,
    samples: Iterable[dict[str, bytes]],
    shard_set: ShardSet,
    *,
    clips_per_shard: int | None = None,
    shard_bytes: int | None = None,
    replace: bool = False,
) -> Manifest:
    """Writes all ``samples`` as shards into ``out`` and saves the manifest last; see :class:`ShardWriter`.

    Each sample dict has ``__key__`` (``<drive_id>-<first_frame:06d>``), ``meta.json``,
    ``calib.json``, ``ego.npy`` and ``<camera>.mp4`` for every camera, all as bytes. With
    ``replace``, a dataset already in ``out`` is replaced once the new one is complete.
    """
    with ShardWriter(out, shard_set, clips_per_shard=clips_per_shard, shard_bytes=shard_bytes, replace=replace) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.manifest
