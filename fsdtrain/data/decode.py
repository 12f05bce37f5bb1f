"""Video decode with PyAV: MP4 bytes -> RGB frames, with errors that name the clip and camera."""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np

from fsdtrain.errors import DataError

__all__ = ["decode_video"]


def decode_video(
    data: bytes, *, frames: int, where: str, size: tuple[int, int] | None = None, keep: Sequence[int] | None = None
) -> np.ndarray:
    """Decodes the first ``frames`` frames of an MP4 and converts the ones asked for to RGB.

    Every frame up to the last one kept must be decoded (P-frames depend on their predecessors), but
    only the kept ones are converted and resized, which is most of the cost at small sizes. Decoding
    runs in the calling thread (no FFmpeg frame threads): loader workers already run one per core,
    and on clips this small the threads' hand-offs cost more than they save.

    Args:
        data: the encoded video (any codec FFmpeg decodes: H.264, HEVC, AV1, VP9).
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
    last = wanted[-1] if wanted else -1
    wanted_set = set(wanted)
    out: list[np.ndarray] = []
    seen = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DataError(f"{where}: no video stream")
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                seen = index + 1
                if index in wanted_set:
                    if size is None:
                        out.append(frame.to_ndarray(format="rgb24"))
                    else:
                        out.append(frame.to_ndarray(format="rgb24", height=size[0], width=size[1]))
                if index >= last:
                    break
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise DataError(f"{where}: video does not decode ({type(exc).__name__}: {exc})") from None
    if len(out) < len(wanted):
        raise DataError(f"{where}: video has {seen} frames, the clip declares {frames} (truncated?)")
    if not out:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(out)  # [len(keep), H, W, 3]
