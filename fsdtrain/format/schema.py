"""The clip schema ``fsdtrain.clip/1`` (docs/data-format.md): member names, meta fields, validation.

One webdataset sample is one clip: ``meta.json``, ``calib.json``, ``ego.npy`` and one
``<camera>.mp4`` per camera. Keys are ``<drive_id>-<first_frame:06d>`` in ``[A-Za-z0-9_-]``.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from fsdtrain.errors import DataError

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
    "parse_meta",
    "parse_calib",
]

SCHEMA = "fsdtrain.clip/1"
DEFAULT_CAMERAS = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
EGO_FIELDS = ("t", "x", "y", "yaw", "speed", "yaw_rate")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
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


def decode_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{where}: not a plain .npy array ({exc})") from None


def parse_meta(data: bytes, where: str) -> ClipMeta:
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: meta.json is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{where}: meta.json schema is {found!r}, expected {SCHEMA!r}")
    try:
        meta = ClipMeta(**raw)
    except TypeError as exc:
        raise DataError(f"{where}: meta.json fields do not match {SCHEMA}: {exc}") from None
    if not _COUNTRY_RE.match(str(meta.country)):
        raise DataError(f"{where}: country {meta.country!r} is not an ISO 3166-1 alpha-2 code")
    if not isinstance(meta.cameras, list) or not meta.cameras or not all(isinstance(c, str) and _NAME_RE.match(c) for c in meta.cameras):
        raise DataError(f"{where}: cameras must be a non-empty list of names in [A-Za-z0-9_]")
    if int(meta.frames) < 1 or float(meta.fps) <= 0:
        raise DataError(f"{where}: frames and fps must be positive")
    return meta


def parse_calib(data: bytes, cameras: list[str], where: str) -> dict[str, dict[str, np.ndarray]]:
    """``calib.json`` -> per camera ``K`` [3, 3], ``T_cam_to_ego`` [4, 4] and ``size`` (W, H)."""
    try:
        raw = json.loads(data)
        out = {}
        for cam in cameras:
            c = raw[cam]
            K = np.asarray(c["K"], dtype=np.float64)
            T = np.asarray(c["T_cam_to_ego"], dtype=np.float64)
            if K.shape != (3, 3) or T.shape != (4, 4):
                raise ValueError(f"camera {cam}: K must be 3x3 and T_cam_to_ego 4x4")
            out[cam] = {"K": K, "T_cam_to_ego": T, "size": tuple(int(v) for v in c["size"])}
        return out
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: bad calib.json ({type(exc).__name__}: {exc})") from None
