"""``fsdtrain data write --raw``: raw drives (docs/data-format.md) -> clips -> shards per country.

Per drive (:func:`cut_drive`): the usable span is where the poses and every camera overlap; frame
times lie on a regular grid at ``fps`` from the span's start (``t_k = start + round(k * 1e6 / fps)``
microseconds); consecutive runs of ``clip_seconds * fps`` frames become clips, a shorter tail is
dropped. Poses are resampled onto the frame times (:func:`resample_poses`: linear in x/y, linear
in unwrapped yaw), ``ego.npy`` is computed from them (:func:`ego_array`), and each camera
contributes the frame nearest each frame time, re-encoded as H.264 with the requested GOP (given
videos are always re-encoded, never re-muxed: one code path, one GOP and colour conversion for
every clip).

The run has two passes so that bad input is found before anything is written: first every drive
is read and checked (:func:`~fsdtrain.ingest.raw.load_drive`, :func:`cut_drive`, and consistency
between drives of one country), then the good drives are encoded in parallel, each into a private
temporary folder, and handed to the shard writers whole, in drive order. A drive that fails while
encoding (an unreadable frame) therefore adds nothing. Manifests are saved only after the last
drive, so an aborted run publishes no manifest, removes the shards it wrote and leaves a dataset
already in ``out`` as it was (replacing one needs ``replace``; :class:`~fsdtrain.format.writer.ShardWriter`).
The output depends only on the input and the settings, not on ``workers``, nor on whether the
run is written whole or in parts (``--part I/N``, :mod:`fsdtrain.ingest.parts`): drives form
groups of ``group_drives`` in name order, a shard never holds clips of two groups, and parts take
whole groups. Drives under an ``s3://`` prefix are copied to the temporary folder through the zone
gate (:mod:`fsdtrain.ingest.source`) before they are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsdtrain.errors import ConfigError, DataError, StoreError
from fsdtrain.format.manifest import Manifest, dataset_name, validate_split
from fsdtrain.format.motion import check_motion
from fsdtrain.format.schema import FIXED_MEMBERS, ClipMeta, clip_key, decode_ego, encode_npy
from fsdtrain.format.video import encode_video
from fsdtrain.format.windows import WindowSpec
from fsdtrain.format.writer import ShardSet, ShardWriter, publish_all, survey
from fsdtrain.ingest.parts import IngestRun, PartSpec, group_of
from fsdtrain.ingest.raw import CameraReader, RawDrive, RawLimits, display_name, load_drive
from fsdtrain.ingest.source import DriveSource
from fsdtrain.pools import fork_pool
from fsdtrain.store import objects
from fsdtrain.store.gate import AuditLog, ZoneGate

__all__ = [
    "DriveCut",
    "cut_drive",
    "resample_poses",
    "ego_array",
    "clip_egos",
    "drive_samples",
    "SkippedDrive",
    "IngestSummary",
    "CountryWriters",
    "write_drives",
]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DriveCut:
    """Where a drive's clips lie: frame times and, per camera, the raw frame used for each."""

    drive: RawDrive
    fps: float
    clip_frames: int
    t_us: np.ndarray  # [clips * clip_frames] int64 frame times
    frame_index: dict[str, np.ndarray]  # camera -> [clips * clip_frames] index of its nearest raw frame

    @property
    def clips(self) -> int:
        return len(self.t_us) // self.clip_frames


def window_rate_problem(fps: float, spec: WindowSpec | None = None) -> str | None:
    """Why windows (default: the default :class:`~fsdtrain.format.windows.WindowSpec`) cannot be cut
    from clips at ``fps``, or None when they can; the window spec owns the rule."""
    spec = spec or WindowSpec()
    try:
        spec.current_frames(int(round(60 * fps)) + 1, fps)
    except (ConfigError, DataError) as exc:
        return str(exc)
    return None


def usable_rates(below: float = 60.0) -> list[int]:
    """Whole output rates up to ``below`` Hz that the default windows can use."""
    return [r for r in range(1, int(below) + 1) if window_rate_problem(float(r)) is None]


def _rates_text(rates: list[int]) -> str:
    return ", ".join(str(r) for r in rates[:8]) + (", ..." if len(rates) > 8 else "") if rates else "none"


def cut_drive(drive: RawDrive, *, fps: float, clip_frames: int, limits: RawLimits | None = None) -> DriveCut:
    """Frame grid, clips and nearest camera frames of one drive; DataError when no clip fits or a camera lacks frames.

    Each frame time takes each camera's nearest frame (ties: the earlier). A camera slower than
    ``limits.min_camera_rate x fps`` is refused (it would repeat frames); otherwise a frame more than
    ``limits.frame_tolerance`` of the longer of the output and the camera's period away (dropped
    frames) is.
    """
    limits = limits or RawLimits()
    where = drive.where
    for cam, src in drive.cameras.items():
        if len(src.t_us) > 1:
            steps = np.diff(src.t_us)
            steps = steps[steps <= 1.5 * np.median(steps)]  # dropped frames left out: the tolerance below names them
            rate = 1e6 / float(steps.mean())  # the mean, not the median: a camera at 50/100/100 ms runs at 12 Hz
            if rate < limits.min_camera_rate * fps:
                ok = usable_rates(rate)
                hint = f"use --fps {ok[-1]} (whole rates up to the camera's that the windows can use: {_rates_text(ok)})" if ok else "no output rate the windows can use fits this camera"
                raise DataError(f"{where}: {cam} runs at {rate:.3g} Hz (mean frame interval), too slow for --fps {fps:g}: "
                                f"it would repeat more than one frame in ten; {hint}")  # fmt: skip
    starts = [int(drive.poses.t_us[0])] + [int(c.t_us[0]) for c in drive.cameras.values()]
    ends = [int(drive.poses.t_us[-1])] + [int(c.t_us[-1]) for c in drive.cameras.values()]
    start, end = max(starts), min(ends)
    n = int(np.floor((end - start) * fps / 1e6 + 1e-9)) + 1 if end >= start else 0
    t = start + np.round(np.arange(n) * (1e6 / fps)).astype(np.int64)
    t = t[t <= end]
    clips = len(t) // clip_frames
    if clips == 0:
        raise DataError(
            f"{where}: poses and all cameras overlap for {max(end - start, 0) / 1e6:.2f} s, shorter than one clip of "
            f"{clip_frames} frames at {fps:g} fps ({clip_frames / fps:g} s); use a shorter --clip-seconds or drop the drive"
        )
    t = t[: clips * clip_frames]
    frame_index = {}
    for cam, src in drive.cameras.items():
        period = max(1.0 / fps, float(np.median(np.diff(src.t_us))) / 1e6 if len(src.t_us) > 1 else 0.0)  # s
        tol = limits.max_frame_offset_s if limits.max_frame_offset_s is not None else limits.frame_tolerance * period
        flag = f"max_frame_offset_s {tol:g} s" if limits.max_frame_offset_s is not None else f"--frame-tolerance {limits.frame_tolerance:g} of a {period * 1e3:.0f} ms period"
        hi = np.clip(np.searchsorted(src.t_us, t), 1, len(src.t_us) - 1) if len(src.t_us) > 1 else np.zeros(len(t), np.int64)
        lo = np.maximum(hi - 1, 0)
        idx = np.where(np.abs(src.t_us[lo] - t) <= np.abs(src.t_us[hi] - t), lo, hi)  # ties: the earlier frame
        off = np.abs(src.t_us[idx] - t) / 1e6
        bad = np.flatnonzero(off > tol)
        if bad.size:
            k = int(bad[0])
            need = math.ceil(off.max() / period * 100 - 1e-6) / 100
            need += 0.01 if need * period < off.max() else 0.0
            raise DataError(
                f"{where}: {cam} has no frame within {tol * 1e3:.0f} ms ({flag}) of frame time {t[k]} (+{(t[k] - start) / 1e6:.3f} s); "
                f"the nearest is {off[k] * 1e3:.0f} ms away (dropped frames?); --frame-tolerance {need:g} would take every frame of the drive"
            )
        frame_index[cam] = idx
    return DriveCut(drive=drive, fps=float(fps), clip_frames=clip_frames, t_us=t, frame_index=frame_index)


def resample_poses(drive: RawDrive, t_us: np.ndarray) -> np.ndarray:
    """World-frame ego state at ``t_us`` [T]: [T, 5] x, y, yaw, speed, yaw_rate.

    x and y are interpolated linearly, yaw linearly after unwrapping (so it never jumps across
    +-pi). Speed (|d(x, y)/dt|, m/s) and yaw rate (d yaw/dt, rad/s) are central differences at the
    pose timestamps (one-sided at the ends), interpolated linearly to ``t_us``.
    """
    p = drive.poses
    tp = (p.t_us - p.t_us[0]) / 1e6  # [N] s, relative for precision
    tq = (np.asarray(t_us, dtype=np.int64) - p.t_us[0]) / 1e6  # [T]
    vel = np.gradient(p.xy, tp, axis=0)  # [N, 2]
    speed = np.linalg.norm(vel, axis=1)
    yaw_rate = np.gradient(p.yaw, tp)
    cols = [np.interp(tq, tp, v) for v in (p.xy[:, 0], p.xy[:, 1], p.yaw, speed, yaw_rate)]
    return np.stack(cols, axis=1)  # [T, 5]


def ego_array(world: np.ndarray, t_us: np.ndarray) -> np.ndarray:
    """``ego.npy`` of one clip (docs/data-format.md) from world states [F, 5] at frame times [F]: float64 [F, 6].

    t (s from the first frame), x, y, yaw in the first frame's ego frame (x forward, y left), speed, yaw_rate.
    """
    x0, y0, yaw0 = world[0, 0], world[0, 1], world[0, 2]
    c, s = np.cos(yaw0), np.sin(yaw0)
    dx, dy = world[:, 0] - x0, world[:, 1] - y0
    t = (np.asarray(t_us, dtype=np.int64) - int(t_us[0])) / 1e6
    return np.stack([t, c * dx + s * dy, -s * dx + c * dy, world[:, 2] - yaw0, world[:, 3], world[:, 4]], axis=1).astype(np.float64)


def clip_egos(cut: DriveCut) -> list[bytes]:
    """``ego.npy`` of every clip of a cut drive, each checked against the clip schema (finite, within
    :data:`~fsdtrain.format.schema.EGO_LIMITS`) and, unless the drive is accepted as implausible,
    against the motion checks ``data verify`` runs (:func:`~fsdtrain.format.motion.check_motion`):
    a pose jump is the drive's problem, found in pass 1 and skipped with the drive, not a writer
    error that stops the run after shards were written, nor a clip that verify refuses later."""
    F = cut.clip_frames
    world = resample_poses(cut.drive, cut.t_us)  # [clips * F, 5]
    egos = []
    for j in range(cut.clips):
        sl = slice(j * F, (j + 1) * F)
        data = encode_npy(ego_array(world[sl], cut.t_us[sl]))
        where = f"{cut.drive.where}: clip {clip_key(cut.drive.info.drive_id, j * F)}"
        ego = decode_ego(data, F, where)
        bad = None if cut.drive.accepted_implausible else check_motion(ego[:, 0], ego[:, 1:3], ego[:, 3], speed=ego[:, 4], yaw_rate=ego[:, 5])
        if bad is not None:
            t = (int(cut.t_us[sl][0]) - int(cut.drive.poses.t_us[0])) / 1e6 + bad.t
            raise DataError(f"{cut.drive.where}: implausible motion at +{t:.1f} s (clip {clip_key(cut.drive.info.drive_id, j * F)} {bad.line()}); "
                            f"if the poses are right, --accept-implausible {cut.drive.info.drive_id} writes the drive anyway")  # fmt: skip
        egos.append(data)
    return egos


def drive_samples(cut: DriveCut, *, gop: int = 10) -> Iterator[dict[str, bytes]]:
    """The clips of a cut drive as webdataset samples (``__key__``, meta.json, calib.json, ego.npy, ``<CAM>.mp4``)."""
    drive, info, F = cut.drive, cut.drive.info, cut.clip_frames
    egos = clip_egos(cut)
    calib = drive.calib_json()
    with contextlib.ExitStack() as stack:
        readers = {cam: stack.enter_context(CameraReader(src, drive.calib[cam]["size"], drive.where)) for cam, src in drive.cameras.items()}
        for j in range(cut.clips):
            sl = slice(j * F, (j + 1) * F)
            key = clip_key(info.drive_id, j * F)
            meta = ClipMeta(
                clip_id=key, drive_id=info.drive_id, country=info.country, zone=info.zone, timestamp_us=int(cut.t_us[sl][0]),
                fps=cut.fps, frames=F, cameras=list(info.cameras),
                tags={**info.tags, "vehicle": info.vehicle, "source": "raw", "first_frame": j * F,
                      **({"plausibility": "accepted"} if drive.accepted_implausible else {})},
            )  # fmt: skip
            sample = {"__key__": key, "meta.json": meta.to_json(), "calib.json": calib, "ego.npy": egos[j]}
            for cam, reader in readers.items():
                frames = np.stack([reader.read(int(i)) for i in cut.frame_index[cam][sl]])  # [F, H, W, 3]
                sample[f"{cam}.mp4"] = encode_video(frames, cut.fps, gop=gop)
            yield sample


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedDrive:
    """A drive left out by ``skip_bad``: its folder name and the one-line reason."""

    name: str
    reason: str


@dataclass
class IngestSummary:
    """What :func:`write_drives` did."""

    drives: int
    """Drive folders found."""
    written: list[str] = field(default_factory=list)
    """drive_ids whose clips were written, in order."""
    skipped: list[SkippedDrive] = field(default_factory=list)
    """Bad drives left out (only with ``skip_bad``)."""
    manifests: list[Manifest] = field(default_factory=list)
    """One per country published, sorted by country (a part that did not publish: its staged shards, not published)."""
    part: str = ""
    """``I/N`` when the run was one part of an ingest in parts."""
    waiting: str = ""
    """A part that did not publish: which parts are still missing."""
    before: bool = False
    """The run in parts was published before: nothing was done."""
    completed: bool = False
    """This part was the last to finish and published the run (the counts are the run's)."""

    @property
    def clips(self) -> int:
        return sum(m.samples for m in self.manifests)

    def keep(self, result: object, *, skip_bad: bool, report: Callable[[str], None]) -> bool:
        """Whether ``result`` goes on: anything but a :class:`SkippedDrive`; a skipped drive is an
        error, or with ``skip_bad`` listed here and reported."""
        if not isinstance(result, SkippedDrive):
            return True
        if not skip_bad:
            raise DataError(result.reason)
        self.skipped.append(result)
        report(f"skipped: {result.reason}")
        return False

    def format(self) -> str:
        """Human-readable summary, one line per country and per skipped drive."""
        if self.before:
            return f"part {self.part}: this run was published before; nothing to do" if self.part else "this run was published before; nothing to do"
        head = f"part {self.part}: " if self.part else ""
        if self.waiting:
            head += "staged, not published yet: "
        if self.completed:
            head += "the last part, published the run: "
        lines = [f"{head}wrote {self.clips} clips from {len(self.written)} of {self.drives} drives"]
        for m in self.manifests:
            lines.append(f"  {m.country:<3} zone {m.zone:<8} {m.samples:>6} clips {len(m.shards):>4} shards {m.bytes / 1e6:>10.1f} MB  {m.url}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad drive(s):")
            lines += [f"  {s.reason}" for s in self.skipped]
        if self.waiting:
            lines.append(f"waiting for {self.waiting}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Settings:
    fps: float
    clip_frames: int
    gop: int
    limits: RawLimits


def _check(task: tuple[Path, _Settings]) -> RawDrive | SkippedDrive:
    """Pass 1 for one drive: load, validate and cut it (the cut is recomputed in pass 2)."""
    path, st = task
    try:
        drive = load_drive(path, limits=st.limits)
        clip_egos(cut_drive(drive, fps=st.fps, clip_frames=st.clip_frames, limits=st.limits))
        return drive
    except DataError as exc:  # a bad drive: reported or skipped by the caller
        return SkippedDrive(display_name(path.name), str(exc))


def _encode(task: tuple[RawDrive, _Settings, Path]) -> list[str] | SkippedDrive:
    """Pass 2 for one drive: encode every clip into ``tmp`` (one folder per clip); the clip keys, in order."""
    drive, st, tmp = task
    keys = []
    try:
        cut = cut_drive(drive, fps=st.fps, clip_frames=st.clip_frames, limits=st.limits)
        for sample in drive_samples(cut, gop=st.gop):
            d = tmp / sample["__key__"]
            try:
                d.mkdir(parents=True)
                for member, data in sample.items():
                    if member != "__key__":
                        (d / member).write_bytes(data)
            except OSError as exc:  # the machine's problem (disk full), not the drive's: not skipped
                raise StoreError(f"cannot write encoded clips to {d}: {exc.strerror or exc}; free space there or set TMPDIR to a larger disk") from None
            keys.append(sample["__key__"])
        return keys
    except DataError as exc:  # e.g. an unreadable frame: the drive adds nothing
        shutil.rmtree(tmp, ignore_errors=True)
        return SkippedDrive(drive.info.drive_id, str(exc))


def _ordered(pool, fn: Callable, tasks: list, *, ahead: int) -> Iterator:
    """``pool.imap`` with at most ``ahead`` tasks in flight, so encoded drives waiting on disk stay bounded."""
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _consistent(drives: list[RawDrive]) -> list[RawDrive | SkippedDrive]:
    """Drives of one country share one folder, so they must agree on zone and cameras (the first one sets them)."""
    first: dict[str, RawDrive] = {}
    out: list[RawDrive | SkippedDrive] = []
    for d in drives:
        ref = first.setdefault(d.info.country, d)
        for what, mine, theirs in (("zone", d.info.zone, ref.info.zone), ("cameras", list(d.info.cameras), list(ref.info.cameras))):
            if mine != theirs:
                out.append(SkippedDrive(d.info.drive_id, f"{d.where}: {what} {mine!r} differs from {theirs!r} of {ref.info.drive_id}, "
                                        f"another {d.info.country} drive; one country folder holds one {what}"))  # fmt: skip
                break
        else:
            out.append(d)
    return out


class CountryWriters:
    """One :class:`~fsdtrain.format.writer.ShardWriter` per country directory of an ingest: the tail
    every ingest (raw drives, nuScenes) shares. Open a directory before anything is encoded (a
    directory that holds a dataset is refused there unless ``replace``), write each drive's clips,
    then :meth:`finish`: directories that got no clip are left as they were, the others published
    together (:func:`~fsdtrain.format.writer.publish_all`) or, for a part, staged unpublished.

    Args:
        stack: the run's exit stack: when the run raises, every writer removes what it wrote.
        url_of: a country's shard directory URL (the final one, or a part's staging folder).
        dataset, split, fps: manifest fields of every directory.
        shard_bytes: target shard size.
        replace: replace datasets already in the directories.
    """

    def __init__(self, stack: contextlib.ExitStack, url_of: Callable[[str], str], *, dataset: str, split: str, fps: float,
                 shard_bytes: int, replace: bool) -> None:  # fmt: skip
        self._stack, self._url_of = stack, url_of
        self._shared = dict(dataset=dataset, split=split, fps=fps)
        self._shard_bytes, self._replace = shard_bytes, replace
        self.writers: dict[str, ShardWriter] = {}
        self.filled: set[str] = set()
        self._group: dict[str, int] = {}

    def open(self, country: str, zone: str, cameras: tuple[str, ...]) -> None:
        """The writer of ``country``'s directory, made on its first drive."""
        if country not in self.writers:
            shard_set = ShardSet(country=country, zone=zone, cameras=cameras, **self._shared)
            writer = ShardWriter(self._url_of(country), shard_set, shard_bytes=self._shard_bytes, replace=self._replace)
            self.writers[country] = self._stack.enter_context(writer)

    def write(self, country: str, samples: Iterable[dict[str, bytes]], *, group: int | None = None) -> int:
        """Writes one drive's clips; a drive of another ``group`` than the last one starts a new shard. Returns the clip count."""
        writer = self.writers[country]
        if group is not None and self._group.setdefault(country, group) != group:
            writer.end_group()
            self._group[country] = group
        n = 0
        for sample in samples:
            writer.write(sample)
            n += 1
        self.filled.add(country)
        return n

    def finish(self, nothing: str, *, stage: bool = False) -> list[Manifest]:
        """Leaves directories without clips as they were (their writers abort), then publishes the
        others together, or with ``stage`` seals them unpublished; returns their manifests by
        country. Raises DataError(``nothing``) when no directory got a clip (staging allows none)."""
        if not self.filled and not stage:
            raise DataError(nothing)
        for country in set(self.writers) - self.filled:  # every drive of it skipped while encoding
            self.writers[country].abort()
        if stage:
            return [self.writers[c].stage() for c in sorted(self.filled)]
        return publish_all(self.writers[c] for c in sorted(self.filled))


def _identity(source: DriveSource, st: _Settings, **settings: object) -> dict:
    """What names a run in parts: the drives and every setting that changes a shard (RawLimits included)."""
    limits = json.loads(json.dumps(dataclasses.asdict(st.limits), default=sorted, sort_keys=True))
    return {"drives": source.identity(), "fps": st.fps, "clip_frames": st.clip_frames, "gop": st.gop,
            "limits": limits, **settings}  # fmt: skip


def write_drives(
    raw: str,
    out: str,
    *,
    clip_seconds: float = 10.0,
    fps: float = 10.0,
    gop: int = 10,
    shard_bytes: int = 256 * 2**20,
    workers: int = 1,
    skip_bad: bool = False,
    split: str = "train",
    dataset: str | None = None,
    limits: RawLimits | None = None,
    progress: Callable[[str], None] | None = None,
    replace: bool = False,
    group_drives: int = 1,
    part: PartSpec | None = None,
    publish: int | None = None,
    site_zone: str | None = None,
    audit_log: str | None = None,
) -> IngestSummary:
    """Ingests every raw drive under ``raw`` into ``<out>/<split>/<country>/`` (shards, indexes, manifest).

    Args:
        raw: local folder of drive folders (or one drive folder), or an ``s3://`` prefix of them
            (read through the zone gate, :class:`~fsdtrain.ingest.source.DriveSource`); layout in docs/data-format.md.
        out: dataset URL (``s3://bucket/prefix/NAME`` or ``file:///dir/NAME``).
        clip_seconds: clip length; ``round(clip_seconds * fps)`` frames, at least 2.
        fps: output frame rate: one the default windows can use (:func:`window_rate_problem`); each
            camera must run at least ``limits.min_camera_rate x fps`` and have a frame within
            ``limits.frame_tolerance`` of a period of every frame time (:func:`cut_drive`).
        gop: keyframe interval of the encoded videos, in frames.
        shard_bytes: target shard size; a new shard starts when the next clip would exceed it, or
            with the first drive of another group.
        workers: processes checking and encoding drives (a fork pool); the output does not depend on it.
        skip_bad: leave bad drives out and list them in the summary instead of raising on the first one.
        split: split name, ``[A-Za-z0-9_-]``.
        dataset: dataset name in the manifests; default: the last component of ``out``.
        limits: tolerances for imperfect raw data, and the drives accepted although implausible
            (``limits.accept_implausible``: each must be a drive under ``raw``).
        progress: called with a one-line message per drive.
        replace: replace the datasets already in the ``<split>/<country>`` directories this run
            writes (each switches to the new version once all are written) instead of refusing them;
            other directories of ``out`` are left alone.
        group_drives: drives per group (in name order): a shard holds clips of one group only, and
            parts take whole groups (:mod:`fsdtrain.ingest.parts`), so the shards do not depend on ``part``.
        part: write only this part's drives into the run's staging folder; the part that finds every
            other part complete publishes (:meth:`~fsdtrain.ingest.parts.IngestRun.publish`).
        publish: publish the run written as this many parts, or name the parts still missing.
        site_zone: the zone this job runs in (the gate's; default ``$FSDTRAIN_SITE_ZONE`` or ``global``).
        audit_log: JSONL file recording every raw object read from the store.

    Raises:
        DataError: without ``skip_bad``, for the first bad drive (in name order), before any shard is
            written when pass 1 finds it; no manifest is written in either case, and what ``out``
            held stays as it was. :class:`~fsdtrain.ingest.parts.PartsMissing` from ``publish``.
        ConfigError: a ``<split>/<country>`` directory to write already holds a dataset and
            ``replace`` is not given (checked after pass 1, before anything is encoded); ``fps``
            the default windows cannot use, or ``limits.accept_implausible`` naming no drive
            (checked before any drive is read).
        ResidencyError: a drive's bucket or zone may not be read at ``site_zone``.
        StoreError: ``raw`` or ``out`` or the temporary folder cannot be read or written (unreachable, denied, disk full).
    """
    frames = int(round(clip_seconds * fps)) if fps > 0 else 0
    if not fps > 0 or frames < 2:
        raise ConfigError(f"--clip-seconds {clip_seconds:g} at --fps {fps:g} gives {frames} frames per clip; a clip needs at least 2")
    if gop < 1 or workers < 1 or shard_bytes < 1 or group_drives < 1:
        raise ConfigError(f"--gop {gop}, --workers {workers}, --shard-bytes {shard_bytes} and --group-drives {group_drives} must all be at least 1")
    if part is not None and publish is not None:
        raise ConfigError("--part writes one part and --publish publishes the parts written: give one of them")
    if publish is not None and publish < 1:
        raise ConfigError(f"--publish {publish}: give the part count N of the run's --part I/N")
    problem = window_rate_problem(fps)
    if problem is not None:  # a dataset nothing could train on: refused before any drive is read
        ok = usable_rates()
        near = min(ok, key=lambda r: (abs(r - fps), -r)) if ok else None
        raise ConfigError(f"--fps {fps:g}: the default windows cannot use clips at this rate ({problem}); "
                          f"{f'use --fps {near}; ' if near else ''}whole rates that work: {_rates_text(ok)}")  # fmt: skip
    validate_split(split)
    dataset = dataset or dataset_name(out)
    report = progress or (lambda _msg: None)
    st = _Settings(fps=float(fps), clip_frames=frames, gop=gop, limits=limits or RawLimits())
    gate = ZoneGate(site_zone, audit=AuditLog(audit_log, job="data-write") if audit_log else None)
    source = DriveSource(raw, gate)
    names = source.names
    unknown = sorted(st.limits.accept_implausible - set(names))
    if unknown:
        raise ConfigError(f"--accept-implausible names {', '.join(unknown)}, not a drive under {raw}; drives: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    summary = IngestSummary(drives=len(names), part=str(part or ""))
    mine = range(len(names))
    run = None
    if part is not None or publish is not None:
        settings = dict(shard_bytes=shard_bytes, group_drives=group_drives, split=split, dataset=dataset, skip_bad=skip_bad, replace=replace)
        run = IngestRun(out, split, _identity(source, st, **settings, parts=part.count if part else publish), part.count if part else publish, gate)
        if run.published():
            summary.before = True
            return summary
        if publish is not None:
            summary.manifests, summary.written, skipped = run.publish(replace=replace)
            summary.skipped = [SkippedDrive(n, r) for n, r in skipped]
            return summary
        mine = part.drives(len(names), group_drives)
        run.clear_stage(part.index)
        summary.drives = len(mine)

    keep = functools.partial(summary.keep, skip_bad=skip_bad, report=report)

    # A writer still open when this block raises removes the shards it wrote (ShardWriter.__exit__).
    with fork_pool(workers) if workers > 1 else contextlib.nullcontext() as pool, tempfile.TemporaryDirectory(prefix="fsdtrain-ingest-") as tmp, contextlib.ExitStack() as stack:
        run_map = pool.imap if pool is not None else map
        paths, index_of = [], {}
        for i in mine:  # an s3:// drive is copied here, through the gate
            try:
                paths.append(source.local(names[i], Path(tmp) / "raw"))
                index_of[names[i]] = i
            except DataError as exc:
                keep(SkippedDrive(display_name(names[i]), str(exc)))
        checked = [r for r in run_map(_check, [(p, st) for p in paths]) if keep(r)]
        good = [d for d in _consistent(checked) if keep(d)]
        url_of = (lambda c: run.stage_url(part.index, c)) if run is not None else (lambda c: objects.join_url(out, split, c))
        writers = CountryWriters(stack, url_of, dataset=dataset, split=split, fps=st.fps, shard_bytes=shard_bytes, replace=replace and run is None)
        for d in good:  # every directory is checked (refused unless replace) before anything is encoded
            writers.open(d.info.country, d.info.zone, d.info.cameras)
        for country, writer in writers.writers.items() if run is not None else ():  # a part writes to staging: the final directories are checked here
            final = objects.join_url(out, split, country)
            survey(final, replace)
            gate.check_data(final, writer.manifest.zone)  # the publish step reads the staged indexes back through the gate
        tasks = [(d, st, Path(tmp) / f"{i:06d}") for i, d in enumerate(good)]
        encoded = _ordered(pool, _encode, tasks, ahead=2 * workers) if pool is not None else map(_encode, tasks)
        for (drive, _, folder), result in zip(tasks, encoded):
            if not keep(result):
                continue
            info = drive.info
            members = list(FIXED_MEMBERS) + [f"{c}.mp4" for c in info.cameras]
            clips = ({"__key__": key, **{m: (folder / key / m).read_bytes() for m in members}} for key in result)
            writers.write(info.country, clips, group=group_of(index_of[drive.path.name], group_drives))
            shutil.rmtree(folder)  # this drive's encoded clips, now in the shards
            if source.remote:
                shutil.rmtree(drive.path)  # and its copy
            summary.written.append(info.drive_id)
            report(f"{info.country}: drive {info.drive_id}: {len(result)} clips")
        nothing = f"none of the {len(paths)} drive(s) under {raw} could be ingested; first problem: {summary.skipped[0].reason if summary.skipped else 'none'}"
        summary.manifests = writers.finish(nothing, stage=run is not None)
        if run is None:
            return summary
        run.write_record(part.index, summary.manifests, summary.written, [(s.name, s.reason) for s in summary.skipped])
    log.info("part %s: staged %d clips at %s", part, summary.clips, run.url)
    missing = run.missing()
    if missing:
        summary.waiting = run.missing_text(missing)
        return summary
    summary.manifests, summary.written, skipped = run.publish(replace=replace)  # this part completed the run
    summary.drives, summary.skipped, summary.completed = len(names), [SkippedDrive(n, r) for n, r in skipped], True
    return summary
