"""Raw drives: reading and validating the ingest layout of docs/data-format.md.

A raw drive is a directory named after its ``drive_id``::

    <drive_id>/drive.json                 drive_id, country, zone, vehicle, cameras[, fps, tags]
    <drive_id>/calib.json                 per camera K, T_cam_to_ego, size (as a clip's calib.json)
    <drive_id>/poses.csv                  timestamp_us,x,y[,z],yaw  (world frame, any rate)
    <drive_id>/<CAM>.mp4 + <CAM>.timestamps.csv   or   <drive_id>/<CAM>/<timestamp_us>.jpg

:func:`load_drive` reads everything but the pixels and checks it (names, JSON fields, monotonic
timestamps and their unit, pose gaps, the plausibility of the motion (:mod:`fsdtrain.format.motion`),
cameras covering the poses, video frame counts). Every problem is a
:class:`~fsdtrain.errors.DataError` of one line, ``drive <name>: <problem>``. Pixels are read later,
frame by frame, with :class:`CameraReader`, whose errors (an unreadable frame) use the same form.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.motion import MotionLimits, check_extents, check_motion
from fsdtrain.format.schema import parse_calib
from fsdtrain.residency import check_country_zone, validate_zone

__all__ = [
    "ISO_COUNTRIES",
    "RawLimits",
    "DriveInfo",
    "Poses",
    "CameraSource",
    "RawDrive",
    "find_drives",
    "display_name",
    "load_drive",
    "CameraReader",
]

ISO_COUNTRIES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)
"""The officially assigned ISO 3166-1 alpha-2 codes; a drive's ``country`` must be one of them."""

DRIVE_JSON, CALIB_JSON, POSES_CSV = "drive.json", "calib.json", "poses.csv"
_DRIVE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_CAMERA_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_JPEG_RE = re.compile(r"^(\d{1,19})\.(jpg|jpeg)$")
_MAX_US = 2**63 - 1  # timestamps are int64 microseconds
_MAX_POSE = 1e9  # m or rad: a world coordinate beyond it is not on Earth
_DRIVE_FIELDS = {"drive_id", "country", "zone", "vehicle", "cameras", "fps", "tags"}


@dataclass(frozen=True, kw_only=True)
class RawLimits:
    """How much imperfection a raw drive may have before it counts as bad."""

    max_pose_gap_s: float = 0.5
    """Largest interval between consecutive poses; poses are not interpolated across a longer gap."""
    max_edge_s: float = 1.0
    """How far a camera's first/last frame may lie from the first/last pose (more: a video shorter than its poses, or the reverse)."""
    frame_tolerance: float = 0.6
    """Largest distance from a clip frame time to the camera frame used for it, as a fraction of the
    longer of the output frame period and the camera's median frame period: nearest-frame
    resampling is at most half a camera period off, so 0.6 passes a 9.65 Hz camera at ``--fps 10``
    and refuses a dropped frame."""
    max_frame_offset_s: float | None = None
    """The same distance in seconds, replacing ``frame_tolerance`` when given."""
    min_camera_rate: float = 0.9
    """Slowest camera rate, as a fraction of the output fps: a slower camera would repeat more than one frame in ten."""
    fps_tolerance: float = 0.1
    """Relative deviation allowed between drive.json ``fps`` and a camera's median frame interval."""
    accept_implausible: frozenset[str] = frozenset()
    """drive_ids written even when their motion is implausible (:mod:`fsdtrain.format.motion`); their clips are tagged ``plausibility: accepted``."""
    motion: MotionLimits = field(default_factory=MotionLimits)
    """What a vehicle's motion may look like."""

    def __post_init__(self) -> None:
        flags = {"max_pose_gap_s": "--max-pose-gap", "max_edge_s": "--max-edge", "frame_tolerance": "--frame-tolerance"}
        for name in ("max_pose_gap_s", "max_edge_s", "fps_tolerance", "frame_tolerance", "min_camera_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{flags.get(name, 'RawLimits.' + name)} {getattr(self, name)} must be positive")
        if self.max_frame_offset_s is not None and not self.max_frame_offset_s > 0:
            raise ConfigError(f"RawLimits.max_frame_offset_s={self.max_frame_offset_s} must be positive or None")
        object.__setattr__(self, "accept_implausible", frozenset(self.accept_implausible))


@dataclass(frozen=True, kw_only=True)
class DriveInfo:
    """``drive.json`` of one raw drive."""

    drive_id: str
    """Drive name, ``[A-Za-z0-9_-]``, equal to the drive's directory name; clip keys are ``<drive_id>-<first_frame:06d>``."""
    country: str
    """ISO 3166-1 alpha-2 code of the country the drive was recorded in (upper case, e.g. ``CN``)."""
    zone: str
    """Residency zone the data must stay in (``global`` = unrestricted, ``cn``, ...); no default on purpose."""
    vehicle: str
    """Vehicle or rig identifier, kept in each clip's ``tags``."""
    cameras: tuple[str, ...]
    """Camera names in rig order, ``[A-Za-z0-9_]``; each is ``<CAM>.mp4`` or a ``<CAM>/`` folder."""
    fps: float | None = None
    """Nominal camera frame rate; when given, every camera's median frame interval must agree with it."""
    tags: dict = field(default_factory=dict)
    """Free tags copied into each clip's ``meta.json`` ``tags``."""


@dataclass(frozen=True)
class Poses:
    """Ego poses in the world frame, sorted by time."""

    t_us: np.ndarray  # [N] int64 timestamps, microseconds
    xy: np.ndarray  # [N, 2] float64 world position of the ego origin, m
    yaw: np.ndarray  # [N] float64 world heading, rad, unwrapped (continuous)


@dataclass(frozen=True)
class CameraSource:
    """Where one raw camera's frames are and when they were taken."""

    name: str
    kind: str  # "mp4" or "jpeg"
    path: Path  # the .mp4 file or the frame folder
    t_us: np.ndarray  # [M] int64 frame timestamps, increasing
    files: tuple[Path, ...] = ()  # jpeg: one file per frame, in time order


@dataclass(frozen=True)
class RawDrive:
    """A validated raw drive: everything but the pixels."""

    path: Path
    info: DriveInfo
    calib: dict[str, dict]  # per camera K [3, 3], T_cam_to_ego [4, 4], size (W, H)
    poses: Poses
    cameras: dict[str, CameraSource]  # in drive.json order
    accepted_implausible: bool = False  # written although its motion is implausible (RawLimits.accept_implausible)

    @property
    def where(self) -> str:
        return f"drive {self.info.drive_id}"

    def calib_json(self) -> bytes:
        """The clips' ``calib.json``: K, T_cam_to_ego and size of the drive's cameras, canonical JSON."""
        out = {c: {"K": v["K"].tolist(), "T_cam_to_ego": v["T_cam_to_ego"].tolist(), "size": list(v["size"])} for c, v in self.calib.items()}
        return json.dumps(out, sort_keys=True).encode()


def display_name(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 appear as ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def find_drives(raw: str | os.PathLike) -> list[Path]:
    """The drive directories under ``raw`` (or ``raw`` itself when it holds ``drive.json``), sorted by name.

    Hidden entries (``.name``) and plain files at the top level are ignored; every other directory
    is a drive, so a directory without ``drive.json`` is reported as a bad drive by :func:`load_drive`.
    """
    root = Path(raw)
    if not root.is_dir():
        raise ConfigError(f"--raw {display_name(str(root))} is not a directory; give the folder that holds the drive folders")
    if (root / DRIVE_JSON).is_file():
        return [root]
    drives = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: os.fsencode(p.name))
    if not drives:
        raise DataError(f"no drives under {display_name(str(root))}: each drive is a folder with drive.json, calib.json, poses.csv and camera files (docs/data-format.md)")
    return drives


def _check_name(name: str, where: str, what: str) -> None:
    shown = display_name(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: {what} '{shown}' is not valid UTF-8; rename it (names must be UTF-8 text)") from None
    if ".." in name:
        raise DataError(f"{where}: {what} '{shown}' contains '..'; rename it (no '..' in raw file names)")


def _check_plain_name(value: object, pattern: re.Pattern, where: str, what: str, example: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__}")
    if value.startswith(("/", "\\")) or os.path.isabs(value) or "/" in value or "\\" in value or ".." in value:
        raise DataError(f"{where}: {what} {value!r} is a path; use a plain name like {example!r} (files are found by name inside the drive folder)")
    if not pattern.match(value):
        raise DataError(f"{where}: {what} {value!r} must match {pattern.pattern}, e.g. {example!r}")
    return value


def _regular_file(path: Path, where: str, missing: str) -> Path:
    """``path`` when it is a regular file (symlinks followed). Checked before opening: a FIFO or a
    device in a raw drive would block the read forever or never end. ``missing``: the message when absent."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{where}: {missing}") from None
    except OSError as exc:
        raise DataError(f"{where}: {display_name(path.name)} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or other special file"
        raise DataError(f"{where}: {display_name(path.name)} is {kind}, not a regular file; raw inputs must be plain files")
    return path


def _read_file(path: Path, where: str, missing: str) -> bytes:
    """The bytes of a regular file of a raw drive (see :func:`_regular_file`)."""
    try:
        return _regular_file(path, where, missing).read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: {display_name(path.name)} cannot be read ({exc.strerror})") from None


def _parse_drive_json(path: Path, dir_name: str, where: str) -> DriveInfo:
    data = _read_file(path, where, f"no {DRIVE_JSON}; every drive folder needs one (docs/data-format.md)")
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{where}: {DRIVE_JSON} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: {DRIVE_JSON} must hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _DRIVE_FIELDS)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown} in {DRIVE_JSON}; known: {sorted(_DRIVE_FIELDS)}")
    missing = sorted({"drive_id", "country", "zone", "vehicle", "cameras"} - set(raw))
    if missing:
        raise DataError(f"{where}: {DRIVE_JSON} lacks {missing}")
    drive_id = _check_plain_name(raw["drive_id"], _DRIVE_ID_RE, where, "drive_id", "drive_2024_001")
    if drive_id != dir_name:
        raise DataError(f"{where}: drive_id {drive_id!r} differs from its folder name; name the folder after the drive_id")
    country = raw["country"]
    if not isinstance(country, str) or country not in ISO_COUNTRIES:
        hint = f"; did you mean {country.upper()!r}?" if isinstance(country, str) and country.upper() in ISO_COUNTRIES else ""
        raise DataError(f"{where}: unknown country {country!r}: use an ISO 3166-1 alpha-2 code such as 'CN', 'US' or 'DE'{hint}")
    try:
        zone = validate_zone(raw["zone"], f"{DRIVE_JSON} zone")
    except ConfigError as exc:
        raise DataError(f"{where}: {exc}") from None
    reason = check_country_zone(country, zone)
    if reason:  # the zone is the policy's, not the drive's to choose
        raise DataError(f"{where}: {DRIVE_JSON} {reason}")
    vehicle = raw["vehicle"]
    if not isinstance(vehicle, str) or not vehicle.strip():
        raise DataError(f"{where}: vehicle must be a non-empty string (a vehicle or rig id)")
    cams = raw["cameras"]
    if not isinstance(cams, list) or not cams:
        raise DataError(f"{where}: cameras must be a non-empty list of camera names, e.g. ['CAM_FRONT', 'CAM_BACK']")
    cameras = tuple(_check_plain_name(c, _CAMERA_RE, where, "camera name", "CAM_FRONT") for c in cams)
    if len(set(cameras)) != len(cameras):
        raise DataError(f"{where}: cameras {list(cameras)} list a camera twice")
    fps = raw.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0 or not math.isfinite(fps)):
        raise DataError(f"{where}: fps {fps!r} must be a positive number (the cameras' nominal frame rate) or left out")
    tags = raw.get("tags", {})
    if not isinstance(tags, dict):
        raise DataError(f"{where}: tags must be a JSON object")
    return DriveInfo(drive_id=drive_id, country=country, zone=zone, vehicle=vehicle, cameras=cameras,
                     fps=None if fps is None else float(fps), tags=tags)  # fmt: skip


def _read_csv(path: Path, where: str, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) rows of a CSV file with the ``required`` columns."""
    _regular_file(path, where, f"no {path.name}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row and any(c.strip() for c in row)]
    except FileNotFoundError:
        raise DataError(f"{where}: no {path.name}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: {path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{where}: {path.name} is not valid CSV ({exc})") from None
    if not rows:
        raise DataError(f"{where}: {path.name} is empty; it needs a header line {','.join(required)} and data rows")
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{where}: {path.name} header {header} lacks column(s) {missing}; the first line names the columns")
    for n, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{where}: {path.name} line {n} has {len(row)} cells, the header has {len(header)}")
    return header, rows[1:]


def _int_cell(text: str, where: str, name: str, n: int, column: str) -> int:
    cell = text.strip()
    try:
        value = int(cell) if len(cell) <= 32 else None
    except ValueError:
        value = None
    if value is None or not 0 <= value <= _MAX_US:
        shown = cell if len(cell) <= 32 else cell[:29] + "..."
        raise DataError(f"{where}: {name} line {n}: {column} {shown!r} is not an integer number of microseconds in [0, 2^63)")
    return value


def _float_cell(text: str, where: str, name: str, n: int, column: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > _MAX_POSE:
        raise DataError(f"{where}: {name} line {n}: {column} {text.strip()[:32]!r} is not a finite number within +-{_MAX_POSE:g}")
    return value


def _check_increasing(t_us: np.ndarray, lines: list[int], where: str, what: str) -> None:
    bad = np.flatnonzero(np.diff(t_us) <= 0)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: {what} line {lines[i + 1]}: timestamp_us {t_us[i + 1]} is not after the previous {t_us[i]} (timestamps must increase)")


def _check_time_unit(t_us: np.ndarray, where: str, what: str, slowest_hz: float, fastest_hz: float, advice: str) -> None:
    """Timestamps whose median interval is no rate such a sensor runs at, but is one after x1000 or
    /1000, are in the wrong unit: said before any gap or coverage check, whose advice would be wrong."""
    if len(t_us) < 2:
        return
    step = float(np.median(np.diff(t_us)))  # us
    rate = 1e6 / step
    if rate > fastest_hz and slowest_hz <= rate / 1000 <= fastest_hz:
        raise DataError(
            f"{where}: {what} timestamps are {step:g} us apart (median, {rate:.4g} Hz): timestamps in milliseconds? "
            f"timestamp_us must be microseconds (x1000 gives {rate / 1000:.4g} Hz)"
        )
    if rate < slowest_hz and slowest_hz <= rate * 1000 <= fastest_hz:
        raise DataError(
            f"{where}: {what} timestamps are {step / 1e6:.4g} s apart (median, {rate:.4g} Hz): timestamps in nanoseconds? "
            f"timestamp_us must be microseconds (/1000 gives {rate * 1000:.4g} Hz)"
        )
    if rate < slowest_hz:
        raise DataError(f"{where}: {what} timestamps are {step / 1e6:.4g} s apart (median, {rate:.4g} Hz); {advice}")


def _load_poses(path: Path, where: str, limits: RawLimits, accepted: bool) -> Poses:
    header, rows = _read_csv(path, where, ("timestamp_us", "x", "y", "yaw"))
    if len(rows) < 2:
        raise DataError(f"{where}: {POSES_CSV} has {len(rows)} pose(s); it needs at least 2")
    columns = ("x", "y", "yaw", "z") if "z" in header else ("x", "y", "yaw")
    col = {c: header.index(c) for c in ("timestamp_us", *columns)}
    t = np.array([_int_cell(r[col["timestamp_us"]], where, POSES_CSV, n, "timestamp_us") for n, r in rows], dtype=np.int64)
    vals = np.array([[_float_cell(r[col[c]], where, POSES_CSV, n, c) for c in columns] for n, r in rows])  # [N, 3 or 4]
    lines = [n for n, _ in rows]
    _check_increasing(t, lines, where, POSES_CSV)
    _check_time_unit(t, where, POSES_CSV, 1 / limits.max_pose_gap_s, 2000.0,
                     f"poses sparser than --max-pose-gap {limits.max_pose_gap_s:g} s: give denser poses, or raise --max-pose-gap if interpolating over such gaps is right")  # fmt: skip
    gaps = np.diff(t) / 1e6
    over = np.flatnonzero(gaps > limits.max_pose_gap_s)
    if over.size:  # the first one, where the drive would be split
        i = int(over[0])
        raise DataError(
            f"{where}: {POSES_CSV} has a {gaps[i]:.3f} s gap in poses between timestamp_us {t[i]} and {t[i + 1]} (line {lines[i + 1]}, "
            f"+{(t[i] - t[0]) / 1e6:.1f} s); at most --max-pose-gap {limits.max_pose_gap_s:g} s allowed (split the drive there)"
        )
    if not accepted:
        ts = (t - t[0]) / 1e6
        bad = (check_extents(ts, vals[:, [0, 1, 3]]) if len(columns) == 4 else None) or check_motion(ts, vals[:, :2], vals[:, 2], limits=limits.motion)
        if bad is not None:
            drive_id = where.removeprefix("drive ")
            raise DataError(f"{where}: implausible poses {bad.line()}; if the poses are right, --accept-implausible {drive_id} writes the drive anyway")
    return Poses(t_us=t, xy=vals[:, :2].copy(), yaw=np.unwrap(vals[:, 2]))


def _count_video_frames(path: Path, where: str) -> tuple[int, tuple[int, int]]:
    """Frames in an MP4 (packets, no decode) and its (W, H)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{where}: {path.name} has no video stream")
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except (av.error.FFmpegError, EOFError) as exc:
        raise DataError(f"{where}: {path.name} is not a readable video ({type(exc).__name__}: {exc})") from None
    return count, size


def _load_camera(drive_dir: Path, names: set[str], cam: str, size: tuple[int, int], where: str) -> CameraSource:
    video, folder = f"{cam}.mp4", cam
    has_video, has_folder = video in names and not (drive_dir / video).is_dir(), folder in names and (drive_dir / folder).is_dir()
    if has_video and has_folder:
        raise DataError(f"{where}: camera {cam} has both {video} and a folder {cam}/; keep one")
    if has_video:
        ts_name = f"{cam}.timestamps.csv"
        header, rows = _read_csv(drive_dir / ts_name, where, ("timestamp_us",))
        c = header.index("timestamp_us")
        t = np.array([_int_cell(r[c], where, ts_name, n, "timestamp_us") for n, r in rows], dtype=np.int64)
        if len(t) < 1:
            raise DataError(f"{where}: {ts_name} lists no frames")
        _check_increasing(t, [n for n, _ in rows], where, ts_name)
        _regular_file(drive_dir / video, where, f"no {video}")
        count, video_size = _count_video_frames(drive_dir / video, where)
        if count != len(t):
            shorter = "video shorter than its timestamps" if count < len(t) else "timestamps missing for some frames"
            raise DataError(f"{where}: {video} has {count} frames but {ts_name} lists {len(t)} ({shorter})")
        if video_size != size:
            raise DataError(f"{where}: {video} is {video_size[0]}x{video_size[1]} but calib.json says {size[0]}x{size[1]}")
        return CameraSource(name=cam, kind="mp4", path=drive_dir / video, t_us=t)
    if has_folder:
        frames = []
        for entry in os.scandir(drive_dir / folder):
            _check_name(f"{cam}/{entry.name}", where, "file")
            if entry.name.startswith("."):
                continue
            m = _JPEG_RE.match(entry.name)
            if m is not None and int(m.group(1)) > _MAX_US:
                raise DataError(f"{where}: {cam}/{entry.name}: timestamp_us {m.group(1)} is not in [0, 2^63)")
            if m is None or not entry.is_file():
                raise DataError(f"{where}: unexpected {cam}/{display_name(entry.name)}; a camera folder holds only <timestamp_us>.jpg frames")
            frames.append((int(m.group(1)), entry.name))
        if not frames:
            raise DataError(f"{where}: camera folder {cam}/ holds no <timestamp_us>.jpg frames")
        frames.sort()
        t = np.array([ts for ts, _ in frames], dtype=np.int64)
        dup = np.flatnonzero(np.diff(t) == 0)
        if dup.size:
            raise DataError(f"{where}: {cam}/ has two frames at timestamp_us {t[dup[0]]} ({frames[dup[0]][1]}, {frames[dup[0] + 1][1]})")
        return CameraSource(name=cam, kind="jpeg", path=drive_dir / folder, t_us=t, files=tuple(drive_dir / folder / n for _, n in frames))
    raise DataError(f"{where}: missing camera {cam}: expected {video} with {cam}.timestamps.csv, or a folder {cam}/ of <timestamp_us>.jpg frames")


def load_drive(path: str | os.PathLike, *, limits: RawLimits | None = None) -> RawDrive:
    """Reads and checks one raw drive folder (everything but the pixels).

    Raises:
        DataError: one line, ``drive <name>: <problem>``, for the first problem found.
    """
    limits = limits or RawLimits()
    drive_dir = Path(path)
    where = f"drive {display_name(drive_dir.name)}"
    _check_name(drive_dir.name, where, "drive folder")
    if not drive_dir.is_dir():
        raise DataError(f"{where}: {display_name(str(drive_dir))} is not a folder")
    names = set(os.listdir(drive_dir))
    for name in sorted(names, key=os.fsencode):
        _check_name(name, where, "file")
    info = _parse_drive_json(drive_dir / DRIVE_JSON, drive_dir.name, where)
    calib_bytes = _read_file(drive_dir / CALIB_JSON, where, f"no {CALIB_JSON}; it gives K, T_cam_to_ego and size per camera")
    calib = parse_calib(calib_bytes, list(info.cameras), where)
    for cam, c in calib.items():
        w, h = c["size"]
        if w < 2 or h < 2 or w % 2 or h % 2:
            raise DataError(f"{where}: {cam} size {w}x{h} in {CALIB_JSON}: width and height must be even (H.264 yuv420p); crop the frames by one pixel")
    accepted = info.drive_id in limits.accept_implausible
    poses = _load_poses(drive_dir / POSES_CSV, where, limits, accepted)
    cameras = {cam: _load_camera(drive_dir, names, cam, calib[cam]["size"], where) for cam in info.cameras}
    for src in cameras.values():
        _check_camera_timing(src, poses, info, limits, where)
    return RawDrive(path=drive_dir, info=info, calib=calib, poses=poses, cameras=cameras, accepted_implausible=accepted)


def _check_camera_timing(src: CameraSource, poses: Poses, info: DriveInfo, limits: RawLimits, where: str) -> None:
    what = f"{src.name}.timestamps.csv" if src.kind == "mp4" else f"{src.name}/ frame"
    _check_time_unit(src.t_us, where, what, 0.5, 1000.0, "a camera needs at least 0.5 Hz (gaps in its frames?)")
    if info.fps is not None and len(src.t_us) > 1:
        measured = 1e6 / float(np.median(np.diff(src.t_us)))
        if abs(measured - info.fps) > limits.fps_tolerance * info.fps:
            raise DataError(f"{where}: {src.name} timestamps say {measured:.3g} Hz but drive.json fps is {info.fps:g} (a wrong fps in drive.json, or the timestamps of another camera?)")
    t0, t1 = int(poses.t_us[0]), int(poses.t_us[-1])
    late, early = (int(src.t_us[0]) - t0) / 1e6, (t1 - int(src.t_us[-1])) / 1e6
    if late > limits.max_edge_s:
        raise DataError(f"{where}: {src.name} starts {late:.3f} s after the first pose (video shorter than its poses; at most --max-edge {limits.max_edge_s:g} s)")
    if early > limits.max_edge_s:
        raise DataError(f"{where}: {src.name} ends {early:.3f} s before the last pose (video shorter than its poses; at most --max-edge {limits.max_edge_s:g} s)")
    if -late > limits.max_edge_s or -early > limits.max_edge_s:
        raise DataError(f"{where}: poses cover {(t1 - t0) / 1e6:.3f} s but {src.name} runs {max(-late, -early):.3f} s beyond them (poses shorter than the video; at most --max-edge {limits.max_edge_s:g} s)")


class CameraReader:
    """Reads one raw camera's frames by index, in non-decreasing index order (one pass over an MP4).

    Args:
        source: the camera.
        size: expected (W, H) from calib.json; a frame of another size is a DataError.
        where: ``drive <id>``, for error messages.
    """

    def __init__(self, source: CameraSource, size: tuple[int, int], where: str) -> None:
        self.source, self.size, self.where = source, tuple(size), where
        self._container = None
        self._frames = None
        self._pos = -1
        self._last: np.ndarray | None = None
        self._rgb = VideoReformatter()  # one FFmpeg scaler for the camera (to_ndarray(format=...) makes one per frame)

    def __enter__(self) -> CameraReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as [H, W, 3] uint8 RGB."""
        frame = self._read_jpeg(index) if self.source.kind == "jpeg" else self._read_video(index)
        if (frame.shape[1], frame.shape[0]) != self.size:
            name = self.source.files[index].name if self.source.kind == "jpeg" else f"frame {index}"
            raise DataError(f"{self.where}: {self.source.name} {name} is {frame.shape[1]}x{frame.shape[0]}, calib.json says {self.size[0]}x{self.size[1]}")
        return frame

    def _read_jpeg(self, index: int) -> np.ndarray:
        path = self.source.files[index]
        try:
            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    return self._rgb.reformat(frame, format="rgb24").to_ndarray()
        except (av.error.FFmpegError, EOFError) as exc:
            raise DataError(f"{self.where}: unreadable frame {self.source.name}/{path.name} ({type(exc).__name__}: {exc})") from None
        raise DataError(f"{self.where}: unreadable frame {self.source.name}/{path.name} (no image in it)")

    def _read_video(self, index: int) -> np.ndarray:
        assert index >= self._pos, "frames of an MP4 are read in increasing order"
        name = self.source.path.name
        try:
            if self._frames is None:
                self._container = av.open(str(self.source.path))
                stream = self._container.streams.video[0]
                stream.thread_type = "AUTO"
                self._frames = self._container.decode(stream)
            while self._pos < index:
                frame = next(self._frames, None)
                if frame is None:
                    raise DataError(f"{self.where}: {name} ends after {self._pos + 1} decodable frames, its timestamps list {len(self.source.t_us)} (unreadable frame {self._pos + 1}?)")
                self._pos += 1
                self._last = self._rgb.reformat(frame, format="rgb24").to_ndarray()
        except (av.error.FFmpegError, EOFError) as exc:
            raise DataError(f"{self.where}: unreadable frame {self._pos + 1} of {name} ({type(exc).__name__}: {exc})") from None
        assert self._last is not None
        return self._last
