"""Tar shards -> clip samples, and the one validator of a clip sample (docs/data-format.md).

:func:`read_tar` is the only tar reader: consecutive members with one key (a member's name up to
its first dot) form a sample, which is webdataset's grouping rule, so stock webdataset reads the
same shards. :func:`shard_samples` adds what a reader of a whole shard needs (checksum, readable
archive, sample count); :func:`parse_clip` checks one sample against the clip schema and returns
its parsed members. The loader (:mod:`fsdtrain.data.stream`) and ``fsdtrain data verify``
(:mod:`fsdtrain.format.verify`) both use them, so a sample is valid or not in one place.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fsdtrain.errors import DataError
from fsdtrain.format import schema

__all__ = ["TarSample", "Clip", "read_tar", "shard_samples", "parse_clip"]


@dataclass
class TarSample:
    """One sample of a tar: its key, members (suffix -> bytes) and the problem that broke it (None: read whole)."""

    key: str
    members: dict[str, bytes]
    problem: str | None = None


@dataclass
class Clip:
    """A validated clip sample: parsed ``meta.json``, ``calib.json`` (per camera ``K``, ``T_cam_to_ego``,
    ``size``), ``ego.npy`` float64 [frames, 6] and the camera videos (undecoded)."""

    key: str
    meta: schema.ClipMeta
    calib: dict[str, dict[str, np.ndarray]]
    ego: np.ndarray
    videos: dict[str, bytes]


def read_tar(data: bytes) -> Iterator[TarSample]:
    """The samples of a tar, in order. Members that are not regular files are named in their
    sample's problem; an unreadable archive ends the iteration with a sample whose problem names
    the sample it broke in (key ``(start)`` when it broke before the first)."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    issues: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                base, dot, suffix = info.name.partition(".")
                if base != key:
                    if key is not None:
                        yield TarSample(key, sample, "; ".join(issues) or None)
                    key, sample, issues = base, {}, []
                if not info.isfile():
                    issues.append(f"member {info.name} is not a regular file")
                    continue
                f = tar.extractfile(info)
                assert f is not None  # regular files always have data
                sample[suffix if dot else ""] = f.read()
    except tarfile.TarError as exc:
        where = f"in sample {key}" if key else "at its start"
        yield TarSample(key or "(start)", {}, f"tar unreadable {where} ({exc}): truncated or corrupt")
        return
    if key is not None:
        yield TarSample(key, sample, "; ".join(issues) or None)


def shard_samples(data: bytes, url: str, *, sha256: str, samples: int) -> list[TarSample]:
    """Every sample of a whole shard, after checking it against its manifest entry.

    Raises:
        DataError: the sha256 or sample count differs from the manifest, or the tar is unreadable
            or holds a member that is not a regular file (one line naming the shard).
    """
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{url}: sha256 does not match the manifest (corrupt or rewritten shard); run `fsdtrain data verify`")
    out = []
    for sample in read_tar(data):
        if sample.problem:
            raise DataError(f"{url}: not a readable tar shard ({sample.key}: {sample.problem})")
        out.append(sample)
    if len(out) != samples:
        raise DataError(f"{url}: has {len(out)} samples, the manifest says {samples}")
    return out


def parse_clip(
    key: str, members: dict[str, bytes], cameras: list[str], where: str, *,
    known_cameras: list[str] | None = None, expect: Callable[[schema.ClipMeta], None] | None = None,
) -> Clip:  # fmt: skip
    """Checks one sample against the clip schema and parses it.

    Args:
        key: the sample key.
        members: suffix -> bytes.
        cameras: cameras whose videos must be present (and are returned).
        where: ``<shard url>:<key>``, the start of every error line.
        known_cameras: when given, member names must be one of these cameras' videos (verify: the
            manifest's cameras); otherwise any camera name is accepted (a loader may read a subset).
        expect: called with the parsed ``meta.json`` before the other members are parsed (verify:
            the manifest's country, zone, cameras, fps and frames); raises DataError to reject it.

    Raises:
        DataError: at the first way the sample breaks the schema, naming ``where``.
    """
    try:
        schema.validate_key(key)
        for suffix in members:
            schema.validate_member(key, suffix, known_cameras)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    missing = [m for m in schema.FIXED_MEMBERS + tuple(f"{c}.mp4" for c in cameras) if m not in members]
    if missing:
        raise DataError(f"{where}: member(s) {', '.join(missing)} missing")
    meta = schema.parse_meta(members["meta.json"], where)
    if expect is not None:
        expect(meta)
    calib = schema.parse_calib(members["calib.json"], list(cameras), where)
    ego = schema.decode_npy(members["ego.npy"], f"{where}/ego.npy")
    if ego.shape != (meta.frames, len(schema.EGO_FIELDS)) or ego.dtype != np.float64:
        raise DataError(f"{where}: ego.npy is {ego.dtype}{list(ego.shape)}, expected float64[{meta.frames}, 6]")
    return Clip(key, meta, calib, ego, {c: members[f"{c}.mp4"] for c in cameras})
