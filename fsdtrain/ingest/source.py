"""Where ``fsdtrain data write`` reads raw drives from: a local folder or an ``s3://`` prefix.

A local folder is read in place (:func:`~fsdtrain.ingest.raw.find_drives`). Under an ``s3://``
prefix a drive is a "folder" of objects, ``<prefix>/<drive_id>/drive.json`` and the rest of the
layout of docs/data-format.md (or the prefix itself, when it holds ``drive.json``); its objects are
copied into a local folder before it is read, because videos are decoded from files and checked
whole before anything is written. Raw drives are fleet data, so every request goes through the
job's :class:`~fsdtrain.store.gate.ZoneGate`: the listing and ``drive.json`` after the bucket's zone
check, then, once ``drive.json`` names the drive's zone, the zone check (the site may read it, and
the zone is the one the residency policy gives the drive's country) and an audit record before
each of the drive's other objects is requested.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fsdtrain.errors import DataError
from fsdtrain.ingest.raw import DRIVE_JSON, display_name, find_drives
from fsdtrain.residency import check_country_zone
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate

__all__ = ["DriveSource"]

_FETCH_THREADS = 8  # concurrent object requests while copying one drive (the requests wait on the network)


class DriveSource:
    """The raw drives under ``raw`` (a local folder or an ``s3://`` prefix), sorted by name.

    Args:
        raw: local folder (or ``file://`` URL) of drive folders or one drive folder; or ``s3://bucket/prefix``.
        gate: the job's zone gate; every request for an ``s3://`` drive goes through it.

    Raises:
        ConfigError: a local ``raw`` is not a folder.
        DataError: no drives under ``raw``.
        ResidencyError: the bucket's zone may not be read at the gate's site.
        StoreError: the prefix cannot be listed.
    """

    def __init__(self, raw: str, gate: ZoneGate) -> None:
        self.raw = raw
        self.gate = gate
        self.remote = raw.startswith("s3://")
        self.url = objects.join_url(raw)  # normalized: a run's identity does not depend on how raw was spelled
        self._local: dict[str, Path] = {}
        self._one = False
        self._files: dict[str, list[str]] = {}  # drive name -> its objects, relative to the drive's prefix
        if not self.remote:
            path = objects.parse_url(raw).key if raw.startswith("file://") else raw
            self._local = {p.name: p for p in find_drives(path)}
            self.names = list(self._local)
            return
        self._base = objects.join_url(raw)
        rels = [url[len(self._base) + 1 :] for url in gate.list_keys(self._base)]
        self._one = DRIVE_JSON in rels  # the prefix is one drive
        if self._one:
            self._files = {self._base.rsplit("/", 1)[-1]: [r for r in rels if not r.startswith(".")]}
        else:
            for rel in rels:
                drive, sep, rest = rel.partition("/")
                if sep and not drive.startswith("."):  # top-level objects and hidden folders are not drives
                    self._files.setdefault(drive, []).append(rest)
        if not self._files:
            raise DataError(f"no drives under {raw}: each drive is a folder with drive.json, calib.json, poses.csv and camera files (docs/data-format.md)")
        self.names = sorted(self._files, key=os.fsencode)

    def __repr__(self) -> str:
        return f"DriveSource({self.raw!r}, {len(self.names)} drives)"

    def identity(self) -> list:
        """What names this source's content for a run's identity: where it is, the drive names, and for
        ``s3://`` each drive's object names."""
        return [self.url, [[n, sorted(self._files.get(n, []))] for n in self.names]]

    def local(self, name: str, tmp: Path) -> Path:
        """The local folder of drive ``name``: in place for a local source, else a copy under ``tmp``.

        Raises:
            DataError: an object name that is not a drive file (deeper than ``<CAM>/<frame>.jpg``, ``..``),
                ``drive.json``'s zone is not its country's, or the drive lacks ``drive.json``.
            ResidencyError: the site may not read the drive's zone.
            StoreError: an object cannot be read.
        """
        if not self.remote:
            return self._local[name]
        where = f"drive {display_name(name)}"
        rels = self._files[name]
        for rel in rels:
            parts = rel.split("/")
            if len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
                raise DataError(f"{where}: object {rel!r} under {self.raw} is not a drive file (docs/data-format.md: files, or <CAM>/<timestamp_us>.jpg)")
        folder = Path(tmp) / name
        folder.mkdir(parents=True, exist_ok=True)
        url = self._base if self._one else objects.join_url(self._base, name)
        if DRIVE_JSON not in rels:
            return folder  # load_drive reports the missing drive.json
        info = self.gate.read(objects.join_url(url, DRIVE_JSON))  # its zone is not known before it is read: the bucket check alone
        (folder / DRIVE_JSON).write_bytes(info)
        zone = _declared_zone(info, where)
        if zone is None:
            return folder  # load_drive reports what is wrong with drive.json; nothing else is requested
        self.gate.check_data(url, zone)

        def fetch(rel: str) -> None:
            data = self.gate.read(objects.join_url(url, rel), zone=zone)  # checked and recorded before the request
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

        with ThreadPoolExecutor(_FETCH_THREADS) as pool:
            list(pool.map(fetch, [r for r in rels if r != DRIVE_JSON]))
        return folder


def _declared_zone(data: bytes, where: str) -> str | None:
    """The zone ``drive.json`` declares, once it is the residency policy's zone for the declared
    country; None when the file is not readable JSON with both (:func:`~fsdtrain.ingest.raw.load_drive`
    then reports the problem in full)."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("zone"), str) or not isinstance(raw.get("country"), str):
        return None
    reason = check_country_zone(raw["country"], raw["zone"])
    if reason:  # refused before any of the drive's data is requested
        raise DataError(f"{where}: {DRIVE_JSON}: {reason}")
    return raw["zone"]
