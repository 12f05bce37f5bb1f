"""``manifest.json``: what a ``<root>/<dataset>/<split>/<country>/`` directory of shards holds.

Fields: ``dataset``, ``split``, ``country``, ``zone``, ``schema``, ``cameras``, ``fps``, ``frames``
(frames per clip), and per shard ``name``, ``samples``, ``bytes``, ``sha256``, plus ``index`` and
``index_sha256`` (the shard's range-read index, :mod:`fsdtrain.format.index`; absent in manifests
written before indexes existed, which still load). The manifest is written last, so a directory
with a manifest is complete (docs/data-format.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from fsdtrain.errors import ConfigError, DataError, StoreError
from fsdtrain.format.schema import SCHEMA
from fsdtrain.residency import validate_zone
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate

__all__ = ["MANIFEST_NAME", "ShardInfo", "Manifest", "load_manifest", "save_manifest", "dataset_name", "validate_split"]

MANIFEST_NAME = "manifest.json"
_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
_INDEX_RE = re.compile(r"^shard-\d{6}\.index\.json$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


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
        raw = json.loads(gate.read(murl))
    except StoreError as exc:
        if "no such" in str(exc):
            raise DataError(f"no manifest at {murl}: is {url} a shard directory written by `fsdtrain data synth`/`data write`?") from None
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{murl}: not valid JSON ({exc})") from None
    try:
        shards = [ShardInfo(**s) for s in raw.pop("shards")]
        m = Manifest(**raw, shards=shards)
    except (TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{murl}: fields do not match the manifest format ({exc})") from None
    if m.schema != SCHEMA:
        raise DataError(f"{murl}: schema {m.schema!r}, this fsdtrain reads {SCHEMA!r}")
    validate_zone(m.zone, f"{murl}: zone")
    for s in m.shards:
        if not _SHARD_RE.match(s.name):
            raise DataError(f"{murl}: shard name {s.name!r} is not shard-NNNNNN.tar")
        if s.index is not None and not _INDEX_RE.match(s.index):
            raise DataError(f"{murl}: index name {s.index!r} of {s.name} is not shard-NNNNNN.index.json")
    m.url = url.rstrip("/")
    if check_zone:
        gate.check_data(url, m.zone)
    return m


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
