"""Video decode with PyAV: MP4 bytes -> RGB frames, with errors that name the clip and camera.

Random access without seeking: the container is demuxed (cheap: no decoding), and only the packets
from the keyframe at or before each wanted frame up to that frame go through the decoder. A window
that needs frames 25 and 30 of a clip with a keyframe every 10 frames decodes frames 20..30, not
0..30. There is no ``container.seek``: packets are picked from the demuxed list, so the decoder
never has to be repositioned, and decoding in forked loader workers needs no extra care.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np

from fsdtrain.errors import DataError

__all__ = ["decode_video", "frames_to_decode"]


def frames_to_decode(keyframes: Sequence[bool], wanted: Sequence[int]) -> np.ndarray:
    """Mask over packets (= frames; no B-frames) that must be decoded to get the ``wanted`` frames:
    from the keyframe at or before each wanted frame up to it. ``keyframes[i]``: packet i is a keyframe."""
    need = np.zeros(len(keyframes), dtype=bool)
    key = np.flatnonzero(np.asarray(keyframes, dtype=bool))
    for f in wanted:
        at = np.searchsorted(key, f, side="right") - 1
        if at < 0:
            raise ValueError(f"frame {f} has no keyframe before it")
        need[key[at] : f + 1] = True
    return need


def decode_video(
    data: bytes,
    *,
    frames: int,
    where: str,
    size: tuple[int, int] | None = None,
    keep: Sequence[int] | None = None,
) -> np.ndarray:
    """Decodes the frames asked for (and only the ones they depend on) of an MP4, as RGB.

    Decoding runs in the calling thread (no FFmpeg frame threads): loader workers already run one
    per core, and on clips this small the threads' hand-offs cost more than they save.

    Args:
        data: the encoded video (any codec FFmpeg decodes: H.264, HEVC, AV1, VP9; written without
            B-frames, so packet order is frame order).
        frames: how many frames the clip declares; fewer in the stream is a :class:`DataError`.
        where: shard/sample/camera, for error messages.
        size: optional ``(H, W)`` to resize to while converting (in the decoder's scaler).
        keep: frame indices to return (default: all ``frames``).

    Returns:
        uint8 array ``[len(keep), H, W, 3]`` (RGB), in the order of sorted ``keep``.
    """
    wanted = sorted(set(range(frames) if keep is None else keep))
    if wanted and (wanted[0] < 0 or wanted[-1] >= frames):
        raise DataError(f"{where}: frames {wanted[0]}..{wanted[-1]} asked of a clip of {frames} frames")
    if not wanted:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    out: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DataError(f"{where}: no video stream")
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
            if len(packets) <= wanted[-1]:
                raise DataError(
                    f"{where}: video has {len(packets)} frames, the clip declares {frames} (truncated?)"
                )
            if not packets[0].is_keyframe:
                raise DataError(f"{where}: video does not start with a keyframe")
            index = {pts: i for i, pts in enumerate(sorted(p.pts for p in packets))}  # presentation order
            if len(index) != len(packets):
                raise DataError(f"{where}: video packets have missing or repeated timestamps")
            need = frames_to_decode([p.is_keyframe for p in packets], wanted)
            wanted_set = set(wanted)

            def take(decoded) -> None:
                for frame in decoded:
                    i = index.get(frame.pts)
                    if i in wanted_set:
                        if size is None:
                            out[i] = frame.to_ndarray(format="rgb24")
                        else:
                            out[i] = frame.to_ndarray(format="rgb24", height=size[0], width=size[1])

            codec = stream.codec_context
            for i in np.flatnonzero(need):
                take(codec.decode(packets[i]))
            take(codec.decode(None))  # flush: frames the decoder still holds
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise DataError(f"{where}: video does not decode ({type(exc).__name__}: {exc})") from None
    missing = [i for i in wanted if i not in out]
    if missing:
        raise DataError(f"{where}: frames {missing[:3]} did not decode (corrupt or truncated video)")
    return np.stack([out[i] for i in wanted])  # [len(keep), H, W, 3]
