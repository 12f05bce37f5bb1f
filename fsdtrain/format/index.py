"""Per-shard index: where each clip and member lies inside a tar shard, for range reads.

Next to every ``shard-NNNNNN.tar`` the writer saves ``shard-NNNNNN.index.json`` (before the
manifest, which records the index's name and sha256). It lists, per sample, the byte span of the
sample's tar records and, per member, the offset and size of its data plus its sha256. With it
one clip, or one camera of one clip, is read with a single range request instead of the whole
shard, and the bytes read are checked against the index::

    reader = IndexedShards(load_manifest("s3://fleet/v1/train/CN", gate), gate)
    video = reader.read_member("drive_a-000100", "CAM_FRONT.mp4")   # one GET with a Range header
    clip = reader.read_sample("drive_a-000100")                     # all members, one GET

Format (``fsdtrain.shard-index/1``), offsets in bytes from the start of the tar::

    {"schema": "fsdtrain.shard-index/1", "shard": "shard-000000.tar", "bytes": 1048576, "sha256": "<shard sha256>",
     "samples": [{"key": "drive_a-000000", "offset": 0, "size": 24576,
                  "members": {"meta.json": {"offset": 512, "size": 301, "sha256": "..."}, ...}}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from fsdtrain.errors import DataError
from fsdtrain.format.manifest import Manifest, ShardInfo
from fsdtrain.format.schema import is_int, is_sha256, shown, strict_json, validate_key, validate_member
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate

__all__ = ["INDEX_SCHEMA", "index_name", "MemberSpan", "SampleSpan", "ShardIndex", "parse_index", "load_index", "IndexedShards"]

INDEX_SCHEMA = "fsdtrain.shard-index/1"
_HEADER_GAP = 1024  # bytes between two members' data that still count as adjacent: a 512-byte tar header and padding
_SHARD_TAR_RE = re.compile(r"^(shard-\d{6})\.tar$")


def index_name(shard: str) -> str:
    """``shard-000042.tar`` -> ``shard-000042.index.json``."""
    m = _SHARD_TAR_RE.match(shard)
    if m is None:
        raise DataError(f"shard name {shard!r} is not shard-NNNNNN.tar; cannot name its index")
    return f"{m.group(1)}.index.json"


@dataclass(frozen=True)
class MemberSpan:
    """One member's data inside the tar: ``[offset, offset + size)`` and its sha256."""

    offset: int
    size: int
    sha256: str

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class SampleSpan:
    """One sample (clip): the span of all its tar records (headers included) and its members."""

    key: str
    offset: int
    size: int
    members: dict[str, MemberSpan] = field(default_factory=dict)


@dataclass
class ShardIndex:
    """The index of one shard; ``bytes`` and ``sha256`` are the shard's, binding the index to it."""

    shard: str
    bytes: int
    sha256: str
    samples: list[SampleSpan] = field(default_factory=list)
    schema: str = INDEX_SCHEMA

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "schema": self.schema,
                "shard": self.shard,
                "bytes": self.bytes,
                "sha256": self.sha256,
                "samples": [
                    {
                        "key": s.key,
                        "offset": s.offset,
                        "size": s.size,
                        "members": {n: {"offset": m.offset, "size": m.size, "sha256": m.sha256} for n, m in s.members.items()},
                    }
                    for s in self.samples
                ],
            },
            separators=(",", ":"),
        ).encode()

    def sample(self, key: str) -> SampleSpan | None:
        for s in self.samples:
            if s.key == key:
                return s
        return None


def parse_index(data: bytes, where: str) -> ShardIndex:
    """Parses and checks an index file: every field's type and range, keys and member names of the
    clip schema, each key once, spans inside the shard, members inside their sample; one
    :class:`DataError` naming ``where`` and the field otherwise."""
    try:
        raw = strict_json(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{where}: not a shard index ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != INDEX_SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{where}: not a shard index (schema is {found!r}, expected {INDEX_SCHEMA!r})")
    unknown = sorted(set(raw) - {"schema", "shard", "bytes", "sha256", "samples"})
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown} in a shard index")
    if not isinstance(raw.get("shard"), str) or not _SHARD_TAR_RE.match(raw["shard"]):
        raise _bad(where, "shard", raw.get("shard"), "shard-NNNNNN.tar")
    if not is_int(raw.get("bytes"), 0):
        raise _bad(where, "bytes", raw.get("bytes"), "a non-negative integer")
    if not is_sha256(raw.get("sha256")):
        raise _bad(where, "sha256", raw.get("sha256"), "64 lower-case hex digits")
    if not isinstance(raw.get("samples"), list):
        raise _bad(where, "samples", raw.get("samples"), "a list of samples")
    index = ShardIndex(shard=raw["shard"], bytes=raw["bytes"], sha256=raw["sha256"])
    seen: set[str] = set()
    for i, s in enumerate(raw["samples"]):
        at = f"samples[{i}]"
        if not isinstance(s, dict) or set(s) != {"key", "offset", "size", "members"}:
            raise _bad(where, at, s, "an object with key, offset, size and members")
        try:
            key = validate_key(s["key"])
        except DataError as exc:
            raise DataError(f"{where}: {at}: {exc}") from None
        if key in seen:
            raise DataError(f"{where}: {at} key {key!r} is listed twice")
        seen.add(key)
        if not is_int(s["offset"], 0) or not is_int(s["size"], 0):
            raise _bad(where, f"{at} offset/size", (s["offset"], s["size"]), "non-negative integers")
        if not isinstance(s["members"], dict):
            raise _bad(where, f"{at} members", s["members"], "an object of member name -> span")
        members = {}
        for name, m in s["members"].items():
            try:
                validate_member(key, name)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            if not (isinstance(m, dict) and set(m) == {"offset", "size", "sha256"} and is_int(m["offset"], 0) and is_int(m["size"], 0) and is_sha256(m["sha256"])):
                raise _bad(where, f"member {key}.{name}", m, "{offset, size: non-negative integers, sha256: 64 hex digits}")
            members[name] = MemberSpan(m["offset"], m["size"], m["sha256"])
        index.samples.append(SampleSpan(key=key, offset=s["offset"], size=s["size"], members=members))
    for s in index.samples:
        if s.offset + s.size > index.bytes:
            raise DataError(f"{where}: sample {s.key} spans [{s.offset}, {s.offset + s.size}), outside the {index.bytes}-byte shard")
        for name, m in s.members.items():
            if m.offset < s.offset or m.end > s.offset + s.size:
                raise DataError(f"{where}: member {s.key}.{name} lies outside its sample's span")
    return index


def _bad(where: str, name: str, value: object, want: str) -> DataError:
    return DataError(f"{where}: {name} {shown(value)} must be {want}")


def load_index(manifest: Manifest, shard: ShardInfo, gate: ZoneGate) -> ShardIndex:
    """Reads the index of ``shard`` through ``gate`` and checks it against the manifest (sha256 of the index, shard size and sha256)."""
    if not shard.index:
        raise DataError(f"{manifest.shard_url(shard)}: the manifest lists no index for this shard (written before indexes existed); rewrite the dataset")
    url = objects.join_url(manifest.url, shard.index)
    data = gate.read(url, zone=manifest.zone)
    if shard.index_sha256 is not None and hashlib.sha256(data).hexdigest() != shard.index_sha256:
        raise DataError(f"{url}: sha256 does not match the manifest (corrupt or rewritten index); run `fsdtrain data verify`")
    index = parse_index(data, url)
    if (index.shard, index.bytes, index.sha256) != (shard.name, shard.bytes, shard.sha256):
        raise DataError(f"{url}: describes {index.shard} ({index.bytes} bytes), not the manifest's {shard.name} ({shard.bytes} bytes, same sha256 required)")
    return index


class IndexedShards:
    """Reads single clips or members of one manifest's shards with range requests, via the indexes.

    Indexes are fetched lazily and cached. Every range read is checked against the member's sha256
    in the index. Every read goes through ``gate``, which checks the residency rule
    (docs/residency.md) before any byte is requested.

    Args:
        manifest: a loaded manifest (its ``url`` locates the shards).
        gate: the job's zone gate.
    """

    def __init__(self, manifest: Manifest, gate: ZoneGate) -> None:
        self.manifest = manifest
        self.gate = gate
        self._indexes: dict[str, ShardIndex] = {}
        self._where: dict[str, str] | None = None

    def index(self, shard: ShardInfo) -> ShardIndex:
        if shard.name not in self._indexes:
            self._indexes[shard.name] = load_index(self.manifest, shard, self.gate)
        return self._indexes[shard.name]

    def keys(self) -> list[str]:
        """Every sample key, in shard order."""
        return [s.key for shard in self.manifest.shards for s in self.index(shard).samples]

    def locate(self, key: str) -> tuple[ShardInfo, SampleSpan]:
        """The shard holding ``key`` and the sample's span in it."""
        if self._where is None:
            self._where = {s.key: shard.name for shard in self.manifest.shards for s in self.index(shard).samples}
        name = self._where.get(key)
        if name is None:
            raise DataError(f"{self.manifest.url}: no sample {key!r} in any shard index")
        shard = next(s for s in self.manifest.shards if s.name == name)
        span = self.index(shard).sample(key)
        assert span is not None
        return shard, span

    def read_member(self, key: str, member: str) -> bytes:
        """One member (e.g. ``CAM_FRONT.mp4``) of one clip, read with one range request."""
        shard, span = self.locate(key)
        m = span.members.get(member)
        if m is None:
            raise DataError(f"{self.manifest.shard_url(shard)}:{key}: no member {member!r}; it has {sorted(span.members)}")
        data = self._read(shard, m.offset, m.end, sample=key)
        self._check(shard, key, member, m, data)
        return data

    def read_sample(self, key: str) -> dict[str, bytes]:
        """All members of one clip (a webdataset-style sample dict), read with one range request."""
        shard, span = self.locate(key)
        blob = self._read(shard, span.offset, span.offset + span.size, sample=key)
        out: dict[str, bytes] = {"__key__": key}
        for name, m in span.members.items():
            data = blob[m.offset - span.offset : m.end - span.offset]
            self._check(shard, key, name, m, data)
            out[name] = data
        return out

    def read_members(self, shard: ShardInfo, sample: int, names: list[str]) -> tuple[str, dict[str, bytes]]:
        """The members ``names`` of the ``sample``-th clip of ``shard``: ``(key, {name: bytes})``.

        Members that lie next to each other in the tar are read with one range request, so a clip's
        ``meta.json``, ``calib.json``, ``ego.npy`` and the cameras a loader reads cost one or two
        requests, whatever the shard's size; every member is checked against its sha256.
        """
        index = self.index(shard)
        if len(index.samples) != shard.samples:
            raise DataError(f"{self.manifest.shard_url(shard)}: its index lists {len(index.samples)} samples, the manifest {shard.samples}; run `fsdtrain data verify`")
        span = index.samples[sample]
        missing = [n for n in names if n not in span.members]
        if missing:
            raise DataError(f"{self.manifest.shard_url(shard)}:{span.key}: member(s) {', '.join(missing)} missing (the index lists {sorted(span.members)})")
        wanted = sorted(names, key=lambda n: span.members[n].offset)
        runs: list[list[str]] = []
        for name in wanted:  # members whose bytes (with the tar header between them) are adjacent
            if runs and span.members[name].offset - span.members[runs[-1][-1]].end <= _HEADER_GAP:
                runs[-1].append(name)
            else:
                runs.append([name])
        out: dict[str, bytes] = {}
        for run in runs:
            start, end = span.members[run[0]].offset, span.members[run[-1]].end
            blob = self._read(shard, start, end, sample=span.key) if end > start else b""  # an empty member: no request
            for name in run:
                m = span.members[name]
                data = blob[m.offset - start : m.end - start]
                self._check(shard, span.key, name, m, data)
                out[name] = data
        return span.key, out

    def _read(self, shard: ShardInfo, start: int, end: int, *, sample: str | None = None) -> bytes:
        return self.gate.read_range(
            self.manifest.shard_url(shard), zone=self.manifest.zone, byte_range=(start, end), sha256=shard.sha256, sample=sample
        )

    def _check(self, shard: ShardInfo, key: str, member: str, m: MemberSpan, data: bytes) -> None:
        if len(data) != m.size or hashlib.sha256(data).hexdigest() != m.sha256:
            raise DataError(
                f"{self.manifest.shard_url(shard)}:{key}.{member}: bytes at [{m.offset}, {m.end}) do not match the index "
                "(shard rewritten or corrupt); run `fsdtrain data verify`"
            )
