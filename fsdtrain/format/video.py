"""Video with PyAV: RGB frames -> H.264 (or HEVC, AV1) MP4 bytes, and back, with errors that name the clip and camera.

Random access without seeking: the container is demuxed (cheap: no decoding), and only the packets
from the keyframe at or before each wanted frame up to that frame go through the decoder. A window
that needs frames 25 and 30 of a clip with a keyframe every 10 frames decodes frames 20..30, not
0..30. There is no ``container.seek``: packets are picked from the demuxed list, so the decoder
never has to be repositioned, and decoding in forked loader workers needs no extra care.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.mp4 import sample_table

__all__ = ["CODECS", "rgb_to_yuv420p", "encode_video", "decode_video", "frames_to_decode", "FrameSizeError"]


_GBRP_CHANNELS = (1, 2, 0)  # FFmpeg's planar RGB holds G, B, R: the channel of R, G, B each plane is

CODECS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}
"""Codec names accepted by :func:`encode_video` -> the FFmpeg encoder used."""

_X264_PRESET = "veryfast"


def _rate(fps: float) -> Fraction:
    if not fps > 0:
        raise ConfigError(f"fps={fps} must be positive")
    return Fraction(fps).limit_denominator(1001000)


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] uint8 RGB -> [F, H * 3 / 2, W] uint8 yuv420p planes (Y, then U, then V, flat).

    BT.601 limited range in integer arithmetic (the same on every machine); chroma is the mean
    of each 2x2 block. It is what FFmpeg assumes for untagged yuv420p, so ``to_ndarray(format="rgb24")``
    of a decoded frame inverts it.
    """
    n, h, w, _ = frames.shape
    r, g, b = np.moveaxis(frames, -1, 0).astype(np.int32)  # 3 x [F, H, W]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    r, g, b = (c[:, 0::2, 0::2] + c[:, 1::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 1::2] for c in (r, g, b))  # 2x2 sums
    u = ((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128  # [F, H/2, W/2]
    v = ((112 * r - 94 * g - 18 * b + 512) >> 10) + 128
    planes = np.concatenate([y.reshape(n, -1), u.reshape(n, -1), v.reshape(n, -1)], axis=1)
    return planes.astype(np.uint8).reshape(n, h * 3 // 2, w)


def encode_video(frames: np.ndarray, fps: float, *, codec: str = "h264", gop: int = 10, crf: int = 23) -> bytes:
    """Encodes RGB frames as an MP4 video, yuv420p, a keyframe every ``gop`` frames, no B-frames.

    Deterministic for h264: the same frames and settings give the same bytes (one encoder thread,
    x264's cpu-independent mode, no scene-cut keyframes). Colours are converted by :func:`rgb_to_yuv420p` (BT.601, limited
    range), which ``VideoFrame.to_ndarray(format="rgb24")`` inverts on decode.

    Args:
        frames: [F, H, W, 3] uint8 RGB, H and W even (yuv420p halves the chroma planes).
        fps: frame rate stored in the stream; frame ``i`` has presentation time ``i / fps``.
        codec: ``h264`` (libx264), ``hevc`` (libx265) or ``av1`` (libsvtav1).
        gop: keyframe interval in frames; shorter means cheaper random access, bigger files.
        crf: constant rate factor (quality; lower is better and bigger).

    Returns:
        The MP4 file's bytes.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ConfigError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got {frames.dtype} {list(frames.shape)}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ConfigError(f"video size {width}x{height} must have even width and height for yuv420p; pick e.g. {width + width % 2}x{height + height % 2}")
    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    if gop < 1:
        raise ConfigError(f"gop={gop} must be at least 1 frame")
    buf = io.BytesIO()
    with _own_scheduling(), av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(CODECS[codec], rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One encoder thread, so the bytes do not depend on the machine's core count; the fleet
        # runs clips in parallel instead.
        stream.codec_context.thread_count = 1
        options = {"crf": str(crf), "g": str(gop), "bf": "0"}
        if codec == "h264":
            # cpu-independent ("exact reproducibility across different cpus"): without it x264's
            # AVX-512 code gave different bytes from run to run on the same machine.
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:cpu-independent=1"
            options.update(preset=_X264_PRESET, **{"x264-params": params})
        elif codec == "hevc":
            options.update(preset=_X264_PRESET, **{"x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:pools=1:frame-threads=1:log-level=error"})
        stream.codec_context.options = options
        # One integer-arithmetic conversion for the whole clip, the same on every machine.
        for i, yuv in enumerate(rgb_to_yuv420p(frames)):
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


class FrameSizeError(DataError):
    """A decoded frame of another size than the frames before it, or than ``decode_video``'s ``out``."""

    def __init__(self, message: str, *, width: int, height: int) -> None:
        super().__init__(message)
        self.width, self.height = width, height


@contextmanager
def _own_scheduling():
    """Keeps the calling thread's scheduling policy: SVT-AV1 (``codec="av1"``) switches the thread
    that opens it to real-time FIFO at priority 99 when it may (as root), and every process started
    from it afterwards inherits that; on a busy machine a real-time thread that spins (py-cpuinfo's
    wait loop under DeepSpeed did) then starves everything else on its core."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux: nothing to keep
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


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
    channels_first: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decodes the frames asked for (and only the ones they depend on) of an MP4, as RGB.

    Decoding and the RGB conversion run in the calling thread (no FFmpeg decoder or scaler threads):
    loader workers already run one per core, and on frames this small the threads' hand-offs cost
    more than they save.

    Args:
        data: the encoded video (any codec FFmpeg decodes: H.264, HEVC, AV1, VP9; written without
            B-frames, so packet order is frame order).
        frames: how many frames the clip declares; fewer in the stream is a :class:`DataError`.
        where: shard/sample/camera, for error messages.
        size: optional ``(H, W)`` to resize to while converting (in the decoder's scaler).
        keep: frame indices to return (default: all ``frames``).
        channels_first: return ``[len(keep), 3, H, W]``, the same pixels as rgb24 transposed (without
            a resize the scaler writes planar RGB, copied plane by plane: no transposing copy).
        out: write the frames into this uint8 array (``[len(keep), ...]`` of the returned shape, any
            strides: e.g. one camera's rows of a clip's frame-major array) instead of a new one;
            frames of another size raise :class:`FrameSizeError`.

    Returns:
        uint8 array ``[len(keep), H, W, 3]`` (RGB), in the order of sorted ``keep``.
    """
    wanted = sorted(set(range(frames) if keep is None else keep))
    if wanted and (wanted[0] < 0 or wanted[-1] >= frames):
        raise DataError(f"{where}: frames {wanted[0]}..{wanted[-1]} asked of a clip of {frames} frames")
    if not wanted:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    row = {f: r for r, f in enumerate(wanted)}
    given = out is not None  # else allocated at the first frame, when its size is known
    if given and (out.dtype != np.uint8 or len(out) != len(wanted)):
        raise ValueError(f"out must be uint8 with {len(wanted)} rows, got {out.dtype} {list(out.shape)}")
    done = np.zeros(len(wanted), dtype=bool)
    try:
        with ExitStack() as stack:
            codec, packet, keyframes, pts = _packets(data, where, stack)
            if len(keyframes) <= wanted[-1]:
                raise DataError(
                    f"{where}: video has {len(keyframes)} frames, the clip declares {frames} (truncated?)"
                )
            if not keyframes[0]:
                raise DataError(f"{where}: video does not start with a keyframe")
            need = frames_to_decode(keyframes, wanted)
            row_of = row if pts is None else {pts[f]: r for f, r in row.items()}  # a decoded frame's pts -> its row
            # one converter for the clip: ``frame.to_ndarray(format=...)`` sets up FFmpeg's scaler anew for
            # every frame, about 5x the conversion itself; and in this thread: by default the scaler
            # splits every frame over threads of its own, one per core, which costs 1.6-4x the
            # conversion at 448x256-160x96 (same pixels both; benchmarks/rgb_convert.py)
            rgb = VideoReformatter()
            height, width = size if size is not None else (None, None)
            # planar RGB equals rgb24 pixel for pixel only without a resize (the scaler resizes planar RGB differently)
            planar_out = channels_first and size is None

            def put(frame, r: int) -> None:
                nonlocal out
                if planar_out:  # planar G, B, R from the scaler, each plane copied into its channel's rows
                    planar = rgb.reformat(frame, format="gbrp", threads=1)
                    shape = (3, planar.height, planar.width)
                else:
                    rgb_frame = rgb.reformat(frame, format="rgb24", height=height, width=width, threads=1).to_ndarray()
                    if channels_first:
                        rgb_frame = rgb_frame.transpose(2, 0, 1)
                    shape = rgb_frame.shape  # [H, W, 3] or [3, H, W]
                if out is None:
                    out = np.empty((len(wanted), *shape), dtype=np.uint8)
                elif shape != out.shape[1:]:
                    hw = shape[1:] if channels_first else shape[:2]
                    expected = "the size of the first frame" if not given else "the size expected"
                    raise FrameSizeError(f"{where}: frame {wanted[r]} is {hw[1]}x{hw[0]}, not {expected}", width=hw[1], height=hw[0])
                if planar_out:
                    for channel, plane in zip(_GBRP_CHANNELS, planar.planes):  # rows padded to line_size
                        out[r, channel] = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: shape[1], : shape[2]]
                else:
                    out[r] = rgb_frame
                done[r] = True

            decode = codec.decode
            for i in [*np.flatnonzero(need).tolist(), None]:  # None: flush the frames the decoder still holds
                for frame in decode(None if i is None else packet(i)):
                    r = row_of.get(frame.pts)
                    if r is not None:
                        put(frame, r)
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise DataError(f"{where}: video does not decode ({type(exc).__name__}: {exc})") from None
    if not done.all():
        missing = [f for f, ok in zip(wanted, done) if not ok]
        raise DataError(f"{where}: frames {missing[:3]} did not decode (corrupt or truncated video)")
    return out  # [len(keep), H, W, 3] or [len(keep), 3, H, W]


def _packets(data: bytes, where: str, stack: ExitStack):
    """The decoder, packet ``i``, the keyframe flags and each frame's pts in presentation order (None:
    frame ``i`` has pts ``i``) of the video in ``data``: from its sample table when
    :func:`fsdtrain.format.mp4.sample_table` reads it (no demuxer), else demuxed by FFmpeg
    (``stack`` closes the container)."""
    table = sample_table(data)
    if table is not None:
        codec = av.CodecContext.create(table.codec, "r")
        codec.extradata = table.extradata
        codec.thread_count = 1
        view, offsets, sizes = memoryview(data), table.offsets.tolist(), table.sizes.tolist()

        def packet(i: int) -> av.Packet:
            p = av.Packet(view[offsets[i] : offsets[i] + sizes[i]])
            p.pts = i
            return p

        return codec, packet, table.keyframes.tolist(), None

    container = stack.enter_context(av.open(io.BytesIO(data), mode="r"))
    if not container.streams.video:
        raise DataError(f"{where}: no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a codec FFmpeg has no decoder for (or a damaged sample entry)
        raise DataError(f"{where}: FFmpeg has no decoder for this video's codec (damaged, or not H.264, HEVC, AV1 or VP9)")
    stream.codec_context.thread_count = 1
    packets = [p for p in container.demux(stream) if p.size]
    pts = [p.pts for p in packets]
    if None in pts or len(set(pts)) != len(packets):
        raise DataError(f"{where}: video packets have missing or repeated timestamps")
    return stream.codec_context, packets.__getitem__, [p.is_keyframe for p in packets], sorted(pts)  # presentation order
