"""``manifest.json``: what a ``<root>/<dataset>/<split>/<country>/`` directory of shards holds.

Fields: ``dataset``, ``split``, ``country``, ``zone``, ``schema``, ``cameras``, ``fps``, ``frames``
(frames per clip), and per shard ``name``, ``samples``, ``bytes``, ``sha256``, plus ``index`` and
``index_sha256`` (the shard's range-read index, :mod:`fsdtrain.format.index`; absent in manifests
written before indexes existed, which still load). The manifest is written last, so a directory
with a manifest is complete (docs/data-format.md).

:func:`parse_manifest` checks every field for type and range where a manifest is read (``fps`` 0 or
a string count is one :class:`~fsdtrain.errors.DataError` naming the manifest and the field, never a
``ZeroDivisionError`` or ``TypeError`` later), and the zone against the residency policy for the
country (:func:`fsdtrain.residency.check_country_zone`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields

from fsdtrain.errors import ConfigError, DataError, StoreError
from fsdtrain.format.schema import (
    MAX_FPS,
    MAX_FRAMES,
    SCHEMA,
    fields_problem,
    is_camera_list,
    is_country,
    is_int,
    is_number,
    is_sha256,
    shown,
    strict_json,
)
from fsdtrain.residency import check_country_zone, validate_zone
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate

__all__ = ["MANIFEST_NAME", "ShardInfo", "Manifest", "parse_manifest", "load_manifest", "save_manifest", "dataset_name", "validate_split"]

MANIFEST_NAME = "manifest.json"
_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
_INDEX_RE = re.compile(r"^shard-\d{6}\.index\.json$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f]{1,256}$")


@dataclass
class ShardInfo:
    """One shard of a manifest: its file name, clip count, size, checksum, and its index file."""

    name: str
    samples: int
    bytes: int
    sha256: str
    index: str | None = None
    """``shard-NNNNNN.index.json`` next to the shard, or None (manifests from before indexes)."""
    index_sha256: str | None = None
    """sha256 of the index file."""


@dataclass
class Manifest:
    dataset: str
    split: str
    country: str
    zone: str
    cameras: list[str]
    fps: float
    frames: int
    shards: list[ShardInfo] = field(default_factory=list)
    schema: str = SCHEMA
    url: str = ""  # where it was loaded from (directory URL); not serialized

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def shard_url(self, shard: ShardInfo) -> str:
        return objects.join_url(self.url, shard.name)

    def to_json(self) -> bytes:
        d = asdict(self)
        d.pop("url")
        return json.dumps(d, indent=1, sort_keys=True).encode()

    def digest(self) -> str:
        """sha256 of the serialized manifest: identifies exactly which data a run used."""
        return hashlib.sha256(self.to_json()).hexdigest()


def load_manifest(url: str, gate: ZoneGate, *, check_zone: bool = True) -> Manifest:
    """Loads ``<url>/manifest.json`` (``url`` is the shard directory) through ``gate`` and validates it.

    With ``check_zone`` (the default) the manifest's zone must be readable at the gate's site zone
    (a :class:`~fsdtrain.residency.ResidencyError` otherwise), so its shards may be read next;
    ``fsdtrain data inspect`` lists manifests of any zone whose bucket it may read.
    """
    murl = objects.join_url(url, MANIFEST_NAME)
    try:
        raw = strict_json(gate.read(murl))
    except StoreError as exc:
        if "no such" in str(exc):
            raise DataError(f"no manifest at {murl}: is {url} a shard directory written by `fsdtrain data synth`/`data write`?") from None
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{murl}: not valid JSON ({type(exc).__name__}: {exc})") from None
    m = parse_manifest(raw, murl)
    m.url = url.rstrip("/")
    if check_zone:
        gate.check_data(url, m.zone)
    return m


def _bad(murl: str, name: str, value: object, want: str) -> DataError:
    return DataError(f"{murl}: {name} {shown(value)} must be {want}")


def parse_manifest(raw: object, murl: str) -> Manifest:
    """A manifest's JSON -> :class:`Manifest`, every field checked for type and range (the zone also
    against the residency policy for the country); a :class:`DataError` of one line naming ``murl``
    and the field otherwise. :func:`load_manifest` calls it; it is separate for tests and tools."""
    if not isinstance(raw, dict):
        raise DataError(f"{murl}: must hold a JSON object, got {type(raw).__name__}")
    names = {f.name for f in fields(Manifest)} - {"url"}
    problem = fields_problem(raw, names, names - {"schema"})
    if problem:
        raise DataError(f"{murl}: fields do not match the manifest format: {problem}")
    if raw.get("schema", SCHEMA) != SCHEMA:
        raise DataError(f"{murl}: schema {raw['schema']!r}, this fsdtrain reads {SCHEMA!r}")
    if not isinstance(raw["dataset"], str) or not _NAME_RE.match(raw["dataset"]):
        raise _bad(murl, "dataset", raw["dataset"], "a name of 1-256 characters without '/' or control characters")
    if not isinstance(raw["split"], str) or not _SPLIT_RE.match(raw["split"]):
        raise _bad(murl, "split", raw["split"], "1-32 characters of [A-Za-z0-9_-]")
    if not is_country(raw["country"]):
        raise _bad(murl, "country", raw["country"], "an ISO 3166-1 alpha-2 code such as 'CN'")
    try:
        validate_zone(raw["zone"], "zone")
    except ConfigError:
        raise _bad(murl, "zone", raw["zone"], "a zone name such as 'global' or 'cn'") from None
    reason = check_country_zone(raw["country"], raw["zone"])
    if reason:
        raise DataError(f"{murl}: {reason}")
    cams = raw["cameras"]
    if not is_camera_list(cams):
        raise _bad(murl, "cameras", cams, "a non-empty list of distinct camera names of [A-Za-z0-9_]")
    fps = raw["fps"]
    if not is_number(fps, 0.0, MAX_FPS, open_low=True):
        raise _bad(murl, "fps", fps, f"a number in (0, {MAX_FPS:g}]")
    if not is_int(raw["frames"], 1, MAX_FRAMES):
        raise _bad(murl, "frames", raw["frames"], f"an integer in [1, {MAX_FRAMES}] (frames per clip)")
    if not isinstance(raw["shards"], list) or not raw["shards"]:
        raise _bad(murl, "shards", raw["shards"], "a non-empty list of shards")
    shards = [_parse_shard(s, f"{murl}: shards[{i}]") for i, s in enumerate(raw["shards"])]
    seen: set[str] = set()
    for i, s in enumerate(shards):
        if s.name in seen:  # its clips would be read twice per epoch
            raise DataError(f"{murl}: shards[{i}] name {s.name!r} is listed twice")
        seen.add(s.name)
        if s.index is not None and s.index != s.name[: -len(".tar")] + ".index.json":
            raise DataError(f"{murl}: index name {s.index!r} of {s.name} is not shard-NNNNNN.index.json of that shard")
    return Manifest(
        dataset=raw["dataset"], split=raw["split"], country=raw["country"], zone=raw["zone"], cameras=list(cams),
        fps=float(fps), frames=raw["frames"], shards=shards,
    )  # fmt: skip


def _parse_shard(raw: object, where: str) -> ShardInfo:
    if not isinstance(raw, dict):
        raise DataError(f"{where} must be a JSON object, got {type(raw).__name__}")
    problem = fields_problem(raw, {f.name for f in fields(ShardInfo)}, {"name", "samples", "bytes", "sha256"})
    if problem:
        raise DataError(f"{where}: fields do not match the manifest format: {problem}")
    if not isinstance(raw["name"], str) or not _SHARD_RE.match(raw["name"]):
        raise _bad(where, "name", raw["name"], "shard-NNNNNN.tar")
    if not is_int(raw["samples"], 1):
        raise _bad(where, "samples", raw["samples"], "a positive integer (clips in the shard)")
    if not is_int(raw["bytes"], 1):
        raise _bad(where, "bytes", raw["bytes"], "a positive integer (the shard's size)")
    for name in ("sha256", "index_sha256"):
        value = raw.get(name)
        if (name == "sha256" or value is not None) and not is_sha256(value):
            raise _bad(where, name, value, "64 lower-case hex digits")
    index = raw.get("index")
    if index is not None and not (isinstance(index, str) and _INDEX_RE.match(index)):
        raise DataError(f"{where}: index name {index!r} of {raw['name']} is not shard-NNNNNN.index.json")
    return ShardInfo(**raw)


def save_manifest(url: str, manifest: Manifest) -> None:
    objects.write_bytes(objects.join_url(url, MANIFEST_NAME), manifest.to_json())


def dataset_name(out: str) -> str:
    """The dataset a ``<root>/<dataset>`` URL names: its last path component (or the bucket)."""
    u = objects.parse_url(out)
    name = u.key.rstrip("/").rsplit("/", 1)[-1] or u.bucket
    if not name:
        raise ConfigError(f"--out {out} has no last path component to name the dataset; use e.g. file:///data/fleet")
    return name


def validate_split(split: str) -> str:
    """Returns ``split`` when it can name a split directory (``train``, ``val``, ``test``...)."""
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ConfigError(f"split {split!r} must be 1-32 characters of [A-Za-z0-9_-], e.g. 'train'")
    return split
