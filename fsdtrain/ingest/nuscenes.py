"""``fsdtrain data write --from nuscenes``: the nuScenes tables and camera JPEGs -> clips -> shards per country.

A nuScenes DATAROOT holds the tables of one release in ``DATAROOT/<version>/*.json`` (``scene``,
``sample``, ``sample_data``, ``ego_pose``, ``calibrated_sensor``, ``sensor``, ``log``; schema: the nuScenes
devkit's schema document, summed up in docs/data-format.md "From nuScenes") and the images they name in
``DATAROOT/samples/<CAM>/`` (key frames, 2 Hz) and ``DATAROOT/sweeps/<CAM>/`` (the frames between).

Each scene becomes one drive (:func:`scene_drive`): a :class:`~fsdtrain.ingest.raw.RawDrive` with the
six cameras as JPEG sources (all their sample_data of the scene, key frames and sweeps), the ego
poses of the scene's lidar sample_data (20 Hz, regular: the localization runs on the lidar; those of
every sample_data when a scene has no lidar), planar (x, y and the yaw of the w, x, y, z
quaternion), each camera's calibrated_sensor as ``K`` and ``T_cam_to_ego``
(nuScenes camera and ego frames are this project's: OpenCV camera, ego x forward, y left, origin
at the rear axle), and the country of the log's location (``boston-*`` -> US, ``singapore-*`` ->
SG; the zone from :func:`~fsdtrain.residency.zone_of_country`). From there it is the raw ingest:
:func:`~fsdtrain.ingest.drives.cut_drive` puts frame times on a regular grid, poses are resampled
onto it, each camera contributes its nearest frame, re-encoded as H.264, and the clips go through
:class:`~fsdtrain.format.writer.ShardWriter`, so every check of a clip applies.

Frame rate: nuScenes cameras are triggered by the 20 Hz lidar, so a camera's frames are 50 or
100 ms apart (100, 100, 50, ...: 12 Hz on average) and a sweep is sometimes dropped. The default
output rate is that sweep rate, 12 fps (a multiple of the default windows' ``future_hz`` 2), where
nearly every sweep is used once. A clip frame takes each camera's nearest frame, which may lie up
to :data:`MAX_FRAME_OFFSET_S` (100 ms) away, not the raw ingest's half frame period: the 100 ms
intervals alone put frames 50 ms from some frame times, and one dropped sweep leaves a 200 ms gap.
A scene with a longer gap is refused (or skipped). ``fps=10`` also works (nearest frame, same tolerance).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.manifest import dataset_name, validate_split
from fsdtrain.format.schema import DEFAULT_CAMERAS, parse_calib, parse_meta
from fsdtrain.ingest.drives import (
    CountryWriters,
    IngestSummary,
    SkippedDrive,
    clip_egos,
    cut_drive,
    drive_samples,
)
from fsdtrain.ingest.raw import CameraSource, DriveInfo, Poses, RawDrive, RawLimits
from fsdtrain.pools import fork_pool
from fsdtrain.residency import zone_of_country
from fsdtrain.store import objects

__all__ = [
    "VERSIONS",
    "NUSCENES_FPS",
    "NUSCENES_CLIP_SECONDS",
    "MAX_FRAME_OFFSET_S",
    "LOCATION_COUNTRIES",
    "NuScenesTables",
    "load_tables",
    "read_scene_names",
    "country_of_location",
    "quaternion_matrix",
    "quaternion_yaw",
    "scene_drive",
    "write_nuscenes",
]

VERSIONS = ("v1.0-mini", "v1.0-trainval", "v1.0-test")
"""Releases whose tables the converter reads (``DATAROOT/<version>/``)."""
NUSCENES_FPS = 12.0
"""Default output frame rate: the cameras' sweep rate."""
NUSCENES_CLIP_SECONDS = 9.5
"""Default clip length: a scene has about 19.5 s of camera frames (40 key frames at 2 Hz), two clips of 9.5 s."""
MAX_FRAME_OFFSET_S = 0.1
"""Default farthest distance from a clip frame time to the camera frame used for it: the middle of the 200 ms
gap one dropped sweep leaves (cameras fire on the 20 Hz lidar's phase, 50 or 100 ms apart)."""
LOCATION_COUNTRIES = {"boston": "US", "singapore": "SG"}
"""Country of a log, by the city its ``location`` starts with (``boston-seaport``, ``singapore-onenorth``, ...)."""
CAMERAS = DEFAULT_CAMERAS  # CAM_FRONT, CAM_FRONT_LEFT, CAM_FRONT_RIGHT, CAM_BACK, CAM_BACK_LEFT, CAM_BACK_RIGHT
TABLES = ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")
_FIELDS = {  # the fields read from each table (a record may hold more)
    "scene": ("token", "name", "log_token"),
    "sample": ("token", "timestamp", "scene_token"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "filename", "timestamp", "width", "height"),
    "ego_pose": ("token", "translation", "rotation", "timestamp"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "sensor": ("token", "channel", "modality"),
    "log": ("token", "location", "vehicle"),
}
_SCENE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@dataclass(frozen=True)
class NuScenesTables:
    """The tables of one release, each a dict token -> record (JSON objects as nuScenes writes them)."""

    dataroot: Path
    version: str
    scene: dict[str, dict]
    sample: dict[str, dict]
    sample_data: dict[str, dict]
    ego_pose: dict[str, dict]
    calibrated_sensor: dict[str, dict]
    sensor: dict[str, dict]
    log: dict[str, dict]

    def scene_data(self) -> dict[str, list[dict]]:
        """scene token -> its sample_data records (key frames and sweeps of every sensor).

        A sweep's ``sample_token`` is the key frame that follows it (nuScenes schema), so this is
        the scene's data without walking the ``prev``/``next`` chains."""
        out: dict[str, list[dict]] = {t: [] for t in self.scene}
        for sd in self.sample_data.values():
            sample = self.sample.get(sd["sample_token"])
            if sample is None:
                raise DataError(f"nuScenes {self.version}: sample_data {sd['token']} points to sample {sd['sample_token']!r}, not in sample.json")
            if sample["scene_token"] in out:
                out[sample["scene_token"]].append(sd)
        return out


def load_tables(dataroot: str | os.PathLike, version: str) -> NuScenesTables:
    """Reads ``DATAROOT/<version>/{scene,sample,...}.json``; ConfigError when the folder or a table is missing,
    DataError naming the table and record when a record lacks a field the converter reads."""
    if version not in VERSIONS:
        raise ConfigError(f"--version {version!r} is not a nuScenes release this converter reads; use one of {', '.join(VERSIONS)}")
    root = Path(dataroot)
    folder = root / version
    if not folder.is_dir():
        found = sorted(p.name for p in root.glob("v1.0-*") if p.is_dir()) if root.is_dir() else []
        hint = f"; {root} holds {', '.join(found)}" if found else f"; extract the {version} metadata archive into {root}"
        raise ConfigError(f"no nuScenes tables at {folder}{hint}")
    tables = {}
    for name in TABLES:
        path = folder / f"{name}.json"
        try:
            records = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"nuScenes {version}: {path} is missing; the converter reads {', '.join(t + '.json' for t in TABLES)}") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise DataError(f"nuScenes {version}: {path.name} is not readable JSON ({exc})") from None
        if not isinstance(records, list):
            raise DataError(f"nuScenes {version}: {path.name} must hold a JSON list of records, got {type(records).__name__}")
        by_token = {}
        for i, rec in enumerate(records):
            missing = [f for f in _FIELDS[name] if not isinstance(rec, dict) or f not in rec]
            if missing:
                raise DataError(f"nuScenes {version}: {path.name} record {i} lacks {missing} (nuScenes schema: docs/data-format.md, 'From nuScenes')")
            by_token[rec["token"]] = rec
        tables[name] = by_token
    return NuScenesTables(dataroot=root, version=version, **tables)


def country_of_location(location: object) -> str:
    """ISO country code of a log's ``location`` (``boston-seaport`` -> ``US``, ``singapore-onenorth`` -> ``SG``)."""
    city = location.split("-", 1)[0].lower() if isinstance(location, str) else None
    if city not in LOCATION_COUNTRIES:
        known = ", ".join(f"{c}-* -> {k}" for c, k in LOCATION_COUNTRIES.items())
        raise DataError(f"log location {location!r} has no known country ({known})")
    return LOCATION_COUNTRIES[city]


def _quaternion(q: object, what: str) -> np.ndarray:
    v = np.asarray(q, dtype=np.float64) if isinstance(q, list) and len(q) == 4 else None
    if v is None or not np.all(np.isfinite(v)) or not 0.5 < np.linalg.norm(v) < 2.0:
        raise DataError(f"{what}: rotation {q!r} is not a unit quaternion [w, x, y, z]")
    return v / np.linalg.norm(v)


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation of a unit quaternion ``[w, x, y, z]`` (nuScenes' order)."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def quaternion_yaw(q: np.ndarray) -> float:
    """Heading (rotation about z, CCW from x) of a unit quaternion ``[w, x, y, z]``, radians."""
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def _vector3(v: object, what: str) -> np.ndarray:
    if not (isinstance(v, list) and len(v) == 3 and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v)):
        raise DataError(f"{what}: translation {v!r} is not [x, y, z] in metres")
    return np.asarray(v, dtype=np.float64)


def _poses(tables: NuScenesTables, data: list[dict], where: str, limits: RawLimits) -> Poses:
    """The ego poses the sample_data ``data`` point to, by time (one per timestamp)."""
    by_time: dict[int, tuple[float, float, float]] = {}
    for sd in data:
        pose = tables.ego_pose.get(sd["ego_pose_token"])
        if pose is None:
            raise DataError(f"{where}: sample_data {sd['token']} points to ego_pose {sd['ego_pose_token']!r}, not in ego_pose.json")
        t = pose["timestamp"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise DataError(f"{where}: ego_pose {pose['token']} timestamp {t!r} is not microseconds (a non-negative integer)")
        if t not in by_time:
            xyz = _vector3(pose["translation"], f"{where}: ego_pose {pose['token']}")
            by_time[t] = (xyz[0], xyz[1], quaternion_yaw(_quaternion(pose["rotation"], f"{where}: ego_pose {pose['token']}")))
    if len(by_time) < 2:
        raise DataError(f"{where}: {len(by_time)} ego pose(s); a scene needs at least 2")
    t_us = np.array(sorted(by_time), dtype=np.int64)
    vals = np.array([by_time[int(t)] for t in t_us])  # [N, 3] x, y, yaw
    gaps = np.diff(t_us) / 1e6
    bad = np.flatnonzero(gaps > limits.max_pose_gap_s)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: a {gaps[i]:.3f} s gap in ego poses after timestamp {t_us[i]}; at most --max-pose-gap {limits.max_pose_gap_s:g} s")
    return Poses(t_us=t_us, xy=vals[:, :2].copy(), yaw=np.unwrap(vals[:, 2]))


def _camera(tables: NuScenesTables, cam: str, data: list[dict], where: str) -> tuple[CameraSource, dict]:
    """One camera of a scene: its frames (JPEG files by time) and its calibration in calib.json form."""
    if not data:
        raise DataError(f"{where}: no {cam} images in the scene")
    data = sorted(data, key=lambda sd: sd["timestamp"])
    t_us = np.array([sd["timestamp"] for sd in data], dtype=np.int64)
    dup = np.flatnonzero(np.diff(t_us) <= 0)
    if dup.size:
        raise DataError(f"{where}: {cam} has two images at timestamp {t_us[dup[0]]} ({data[dup[0]]['filename']}, {data[dup[0] + 1]['filename']})")
    files = []
    for sd in data:
        name = sd["filename"]
        if not isinstance(name, str) or name.startswith("/") or ".." in name.split("/"):
            raise DataError(f"{where}: sample_data {sd['token']} filename {name!r} must be a path relative to DATAROOT")
        path = tables.dataroot / name
        if not path.is_file():
            folder = "sweeps" if name.startswith("sweeps/") else "samples"
            raise DataError(f"{where}: {cam} image {name} is missing under {tables.dataroot}; extract every {tables.version} blobs archive "
                            f"there (the {folder}/ folder)")  # fmt: skip
        files.append(path)
    sizes = {(sd["width"], sd["height"]) for sd in data}
    calibs = {sd["calibrated_sensor_token"] for sd in data}
    if len(sizes) != 1 or len(calibs) != 1:
        what = f"sizes {sorted(sizes)}" if len(sizes) != 1 else f"{len(calibs)} calibrated_sensor records"
        raise DataError(f"{where}: {cam} has {what} within one scene; a clip has one size and calibration per camera")
    (size,), (token,) = sizes, calibs
    cs = tables.calibrated_sensor.get(token)
    if cs is None:
        raise DataError(f"{where}: {cam} points to calibrated_sensor {token!r}, not in calibrated_sensor.json")
    T = np.eye(4)
    T[:3, :3] = quaternion_matrix(_quaternion(cs["rotation"], f"{where}: {cam} calibrated_sensor"))
    T[:3, 3] = _vector3(cs["translation"], f"{where}: {cam} calibrated_sensor")
    calib = {"K": cs["camera_intrinsic"], "T_cam_to_ego": T.tolist(), "size": list(size)}
    return CameraSource(name=cam, kind="jpeg", path=tables.dataroot, t_us=t_us, files=tuple(files)), calib


def scene_drive(tables: NuScenesTables, scene: dict, data: list[dict], *, limits: RawLimits | None = None) -> RawDrive:
    """One scene as a raw drive (everything but the pixels), checked; ``data``: its sample_data records.
    A scene named in ``limits.accept_implausible`` is written even when its motion looks implausible.

    Raises:
        DataError: one line, ``drive <scene name>: <problem>``.
    """
    limits = limits or RawLimits()
    name = scene["name"]
    if not isinstance(name, str) or not _SCENE_NAME_RE.match(name):
        raise DataError(f"nuScenes {tables.version}: scene {scene['token']} name {name!r} must be 1-100 characters of [A-Za-z0-9_-] (it becomes the drive_id)")
    where = f"drive {name}"
    log = tables.log.get(scene["log_token"])
    if log is None:
        raise DataError(f"{where}: log {scene['log_token']!r} is not in log.json")
    try:
        country = country_of_location(log["location"])
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    per_cam: dict[str, list[dict]] = {cam: [] for cam in CAMERAS}
    lidar: list[dict] = []
    for sd in data:
        cs = tables.calibrated_sensor.get(sd["calibrated_sensor_token"])
        sensor = tables.sensor.get(cs["sensor_token"]) if cs is not None else None
        if sensor is None:
            raise DataError(f"{where}: sample_data {sd['token']}: its calibrated_sensor or sensor is not in the tables")
        if sensor["modality"] == "camera" and sensor["channel"] in per_cam:
            per_cam[sensor["channel"]].append(sd)
        elif sensor["modality"] == "lidar":
            lidar.append(sd)
    cameras, calib = {}, {}
    for cam in CAMERAS:
        cameras[cam], calib[cam] = _camera(tables, cam, per_cam[cam], where)
    checked = parse_calib(json.dumps(calib).encode(), list(CAMERAS), where)  # the clip schema's own check
    for cam, c in checked.items():
        w, h = c["size"]
        if w % 2 or h % 2:
            raise DataError(f"{where}: {cam} images are {w}x{h}; H.264 (yuv420p) needs an even width and height")
    info = DriveInfo(
        drive_id=name, country=country, zone=zone_of_country(country), vehicle=str(log["vehicle"]), cameras=CAMERAS,
        tags={"dataset": "nuscenes", "version": tables.version, "scene": name, "location": log["location"],
              "log": str(log.get("logfile", "")), "description": str(scene.get("description", ""))},
    )  # fmt: skip
    return RawDrive(path=tables.dataroot, info=info, calib=checked, poses=_poses(tables, lidar if len(lidar) > 1 else data, where, limits), cameras=cameras,
                    accepted_implausible=name in limits.accept_implausible)  # fmt: skip


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    fps: float
    clip_frames: int
    gop: int
    limits: RawLimits


def _check(drive: RawDrive, st: _Settings) -> None:
    """Pass 1 for one scene: it cuts into clips whose ego.npy passes the clip schema."""
    clip_egos(cut_drive(drive, fps=st.fps, clip_frames=st.clip_frames, limits=st.limits))


def _encode(task: tuple[RawDrive, _Settings]) -> list[dict[str, bytes]] | SkippedDrive:
    """Pass 2 for one scene: every clip encoded (a scene that fails half-way adds nothing)."""
    drive, st = task
    try:
        cut = cut_drive(drive, fps=st.fps, clip_frames=st.clip_frames, limits=st.limits)
        out = []
        for sample in drive_samples(cut, gop=st.gop):
            meta = parse_meta(sample["meta.json"], sample["__key__"])
            meta.tags["source"] = "nuscenes"  # drive_samples says "raw": these clips come from the nuScenes tables
            out.append({**sample, "meta.json": meta.to_json()})
        return out
    except DataError as exc:  # e.g. an unreadable JPEG: the scene is the problem
        return SkippedDrive(drive.info.drive_id, str(exc))


def read_scene_names(path: str | os.PathLike) -> list[str]:
    """Scene names from a text file, one a line (blank lines and ``#`` comments ignored), for ``--scenes``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--scenes {path}: unreadable ({getattr(exc, 'strerror', None) or exc}); give a text file of scene names, one a line") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"--scenes {path} names no scene; give one scene name a line, e.g. scene-0061")
    return names


def _scenes(tables: NuScenesTables, names: list[str] | None) -> list[dict]:
    """The scenes to convert, in name order: all, or those named (each must exist)."""
    by_name: dict[str, dict] = {}
    for scene in tables.scene.values():
        if scene["name"] in by_name:
            raise DataError(f"nuScenes {tables.version}: two scenes are named {scene['name']!r} in scene.json")
        by_name[scene["name"]] = scene
    if names is None:
        return [by_name[n] for n in sorted(by_name)]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--scenes: {len(unknown)} scene(s) not in {tables.version}, first {unknown[0]!r}; names look like {min(by_name)!r}")
    return [by_name[n] for n in sorted(set(names))]


def write_nuscenes(
    dataroot: str | os.PathLike,
    out: str,
    *,
    version: str,
    clip_seconds: float = NUSCENES_CLIP_SECONDS,
    fps: float = NUSCENES_FPS,
    gop: int = 10,
    shard_bytes: int = 256 * 2**20,
    workers: int = 1,
    skip_bad: bool = False,
    split: str = "train",
    dataset: str | None = None,
    scenes: list[str] | None = None,
    max_frame_offset_s: float = MAX_FRAME_OFFSET_S,
    max_pose_gap_s: float = 0.5,
    accept_implausible: frozenset[str] = frozenset(),
    progress: Callable[[str], None] | None = None,
    replace: bool = False,
) -> IngestSummary:
    """Converts the scenes of a nuScenes release into ``<out>/<split>/<country>/`` (US and SG).

    Args:
        dataroot: local nuScenes folder: ``<version>/`` tables, ``samples/`` and ``sweeps/`` images.
        out: dataset URL (``s3://bucket/prefix/NAME`` or ``file:///dir/NAME``).
        version: release, one of :data:`VERSIONS`.
        clip_seconds: clip length; ``round(clip_seconds * fps)`` frames, at least 2 (a scene's ~19.5 s
            give two 9.5 s clips; the tail shorter than a clip is dropped).
        fps: output frame rate (default 12, the sweep rate; see the module docstring).
        gop: keyframe interval of the encoded videos, in frames.
        shard_bytes: target shard size.
        workers: processes encoding scenes (a fork pool); the output does not depend on it.
        skip_bad: leave bad scenes out and list them in the summary instead of raising on the first.
        split: split name, ``[A-Za-z0-9_-]``.
        dataset: dataset name in the manifests; default: the last component of ``out``.
        scenes: scene names to convert (e.g. the official ``val`` list); None: every scene.
        max_frame_offset_s: farthest a camera frame may lie from the clip frame time it is used for.
        max_pose_gap_s: largest gap between consecutive ego poses of a scene.
        accept_implausible: scene names written even when their motion is implausible (their clips are tagged).
        progress: called with a one-line message per scene.
        replace: replace datasets already in the ``<split>/<country>`` directories written.

    Raises:
        ConfigError: bad settings, tables missing, or a directory to write already holds a dataset
            and ``replace`` is not given (checked before anything is encoded).
        DataError: without ``skip_bad``, the first bad scene (in name order); nothing is published.
        StoreError: ``out`` cannot be written.
    """
    frames = int(round(clip_seconds * fps)) if fps > 0 else 0
    if not fps > 0 or frames < 2:
        raise ConfigError(f"--clip-seconds {clip_seconds} at --fps {fps} gives {frames} frames per clip; a clip needs at least 2")
    if gop < 1 or workers < 1 or shard_bytes < 1:
        raise ConfigError(f"--gop {gop}, --workers {workers} and --shard-bytes {shard_bytes} must all be at least 1")
    validate_split(split)
    dataset = dataset or dataset_name(out)
    report = progress or (lambda _msg: None)
    # The camera rate check reads the median frame interval: 100 ms for a nuScenes camera (100, 100, 50 ms, ...),
    # i.e. 10 Hz for cameras that average 12 Hz and give every 12 fps frame a sweep of its own; 0.8 lets 12 fps
    # through and still refuses rates the cameras cannot serve (above 12.5 fps).
    limits = RawLimits(max_pose_gap_s=max_pose_gap_s, max_frame_offset_s=max_frame_offset_s, min_camera_rate=0.8,
                       accept_implausible=frozenset(accept_implausible))  # fmt: skip
    st = _Settings(fps=float(fps), clip_frames=frames, gop=gop, limits=limits)
    tables = load_tables(dataroot, version)
    chosen = _scenes(tables, scenes)
    if not chosen:
        raise DataError(f"nuScenes {version}: scene.json lists no scenes")
    unknown = sorted(set(accept_implausible) - {s["name"] for s in chosen})
    if unknown:
        raise ConfigError(f"--accept-implausible names {unknown[0]!r}, not a scene being converted; give scene names such as {chosen[0]['name']!r}")
    data = tables.scene_data()
    summary = IngestSummary(drives=len(chosen))

    keep = functools.partial(summary.keep, skip_bad=skip_bad, report=report)

    good: list[RawDrive] = []
    for scene in chosen:  # pass 1: tables, files and poses of every scene, before anything is written
        try:
            drive = scene_drive(tables, scene, data[scene["token"]], limits=limits)
            _check(drive, st)
            good.append(drive)
        except DataError as exc:
            keep(SkippedDrive(str(scene["name"]), str(exc)))
    if not good:
        raise DataError(f"none of the {len(chosen)} scene(s) could be converted; first problem: {summary.skipped[0].reason}")

    with fork_pool(workers) if workers > 1 else contextlib.nullcontext() as pool, contextlib.ExitStack() as stack:
        url_of = lambda country: objects.join_url(out, split, country)  # noqa: E731
        writers = CountryWriters(stack, url_of, dataset=dataset, split=split, fps=st.fps, shard_bytes=shard_bytes, replace=replace)
        for d in good:  # every directory is checked (refused unless replace) before anything is encoded
            writers.open(d.info.country, d.info.zone, CAMERAS)
        tasks = [(d, st) for d in good]
        encoded: Iterator = pool.imap(_encode, tasks) if pool is not None else map(_encode, tasks)
        for drive, result in zip(good, encoded):
            if not keep(result):
                continue
            info = drive.info
            writers.write(info.country, result)
            summary.written.append(info.drive_id)
            report(f"{info.country}: scene {info.drive_id} ({info.tags['location']}): {len(result)} clips")
        summary.manifests = writers.finish(f"none of the {len(chosen)} scene(s) could be converted; first problem: {summary.skipped[0].reason if summary.skipped else 'none'}")
    return summary
