"""Data residency: which zones a job may read, and the audit log of every shard it opened.

DESIGN.md §4: a job runs at a site with a zone (``site.zone`` or ``FSDTRAIN_SITE_ZONE``;
``global`` when undeclared). It may read a shard only when the shard's zone is ``global`` or
equals the site zone. The check runs before the first byte of a shard is requested.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from fsdtrain.errors import ConfigError, FsdtrainError

__all__ = ["GLOBAL_ZONE", "ResidencyError", "AuditLog", "check_zone", "check_bucket_zone", "resolve_site_zone", "validate_zone"]

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
