"""The clip schema ``fsdtrain.clip/1`` (docs/data-format.md): member names, meta fields, validation.

One webdataset sample is one clip: ``meta.json``, ``calib.json``, ``ego.npy`` and one
``<camera>.mp4`` per camera. Keys are ``<drive_id>-<first_frame:06d>`` in ``[A-Za-z0-9_-]``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.lib import format as npformat

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.residency import check_country_zone, validate_zone

__all__ = [
    "SCHEMA",
    "DEFAULT_CAMERAS",
    "EGO_FIELDS",
    "ClipMeta",
    "clip_key",
    "validate_key",
    "validate_member",
    "encode_npy",
    "decode_npy",
    "decode_ego",
    "EGO_LIMITS",
    "MAX_FRAMES",
    "MAX_FPS",
    "MAX_IMAGE_SIDE",
    "parse_meta",
    "parse_calib",
    "strict_json",
    "shown",
    "is_int",
    "is_number",
    "is_sha256",
    "is_country",
    "is_camera_list",
    "fields_problem",
]

SCHEMA = "fsdtrain.clip/1"
DEFAULT_CAMERAS = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
EGO_FIELDS = ("t", "x", "y", "yaw", "speed", "yaw_rate")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_DRIVE_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FRAMES = 100_000
"""Most frames one clip may declare (about 3 hours at 10 Hz; clips are seconds to minutes)."""
MAX_FPS = 1000.0
"""Highest frame rate a clip may declare."""
MAX_IMAGE_SIDE = 16384
"""Largest width or height, in pixels, ``calib.json`` may give a camera."""
MAX_CALIB = 1e6
"""Largest magnitude of any K or T_cam_to_ego entry (pixels, metres)."""
MAX_MOUNT_M = 100.0
"""Farthest a camera may be mounted from the ego origin."""
EGO_LIMITS = {
    "t": (0.0, 1e6),  # s from the clip's first frame
    "x": (-1e6, 1e6),  # m, in the first frame's ego frame
    "y": (-1e6, 1e6),
    "yaw": (-1e4, 1e4),  # rad, unwrapped
    "speed": (-200.0, 200.0),  # m/s (negative: reversing)
    "yaw_rate": (-100.0, 100.0),  # rad/s
}
"""Per ``ego.npy`` field, the range a value must lie in (besides being finite): far outside anything a
vehicle does, so only broken data is refused."""
FIXED_MEMBERS = ("meta.json", "calib.json", "ego.npy")


@dataclass
class ClipMeta:
    """``meta.json`` of one clip."""

    clip_id: str
    drive_id: str
    country: str
    zone: str
    timestamp_us: int
    fps: float
    frames: int
    cameras: list[str]
    tags: dict = field(default_factory=dict)
    schema: str = SCHEMA

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def clip_key(drive_id: str, first_frame: int) -> str:
    return validate_key(f"{drive_id}-{first_frame:06d}")


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise DataError(f"bad sample key {key!r}: keys use only [A-Za-z0-9_-], at most 128 characters")
    return key


def validate_member(key: str, suffix: str, cameras: list[str] | None = None) -> None:
    """Raises unless ``suffix`` is a member the schema allows (no paths, no pickles, known cameras)."""
    if suffix in FIXED_MEMBERS:
        return
    if suffix.endswith(".mp4"):
        cam = suffix[: -len(".mp4")]
        if _NAME_RE.match(cam) and (cameras is None or cam in cameras):
            return
    raise DataError(f"sample {key}: member '{suffix}' is not part of schema {SCHEMA}")


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _npy_header(data: bytes, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a ``.npy`` file, read without touching its data."""
    buf = io.BytesIO(data)
    try:
        version = npformat.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise DataError(f"{where}: not a plain .npy array ({exc})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{where}: .npy dtype {dtype} is not a plain numeric type")
    if not all(is_int(n, 0, 2**63 - 1) for n in shape):  # numpy's header reader lets -1 through
        raise DataError(f"{where}: .npy header shape {shown(shape)} is not a tuple of non-negative integers")
    return tuple(shape), bool(fortran), dtype, buf.tell()


def decode_npy(data: bytes, where: str) -> np.ndarray:
    """A plain ``.npy`` array (no pickles), its header checked before any allocation: the data must be
    exactly the bytes the header's dtype and shape declare, so a header declaring 10^12 rows is one
    :class:`DataError`, not a ``MemoryError`` (``np.load`` allocates what the header says first)."""
    shape, fortran, dtype, offset = _npy_header(data, where)
    count = math.prod(shape)
    body = len(data) - offset
    if count * dtype.itemsize != body:  # Python ints: no overflow whatever the header claims
        raise DataError(f"{where}: .npy header declares {dtype.name}{list(shape)} ({count * dtype.itemsize} bytes), the file holds {body}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def decode_ego(data: bytes, frames: int, where: str) -> np.ndarray:
    """``ego.npy`` (``where`` names the clip): little-endian float64 [frames, 6] in C order, its header
    checked before the data is read, every value finite and inside :data:`EGO_LIMITS`."""
    shape, fortran, dtype, _ = _npy_header(data, f"{where}: ego.npy")
    want = (frames, len(EGO_FIELDS))
    if shape != want or dtype != np.dtype("<f8") or fortran:
        found = f"{dtype.name if dtype.isnative or dtype.itemsize == 1 else dtype.str}{list(shape)}{' Fortran order' if fortran else ''}"
        raise DataError(f"{where}: ego.npy is {found}, expected float64{list(want)} in C order (meta.json frames x {', '.join(EGO_FIELDS)})")
    ego = decode_npy(data, f"{where}: ego.npy")
    for j, name in enumerate(EGO_FIELDS):
        col = ego[:, j]
        low, high = EGO_LIMITS[name]
        bad = np.flatnonzero(~np.isfinite(col) | (col < low) | (col > high))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{where}: ego.npy {name} at frame {i} is {float(col[i])!r}, must be finite and in [{low:g}, {high:g}]")
    return ego


def strict_json(data: bytes) -> object:
    """``json.loads`` that refuses a key twice in one object (``ValueError``): readers that keep the
    first and readers that keep the last copy would otherwise see different clips."""

    def pairs(items: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise ValueError(f"key {shown(key)} appears twice in one object")
            seen.add(key)
        return dict(items)

    return json.loads(data, object_pairs_hook=pairs)


def shown(value: object) -> str:
    """``repr(value)``, cut to one short line: error messages quote what they refuse, never all of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: object, low: int, high: int = 2**63 - 1) -> bool:
    """Whether ``value`` is a JSON integer (not a bool, not a float such as ``1e999``) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 digest as fsdtrain writes it: 64 lower-case hex digits."""
    return isinstance(value, str) and _SHA256_RE.match(value) is not None


def is_country(value: object) -> bool:
    """Whether ``value`` is written as an ISO 3166-1 alpha-2 code: two upper-case letters (``CN``)."""
    return isinstance(value, str) and _COUNTRY_RE.match(value) is not None


def is_camera_list(value: object) -> bool:
    """Whether ``value`` is a non-empty list of distinct camera names of ``[A-Za-z0-9_]{1,32}``."""
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and _NAME_RE.match(c) for c in value):
        return False
    return len(set(value)) == len(value)


def fields_problem(raw: dict, known: set[str], required: set[str]) -> str | None:
    """``"unknown [...]; missing [...]"`` when the keys of a JSON record differ from its schema (``known``
    fields, of which ``required`` must be there), else None; the caller names the file."""
    unknown, missing = sorted(set(raw) - known), sorted(required - set(raw))
    parts = ([f"unknown {shown(unknown)}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
    return "; ".join(parts) or None


def _field(where: str, file: str, name: str, problem: str) -> DataError:
    return DataError(f"{where}: {file} {name} {problem}")


def is_number(value: object, low: float, high: float, *, open_low: bool = False) -> bool:
    """Whether ``value`` is a finite JSON number (not a bool, not a string) in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    value = float(value)
    return math.isfinite(value) and (value > low if open_low else value >= low) and value <= high


def parse_meta(data: bytes, where: str) -> ClipMeta:
    """``meta.json`` -> :class:`ClipMeta`, every field checked for type and range (and the zone against
    the residency policy for the country); one :class:`DataError` naming ``where`` and the field."""
    file = "meta.json"
    try:
        raw = strict_json(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{where}: {file} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: {file} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("schema") != SCHEMA:
        raise _field(where, file, "schema", f"is {shown(raw.get('schema'))}, expected {SCHEMA!r}")
    names = {f.name for f in dataclasses.fields(ClipMeta)}
    problem = fields_problem(raw, names, names - {"tags"})
    if problem:
        raise DataError(f"{where}: {file} fields do not match {SCHEMA}: {problem}")
    if not isinstance(raw["clip_id"], str) or not _KEY_RE.match(raw["clip_id"]):
        raise _field(where, file, "clip_id", f"{shown(raw['clip_id'])} must be a sample key of [A-Za-z0-9_-], at most 128 characters")
    if not isinstance(raw["drive_id"], str) or not _DRIVE_RE.match(raw["drive_id"]):
        raise _field(where, file, "drive_id", f"{shown(raw['drive_id'])} must be 1-100 characters of [A-Za-z0-9_-]")
    if not is_country(raw["country"]):
        raise _field(where, file, "country", f"{shown(raw['country'])} is not an ISO 3166-1 alpha-2 code such as 'CN'")
    zone = raw["zone"]
    try:
        validate_zone(zone)
    except ConfigError:
        raise _field(where, file, "zone", f"{shown(zone)} is not a zone name (lower-case letters, digits and '-', e.g. 'global' or 'cn')") from None
    reason = check_country_zone(raw["country"], zone)
    if reason:
        raise DataError(f"{where}: {file} {reason}")
    if not is_int(raw["timestamp_us"], 0, 2**63 - 1):
        raise _field(where, file, "timestamp_us", f"{shown(raw['timestamp_us'])} must be an integer number of microseconds in [0, 2^63)")
    if not is_number(raw["fps"], 0.0, MAX_FPS, open_low=True):
        raise _field(where, file, "fps", f"{shown(raw['fps'])} must be a number in (0, {MAX_FPS:g}]")
    if not is_int(raw["frames"], 1, MAX_FRAMES):
        raise _field(where, file, "frames", f"{shown(raw['frames'])} must be an integer in [1, {MAX_FRAMES}]")
    cams = raw["cameras"]
    if not is_camera_list(cams):
        raise _field(where, file, "cameras", "must be a non-empty list of distinct names in [A-Za-z0-9_]")
    if not isinstance(raw.get("tags", {}), dict):
        raise _field(where, file, "tags", "must be a JSON object")
    return ClipMeta(**{**raw, "fps": float(raw["fps"])})


def parse_calib(data: bytes, cameras: list[str], where: str) -> dict[str, dict[str, np.ndarray]]:
    """``calib.json`` -> per camera ``K`` [3, 3], ``T_cam_to_ego`` [4, 4] and ``size`` (W, H), every value
    checked (finite intrinsics with positive focal lengths, a rigid transform, a size in pixels); one
    :class:`DataError` naming ``where``, calib.json and the camera's field."""
    file = "calib.json"
    try:
        raw = strict_json(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{where}: {file} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: {file} must hold a JSON object of cameras, got {type(raw).__name__}")
    out = {}
    for cam in cameras:
        c = raw.get(cam)
        if not isinstance(c, dict):
            raise _field(where, file, cam, "is missing (every camera needs K, T_cam_to_ego and size)" if c is None else "must be a JSON object")
        out[cam] = {
            "K": _matrix(c.get("K"), (3, 3), where, f"{cam}.K"),
            "T_cam_to_ego": _matrix(c.get("T_cam_to_ego"), (4, 4), where, f"{cam}.T_cam_to_ego"),
            "size": _size(c.get("size"), where, f"{cam}.size"),
        }
        K, T = out[cam]["K"], out[cam]["T_cam_to_ego"]
        if not (K[0, 0] > 0 and K[1, 1] > 0 and np.array_equal(K[2], [0.0, 0.0, 1.0]) and K[1, 0] == 0):
            raise _field(where, file, f"{cam}.K", "must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
        R = T[:3, :3]
        if not np.array_equal(T[3], [0.0, 0.0, 0.0, 1.0]) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or not np.linalg.det(R) > 0:
            raise _field(where, file, f"{cam}.T_cam_to_ego", "must be a rigid transform: a rotation, a translation and last row [0, 0, 0, 1]")
        if np.abs(T[:3, 3]).max() > MAX_MOUNT_M:
            raise _field(where, file, f"{cam}.T_cam_to_ego", f"puts the camera more than {MAX_MOUNT_M:g} m from the ego origin")
    return out


def _matrix(value: object, shape: tuple[int, int], where: str, name: str) -> np.ndarray:
    rows, cols = shape
    ok = isinstance(value, list) and len(value) == rows and all(
        isinstance(r, list) and len(r) == cols and all(is_number(v, -MAX_CALIB, MAX_CALIB) for v in r) for r in value
    )  # fmt: skip
    if not ok:
        raise _field(where, "calib.json", name, f"must be a {rows}x{cols} matrix of finite numbers within +-{MAX_CALIB:g}")
    return np.asarray(value, dtype=np.float64)


def _size(value: object, where: str, name: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(is_int(v, 1, MAX_IMAGE_SIDE) for v in value)):
        raise _field(where, "calib.json", name, f"{shown(value)} must be [width, height] in pixels, each in [1, {MAX_IMAGE_SIDE}]")
    return int(value[0]), int(value[1])
