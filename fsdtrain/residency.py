"""Data residency: which zones a job may read, and the audit log of every shard it opened.

DESIGN.md §4: a job runs at a site with a zone (``site.zone`` or ``FSDTRAIN_SITE_ZONE``;
``global`` when undeclared). It may read a shard only when the shard's zone is ``global`` or
equals the site zone. The check runs before the first byte of a shard is requested.

Weights carry the zones each part was trained on (``trained_on_zones``: ``backbone`` and each head);
:class:`ExportPolicy` says which parts may leave the zone of their data, and ``fsdtrain export``
enforces it (:func:`check_export`) from the weights' metadata, before their tensors are read.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fsdtrain.errors import ConfigError, FsdtrainError

__all__ = [
    "GLOBAL_ZONE",
    "ResidencyError",
    "AuditLog",
    "ExportPolicy",
    "check_zone",
    "check_bucket_zone",
    "check_export",
    "part_zones",
    "resolve_site_zone",
    "validate_zone",
]

GLOBAL_ZONE = "global"
SITE_ZONE_ENV = "FSDTRAIN_SITE_ZONE"
_ZONE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class ResidencyError(FsdtrainError):
    """A job tried to read data whose zone does not allow this site."""


def validate_zone(zone: str, what: str = "zone") -> str:
    """Returns ``zone`` when it is a valid zone name (lower case, e.g. ``global``, ``cn``)."""
    if not isinstance(zone, str) or not _ZONE_RE.match(zone):
        raise ConfigError(f"{what} {zone!r} is not a zone name: use lower-case letters, digits and '-', e.g. 'global' or 'cn'")
    return zone


def resolve_site_zone(configured: str | None = None) -> str:
    """The zone this job runs in: the configured one, else ``$FSDTRAIN_SITE_ZONE``, else ``global``."""
    zone = configured or os.environ.get(SITE_ZONE_ENV) or GLOBAL_ZONE
    return validate_zone(zone, "site zone")


def check_zone(url: str, data_zone: str, site_zone: str) -> None:
    """Raises :class:`ResidencyError` unless a job at ``site_zone`` may read data of ``data_zone``."""
    if data_zone == GLOBAL_ZONE or data_zone == site_zone:
        return
    raise ResidencyError(
        f"residency: {url} is in zone '{data_zone}' but this job runs at site zone '{site_zone}'; "
        f"run it at a '{data_zone}' site (site.zone / {SITE_ZONE_ENV}={data_zone}) or drop that data"
    )


def check_bucket_zone(url: str, site_zone: str) -> None:
    """Before anything at ``url`` is requested: raises :class:`ResidencyError` when its bucket is tied
    to a zone this site may not read (``FSDTRAIN_BUCKET_ZONES``, set by the store's ``env()``).

    Training and evaluation jobs call this before they read a manifest, so a job at the wrong site
    never sends a request to another zone's bucket. URLs in buckets with no declared zone are
    checked from their manifest's zone instead (:func:`check_zone`).
    """
    from fsdtrain.store import objects

    where = objects.parse_url(url)
    zone = objects.bucket_zones().get(where.bucket) if where.scheme == "s3" else None
    if zone is not None:
        check_zone(url, zone, site_zone)


class AuditLog:
    """Append-only JSONL record of every shard a job opened (time, job, rank, url, zone, sha256).

    Each record is written with one ``write`` call on a file opened in append mode, so ranks and
    loader workers of one job can share the file without interleaving lines.
    """

    def __init__(self, path: str | os.PathLike | None, *, job: str, rank: int = 0) -> None:
        self.path = Path(path) if path else None
        self.job = job
        self.rank = rank
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, url: str, zone: str, sha256: str | None) -> None:
        if self.path is None:
            return
        line = json.dumps(
            {"time": time.time(), "job": self.job, "rank": self.rank, "url": url, "zone": zone, "sha256": sha256},
            sort_keys=True,
        )
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict]:
        """All records of an audit log, oldest first."""
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


@dataclass
class ExportPolicy:
    """Which parts of trained weights may leave the zone of the data they were trained on.

    Args:
        allow: data zone -> parts (head names such as ``CN``, or ``backbone``) whose weights, trained
            on that zone's data, may be exported outside it. A part not listed never leaves: exporting
            it needs a job at a site in that zone writing for that zone. Empty (the default): nothing
            trained on restricted data leaves its zone.
    """

    allow: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for zone, parts in self.allow.items():
            validate_zone(zone, "export policy zone")
            if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
                raise ConfigError(f"export policy: zone {zone!r} needs a list of parts (head names or 'backbone'), got {parts!r}")

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> ExportPolicy:
        """From a YAML file mapping zone -> parts (``cn: [CN]``); None gives the empty policy."""
        if path is None:
            return cls()
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"export policy {path}: unreadable ({type(exc).__name__}); give a YAML file like 'cn: [CN]'") from None
        if not isinstance(data, dict):
            raise ConfigError(f"export policy {path}: must map zones to parts, like 'cn: [CN]'")
        return cls(allow={str(k): v for k, v in data.items()})


def part_zones(meta: dict, parts: list[str]) -> dict[str, list[str]]:
    """Zones each of ``parts`` was trained on, from weights metadata (``trained_on_zones``; weights
    written before it have only ``zones``, which then count for every part)."""
    per_part = meta.get("trained_on_zones") or {}
    return {p: list(per_part.get(p, meta.get("zones", []))) for p in parts}


def check_export(zones_by_part: dict[str, list[str]], *, site_zone: str, dest_zone: str, policy: ExportPolicy, source: str) -> None:
    """Raises :class:`ResidencyError` unless every part may be read at ``site_zone`` and written for
    ``dest_zone``: each restricted zone it was trained on equals both, or the policy lets the part leave it."""
    for part, zones in sorted(zones_by_part.items()):
        for zone in zones:
            if zone == GLOBAL_ZONE or (zone == site_zone == dest_zone) or part in policy.allow.get(zone, []):
                continue
            where = f"this export runs at site zone '{site_zone}'" if site_zone != zone else f"this export is for zone '{dest_zone}'"
            raise ResidencyError(
                f"residency: {part} in {source} was trained on zone '{zone}' data and may not leave it, but {where}; "
                f"export it at a '{zone}' site for '{zone}' (--site-zone/--dest-zone {zone}), or allow it in the export policy "
                f"('{zone}: [{part}]') if your approval lets it leave"
            )
