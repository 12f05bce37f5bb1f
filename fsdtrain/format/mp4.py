"""MP4 sample tables read without a demuxer: where each frame's packet lies, and which are keyframes.

Opening an MP4 with FFmpeg (``av.open``: probing, ``avformat_find_stream_info``, one packet object
per demuxed sample) costs more than decoding the few frames a window needs from a small clip: about
1.5 ms per camera video of ten seconds against ~0.15 ms per decoded 160x96 frame. The sample
tables in the ``moov`` box say the same in a few hundred bytes, so :func:`sample_table` reads them
with ``struct`` and numpy, and :mod:`fsdtrain.format.video` hands the packets straight to a decoder
made from the track's codec configuration.

Only the plain layout that fsdtrain's writer (FFmpeg's mp4 muxer) and most cameras' recorders
produce is read here: one H.264 or HEVC video track, no fragments, no composition offsets
(no B-frames: packet order is frame order), at most one edit, showing every frame from the first.
Anything else (other codecs, fragmented MP4, several video tracks, B-frames, a malformed or
truncated box) gives ``None``, and the caller demuxes with FFmpeg, which then names what is wrong.
The two ways decode the same frames (tests/format/test_video.py checks pixel for pixel).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["SampleTable", "sample_table"]

_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc"}
"""Sample entry -> FFmpeg decoder name; its configuration box is FFmpeg's ``extradata``."""
_CONFIG = {"h264": b"avcC", "hevc": b"hvcC"}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
_VISUAL_ENTRY = 78  # bytes of a VisualSampleEntry before its child boxes (ISO/IEC 14496-12)


class _Unsupported(Exception):
    """Not the plain layout read here: the caller demuxes with FFmpeg instead."""


@dataclass(frozen=True)
class SampleTable:
    """The video track of an MP4, as packets to decode.

    Attributes:
        codec: FFmpeg decoder name (``h264``, ``hevc``).
        extradata: the track's codec configuration (``avcC``/``hvcC`` payload), as FFmpeg's demuxer sets it.
        width, height: coded size from the sample entry.
        offsets, sizes: int64 [F], each packet's bytes in the file, in decode (= presentation) order.
        keyframes: bool [F], sync samples.
    """

    codec: str
    extradata: bytes
    width: int
    height: int
    offsets: np.ndarray
    sizes: np.ndarray
    keyframes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)


def sample_table(data: bytes | memoryview) -> SampleTable | None:
    """The video track's sample table, or ``None`` when the file is not the plain layout read here."""
    try:
        return _read(memoryview(data))
    except (_Unsupported, struct.error, ValueError):  # struct.error: a box runs past its parent
        return None


def _boxes(buf: memoryview, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    """Child boxes of ``buf[start:end]``: type -> [(payload start, payload end)], in file order."""
    found: dict[bytes, list[tuple[int, int]]] = {}
    at = start
    while at < end:
        if at + 8 > end:
            raise _Unsupported(f"box header at {at} overruns its parent")
        size, kind = struct.unpack_from(">I4s", buf, at)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", buf, at + 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise _Unsupported(f"box {kind!r} at {at} overruns its parent")
        found.setdefault(kind, []).append((at + header, at + size))
        at += size
    return found


def _one(boxes: dict[bytes, list[tuple[int, int]]], kind: bytes) -> tuple[int, int]:
    spans = boxes.get(kind, [])
    if len(spans) != 1:
        raise _Unsupported(f"{len(spans)} {kind!r} boxes")
    return spans[0]


def _full_box_table(buf: memoryview, span: tuple[int, int], dtype: str, columns: int, skip: int = 0) -> np.ndarray:
    """The entries of a full box: version/flags, ``skip`` bytes, u32 entry count, then the entries."""
    start, end = span
    (count,) = struct.unpack_from(">I", buf, start + 4 + skip)
    first = start + 8 + skip
    width = np.dtype(dtype).itemsize * columns
    if first + count * width > end:
        raise _Unsupported("table runs past its box")
    table = np.frombuffer(buf, dtype=dtype, count=count * columns, offset=first)
    return table.reshape(count, columns).astype(np.int64)


def _read(buf: memoryview) -> SampleTable:
    top = _boxes(buf, 0, len(buf))
    if b"moof" in top or b"mdat" not in top:
        raise _Unsupported("fragmented or without media data")
    moov = _boxes(buf, *_one(top, b"moov"))
    if b"mvex" in moov:
        raise _Unsupported("fragmented")
    videos = []
    for trak in moov.get(b"trak", []):
        boxes = _boxes(buf, *trak)
        mdia = _boxes(buf, *_one(boxes, b"mdia"))
        hdlr, hdlr_end = _one(mdia, b"hdlr")
        if hdlr_end - hdlr >= 12 and bytes(buf[hdlr + 8 : hdlr + 12]) == b"vide":
            videos.append((boxes, mdia))
    if len(videos) != 1:
        raise _Unsupported(f"{len(videos)} video tracks")
    trak, mdia = videos[0]
    stbl = _boxes(buf, *_one(_boxes(buf, *_one(mdia, b"minf")), b"stbl"))
    if b"ctts" in stbl:
        raise _Unsupported("composition offsets (B-frames)")
    codec, extradata, width, height = _sample_entry(buf, _one(stbl, b"stsd"))
    sizes = _sizes(buf, _one(stbl, b"stsz"))
    count = len(sizes)
    deltas = _full_box_table(buf, _one(stbl, b"stts"), ">u4", 2)
    if int(deltas[:, 0].sum()) != count or (deltas[:, 1] == 0).any():
        raise _Unsupported("time-to-sample table does not give every sample its own time")
    if b"edts" in trak:
        last_start = int(deltas[:, 0] @ deltas[:, 1]) - int(deltas[-1, 1])  # the last frame's time, media units
        edit = _one(_boxes(buf, *_one(trak, b"edts")), b"elst")
        _check_edit(buf, edit, last_start, movie_scale=_timescale(buf, _one(moov, b"mvhd")), media_scale=_timescale(buf, _one(mdia, b"mdhd")))
    chunks = _chunk_offsets(buf, stbl)
    offsets = _sample_offsets(_full_box_table(buf, _one(stbl, b"stsc"), ">u4", 3), chunks, sizes)
    if count == 0 or (sizes <= 0).any() or offsets.min() < 0 or int((offsets + sizes).max()) > len(buf):
        raise _Unsupported("samples outside the file")
    keyframes = np.ones(count, dtype=bool)
    if b"stss" in stbl:
        sync = _full_box_table(buf, _one(stbl, b"stss"), ">u4", 1)[:, 0]
        if ((sync < 1) | (sync > count)).any():
            raise _Unsupported("sync sample out of range")
        keyframes[:] = False
        keyframes[sync - 1] = True
    return SampleTable(codec, extradata, width, height, offsets, sizes, keyframes)


def _timescale(buf: memoryview, span: tuple[int, int]) -> int:
    """Units per second of an ``mvhd`` or ``mdhd`` box (after version/flags and the two times)."""
    start, end = span
    at = start + (20 if buf[start] == 1 else 12)
    if at + 4 > end:
        raise _Unsupported("header box too short")
    (scale,) = struct.unpack_from(">I", buf, at)
    if scale == 0:
        raise _Unsupported("zero timescale")
    return scale


def _check_edit(buf: memoryview, span: tuple[int, int], last_start: int, *, movie_scale: int, media_scale: int) -> None:
    """One edit from the first sample at normal rate, lasting past the last frame's start, is what a
    plain file has; anything else (delays, cuts, a trimmed end) makes FFmpeg drop or shift frames, so
    it demuxes those files. ``last_start``: the last frame's time in media units."""
    start, end = span
    entry = ">QqHH" if buf[start] == 1 else ">IiHH"
    if start + 8 + struct.calcsize(entry) > end:
        raise _Unsupported("edit list too short")
    (count,) = struct.unpack_from(">I", buf, start + 4)
    if count != 1:
        raise _Unsupported(f"{count} edits")
    duration, media_time, rate, _ = struct.unpack_from(entry, buf, start + 8)
    if media_time != 0 or rate != 1 or duration * media_scale <= last_start * movie_scale:
        raise _Unsupported("edit does not show every frame from the first")


def _sample_entry(buf: memoryview, span: tuple[int, int]) -> tuple[str, bytes, int, int]:
    start, end = span
    (count,) = struct.unpack_from(">I", buf, start + 4)
    entries = _boxes(buf, start + 8, end)
    if count != 1 or sum(len(v) for v in entries.values()) != 1:
        raise _Unsupported("not one sample description")
    ((kind, [(body, body_end)]),) = entries.items()
    codec = _CODECS.get(kind)
    if codec is None:
        raise _Unsupported(f"sample entry {kind!r}")
    width, height = struct.unpack_from(">HH", buf, body + 24)
    config = _one(_boxes(buf, body + _VISUAL_ENTRY, body_end), _CONFIG[codec])
    return codec, bytes(buf[config[0] : config[1]]), width, height


def _sizes(buf: memoryview, span: tuple[int, int]) -> np.ndarray:
    start, end = span
    uniform, count = struct.unpack_from(">II", buf, start + 4)
    if uniform:
        return np.full(count, uniform, dtype=np.int64)
    if start + 12 + 4 * count > end:
        raise _Unsupported("sample size table runs past its box")
    return np.frombuffer(buf, dtype=">u4", count=count, offset=start + 12).astype(np.int64)


def _chunk_offsets(buf: memoryview, stbl: dict[bytes, list[tuple[int, int]]]) -> np.ndarray:
    if (b"stco" in stbl) == (b"co64" in stbl):
        raise _Unsupported("not one chunk offset table")
    if b"stco" in stbl:
        return _full_box_table(buf, _one(stbl, b"stco"), ">u4", 1)[:, 0]
    return _full_box_table(buf, _one(stbl, b"co64"), ">u8", 1)[:, 0]


def _sample_offsets(runs: np.ndarray, chunks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each sample's file offset from the sample-to-chunk runs ``[first chunk (1-based), samples per
    chunk, description]``: a chunk's samples lie back to back from its offset."""
    if len(runs) == 0 or runs[0, 0] != 1 or (np.diff(runs[:, 0]) <= 0).any() or (runs[:, 1] <= 0).any():
        raise _Unsupported("sample-to-chunk runs out of order")
    if runs[-1, 0] > len(chunks):
        raise _Unsupported("sample-to-chunk run past the last chunk")
    starts = np.cumsum(sizes) - sizes  # each sample's bytes after the first sample's
    if len(chunks) == 1:  # the common layout: one chunk holds every sample
        if runs[0, 1] != len(sizes):
            raise _Unsupported("chunks do not hold every sample")
        return chunks[0] + starts
    chunk_counts = np.diff(np.append(runs[:, 0], len(chunks) + 1))  # chunks in each run
    per_chunk = np.repeat(runs[:, 1], chunk_counts)  # [chunks] samples in each chunk
    if int(per_chunk.sum()) != len(sizes):
        raise _Unsupported("chunks do not hold every sample")
    chunk_of = np.repeat(np.arange(len(chunks)), per_chunk)  # [samples]
    first = np.cumsum(per_chunk) - per_chunk  # index of each chunk's first sample
    return chunks[chunk_of] + starts - starts[first][chunk_of]  # + bytes of earlier samples in the same chunk
