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
from fsdtrain.format.manifest import Manifest
from fsdtrain.residency import check_zone

__all__ = ["TarSample", "Clip", "read_tar", "shard_samples", "parse_clip", "manifest_expect", "check_same_size"]


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
                name = suffix if dot else ""
                if name in sample:  # a reader keeping either copy would read something verify did not check
                    issues.append(f"member {info.name} appears twice")
                    continue
                f = tar.extractfile(info)
                assert f is not None  # regular files always have data
                sample[name] = f.read()
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
    """Checks one sample against the clip schema and parses it: every field of ``meta.json`` (types,
    ranges, the zone the residency policy gives its country, ``clip_id`` equal to the key), of
    ``calib.json``, and ``ego.npy`` (header before data, finite values in range). Writer, verify and
    loader all call it, so a clip is valid or not in one place; only the videos are left undecoded.

    Args:
        key: the sample key.
        members: suffix -> bytes.
        cameras: cameras whose videos must be present (and are returned).
        where: ``<shard url>:<key>``, the start of every error line.
        known_cameras: when given, member names must be one of these cameras' videos (verify: the
            manifest's cameras); otherwise any camera name is accepted (a loader may read a subset).
        expect: called with the parsed ``meta.json`` before the other members are parsed (verify and
            the loader: the manifest's country, zone, cameras, fps and frames, and the site zone); raises
            DataError (or ResidencyError) to reject it.

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
    if meta.clip_id != key:
        raise DataError(f"{where}: meta.json clip_id {meta.clip_id!r} is not the sample's key {key!r}")
    if expect is not None:
        expect(meta)
    calib = schema.parse_calib(members["calib.json"], list(cameras), where)
    ego = schema.decode_ego(members["ego.npy"], meta.frames, where)
    return Clip(key, meta, calib, ego, {c: members[f"{c}.mp4"] for c in cameras})


def manifest_expect(m: Manifest, where: str, *, site_zone: str | None = None) -> Callable[[schema.ClipMeta], None]:
    """The ``expect`` of :func:`parse_clip` for a clip of manifest ``m`` (loader, verify): the clip's own
    ``meta.json`` zone must be readable at ``site_zone`` (when given; a
    :class:`~fsdtrain.residency.ResidencyError`), and its country, zone, cameras, fps and frames must be
    the manifest's (a :class:`DataError`). A shard copied under a manifest relabelled to another zone is
    refused here: each clip still says where it belongs."""

    def expect(meta: schema.ClipMeta) -> None:
        if site_zone is not None:
            check_zone(f"{where} (meta.json zone)", meta.zone, site_zone)
        for name, got, want in (
            ("country", meta.country, m.country),
            ("zone", meta.zone, m.zone),
            ("cameras", list(meta.cameras), list(m.cameras)),
            ("fps", float(meta.fps), float(m.fps)),
            ("frames", meta.frames, m.frames),
        ):
            if got != want:
                raise DataError(f"{where}: meta.json {name} is {got!r}, the manifest says {want!r}")

    return expect


def check_same_size(seen: dict[str, tuple[tuple[int, int], str]], clip: Clip, cameras: list[str], where: str, fix: str) -> None:
    """One resolution per camera (writer and verify: per shard directory; loader without
    ``data.image_size``: per stream): records each camera's ``calib.json`` size of the first clip in
    ``seen`` (camera -> (W, H), where), and raises a :class:`DataError` naming ``where``, the camera
    and both sizes, then ``fix``, for a clip whose size differs."""
    for cam in cameras:
        size = clip.calib[cam]["size"]
        first, at = seen.setdefault(cam, (size, where))
        if size != first:
            raise DataError(f"{where}: calib.json {cam}.size is {size[0]}x{size[1]}, {at} has {first[0]}x{first[1]}: {fix}")
