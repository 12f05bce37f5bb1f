"""The one door to fleet data: a zone-aware reader made once per job with the job's site zone.

Every read of fleet data (listings, manifests, indexes, shards, range reads) goes through a
:class:`ZoneGate`. Before a request leaves the process the gate checks the URL's bucket zone
(``FSDTRAIN_BUCKET_ZONES``, read when the gate is made) and, where the caller knows it, the data's
own zone (the manifest's); shard reads are written to the audit log first. The residency rule
itself (who may read what) is :func:`fsdtrain.residency.check_zone`; this module is where it is
applied, so a new read path cannot forget it and no layer above repeats it (docs/residency.md).

Writes (``fsdtrain data write/synth``) go to :mod:`fsdtrain.store.objects` directly: they carry
the zone they write in the manifest, and the store's per-zone keys refuse the wrong bucket.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fsdtrain.residency import ResidencyError, check_zone, resolve_site_zone
from fsdtrain.store import objects

__all__ = ["AuditLog", "ZoneGate"]


class AuditLog:
    """Append-only JSONL record of every shard or clip a job requested (time, job, rank, pid, url, zone,
    sha256, and for a range read the sample key and byte range).

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

    def record(
        self, url: str, zone: str, sha256: str | None, *, sample: str | None = None, byte_range: tuple[int, int] | None = None
    ) -> None:
        """One request: ``sha256`` is the whole shard's; ``sample`` and ``byte_range`` name the part of
        it a range read asked for; ``pid`` tells the loader workers of one rank apart."""
        if self.path is None:
            return
        entry = {"time": time.time(), "job": self.job, "rank": self.rank, "pid": os.getpid(), "url": url, "zone": zone, "sha256": sha256}
        if sample is not None:
            entry["sample"] = sample
        if byte_range is not None:
            entry["range"] = list(byte_range)
        line = json.dumps(entry, sort_keys=True)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def __getstate__(self) -> dict:  # loader workers started by spawn get their own lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict]:
        """All records of an audit log, oldest first."""
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


class ZoneGate:
    """Reads fleet data for a job at one site zone; refuses, before any request, what the zone may not read.

    Args:
        site_zone: the zone this job runs in; None means ``$FSDTRAIN_SITE_ZONE`` or ``global``.
        audit: where shard reads are recorded (None: not recorded).

    Raises:
        ConfigError: the site zone or ``FSDTRAIN_BUCKET_ZONES`` is malformed.
    """

    def __init__(self, site_zone: str | None = None, *, audit: AuditLog | None = None) -> None:
        self.site_zone = resolve_site_zone(site_zone)
        self.audit = audit
        self.bucket_zones = objects.bucket_zones()

    def __repr__(self) -> str:
        return f"ZoneGate(site_zone={self.site_zone!r})"

    # --- checks, before any request ---------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """Raises :class:`~fsdtrain.residency.ResidencyError` when ``url``'s bucket is tied to a zone
        this site may not read. URLs in buckets with no declared zone are checked from their
        manifest's zone instead (:meth:`check_data`)."""
        where = objects.parse_url(url)
        zone = self.bucket_zones.get(where.bucket) if where.scheme == "s3" else None
        if zone is not None:
            check_zone(url, zone, self.site_zone)

    def check_urls(self, urls: list[str]) -> None:
        """:meth:`check_url` for every URL, so a job given one forbidden URL sends no request at all."""
        for url in urls:
            self.check_url(url)

    def check_data(self, url: str, data_zone: str) -> None:
        """Raises :class:`~fsdtrain.residency.ResidencyError` unless this site may read data of ``data_zone``."""
        check_zone(url, data_zone, self.site_zone)

    # --- reads ------------------------------------------------------------------------------------

    def read(
        self, url: str, *, zone: str | None = None, byte_range: tuple[int, int] | None = None,
        sha256: str | None = None, sample: str | None = None,
    ) -> bytes:  # fmt: skip
        """An object's bytes (or ``[start, end)`` of them) after the bucket check and, given the data's
        ``zone``, the zone check and an audit record (with the shard's ``sha256`` and the ``sample``
        a range belongs to, where the caller knows them). Without a zone (a manifest, whose zone is
        not known before it is read) the bucket check alone applies and nothing is recorded."""
        self.check_url(url)
        if zone is not None:
            self.check_data(url, zone)
            if self.audit is not None:
                self.audit.record(url, zone, sha256, sample=sample, byte_range=byte_range)
        return objects.read_bytes(url, byte_range=byte_range)

    def read_shard(self, url: str, *, zone: str, sha256: str | None) -> bytes:
        """A whole shard: checked, recorded in the audit log, then requested."""
        return self.read(url, zone=zone, sha256=sha256)

    def read_range(
        self, url: str, *, zone: str, byte_range: tuple[int, int], sha256: str | None = None, sample: str | None = None
    ) -> bytes:
        """``[start, end)`` of a shard (members of one clip): checked, recorded with the sample key and
        range, then requested."""
        return self.read(url, zone=zone, byte_range=byte_range, sha256=sha256, sample=sample)

    def copy(self, src: str, dst: str, *, zone: str, sha256: str | None = None) -> None:
        """A copy inside the store (server-side on S3: the bytes stay in the store, past any check a
        client could make on them): both URLs checked as reads of data of ``zone``, and a target bucket
        tied to a zone must be tied to this one (CN data never lands in a global bucket); the source
        recorded in the audit log, then requested."""
        for url in (src, dst):
            self.check_url(url)
            self.check_data(url, zone)
        where = objects.parse_url(dst)
        bucket_zone = self.bucket_zones.get(where.bucket) if where.scheme == "s3" else None
        if bucket_zone is not None and bucket_zone != zone:
            raise ResidencyError(
                f"residency: {dst} is in a bucket of zone '{bucket_zone}'; data of zone '{zone}' is not copied there "
                f"(a bucket holds its own zone's data: write it under a bucket of zone '{zone}')"
            )
        if self.audit is not None:
            self.audit.record(src, zone, sha256)
        objects.copy(src, dst)

    def exists(self, url: str) -> bool:
        self.check_url(url)
        return objects.exists(url)

    def list_keys(self, url: str) -> Iterator[str]:
        """URLs of all objects under a prefix, sorted (a listing is a request too: checked first)."""
        self.check_url(url)
        return objects.list_keys(url)
