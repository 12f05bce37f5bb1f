"""Video decode with PyAV: MP4 bytes -> RGB frames, with errors that name the clip and camera."""

from __future__ import annotations

import io

import av
import numpy as np

from fsdtrain.errors import DataError

__all__ = ["decode_video"]


def decode_video(data: bytes, *, frames: int, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes the first ``frames`` frames of an MP4.

    Args:
        data: the encoded video (any codec FFmpeg decodes: H.264, HEVC, AV1, VP9).
        frames: how many frames to return; fewer in the stream is a :class:`DataError`.
        where: shard/sample/camera, for error messages.
        size: optional ``(H, W)`` to resize to while converting (in the decoder's scaler).

    Returns:
        uint8 array ``[frames, H, W, 3]`` (RGB).
    """
    out: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DataError(f"{where}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if size is None:
                    out.append(frame.to_ndarray(format="rgb24"))
                else:
                    out.append(frame.to_ndarray(format="rgb24", height=size[0], width=size[1]))
                if len(out) == frames:
                    break
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise DataError(f"{where}: video does not decode ({type(exc).__name__}: {exc})") from None
    if len(out) < frames:
        raise DataError(f"{where}: video has {len(out)} frames, the clip declares {frames} (truncated?)")
    return np.stack(out)  # [F, H, W, 3]
