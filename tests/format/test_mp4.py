"""MP4 sample tables read without a demuxer agree with FFmpeg's demuxer, and anything else is left to it."""

import io
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from fsdtrain.errors import DataError
from fsdtrain.format import video as video_module
from fsdtrain.format.mp4 import sample_table
from fsdtrain.format.video import decode_video, encode_video

FRAMES = 23


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, FRAMES, dtype=np.uint8)[:, None, None, None]
    out = np.broadcast_to(base, (FRAMES, 64, 96, 3)).copy()
    out[:, :16, :16] = rng.integers(0, 255, (FRAMES, 16, 16, 3), dtype=np.uint8)
    return out


def _demuxed(data: bytes) -> tuple[bytes, list[tuple[int, int, bool]]]:
    """FFmpeg's view: the video stream's extradata and (position, size, keyframe) per packet."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [(p.pos, p.size, p.is_keyframe) for p in container.demux(stream) if p.size]
        return stream.codec_context.extradata, packets


def _by_demuxer(data: bytes, **kwargs) -> np.ndarray:
    """decode_video with the sample table path switched off (FFmpeg demuxes)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(video_module, "sample_table", lambda data: None)
    try:
        return decode_video(data, **kwargs)
    finally:
        mp.undo()


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_table_is_what_ffmpeg_demuxes(frames, codec):
    data = encode_video(frames, 10.0, codec=codec, gop=5)
    table = sample_table(data)
    extradata, packets = _demuxed(data)
    assert table is not None and table.codec == codec and (table.width, table.height) == (96, 64)
    assert table.extradata == extradata
    assert [(int(o), int(s), bool(k)) for o, s, k in zip(table.offsets, table.sizes, table.keyframes)] == packets
    assert np.flatnonzero(table.keyframes).tolist() == list(range(0, FRAMES, 5))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("channels_first", [False, True])
def test_decoding_from_the_table_equals_decoding_after_ffmpeg_demuxes(frames, codec, channels_first):
    data = encode_video(frames, 10.0, codec=codec, gop=5)
    for keep in (None, [0], [4, 5, 13, 22]):
        kwargs = dict(frames=FRAMES, where="v", keep=keep, channels_first=channels_first)
        np.testing.assert_array_equal(decode_video(data, **kwargs), _by_demuxer(data, **kwargs))


def _write(frames: np.ndarray, *, options: dict | None = None, audio: bool = False, bframes: int = 0, videos: int = 1) -> bytes:
    """An MP4 written by FFmpeg in a layout fsdtrain's writer does not make."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options=options or {}) as container:
        streams = []
        for _ in range(videos):
            s = container.add_stream("libx264", rate=10)
            s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            s.codec_context.options = {"g": "5", "bf": str(bframes), "preset": "veryfast"}
            streams.append(s)
        sound = container.add_stream("aac", rate=8000) if audio else None
        for i, rgb in enumerate(frames):
            for s in streams:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                container.mux(s.encode(frame))
            if sound is not None:  # 0.1 s of tone per video frame: audio chunks between the video's
                t = (np.arange(800) + 800 * i) / 8000
                samples = av.AudioFrame.from_ndarray((np.sin(2 * np.pi * 440 * t) * 0.1).astype(np.float32)[None], format="fltp", layout="mono")
                samples.sample_rate, samples.pts, samples.time_base = 8000, 800 * i, Fraction(1, 8000)
                container.mux(sound.encode(samples))
        for s in [*streams, *([sound] if sound else [])]:
            container.mux(s.encode(None))
    return buf.getvalue()


def test_video_interleaved_with_audio_is_read_chunk_by_chunk(frames):
    data = _write(frames, audio=True)
    table = sample_table(data)
    extradata, packets = _demuxed(data)
    assert table is not None
    assert [(int(o), int(s), bool(k)) for o, s, k in zip(table.offsets, table.sizes, table.keyframes)] == packets
    np.testing.assert_array_equal(decode_video(data, frames=FRAMES, where="v"), _by_demuxer(data, frames=FRAMES, where="v"))


@pytest.mark.parametrize(
    "layout",
    [
        {"options": {"movflags": "frag_keyframe+empty_moov"}},  # fragmented
        {"bframes": 2},  # composition offsets
        {"videos": 2},  # which track? FFmpeg's first video stream
    ],
    ids=["fragmented", "b-frames", "two-videos"],
)
def test_layouts_not_read_here_are_demuxed_by_ffmpeg_and_still_decode(frames, layout):
    data = _write(frames, **layout)
    assert sample_table(data) is None
    full = decode_video(data, frames=FRAMES, where="v")
    assert full.shape == (FRAMES, 64, 96, 3)
    np.testing.assert_array_equal(decode_video(data, frames=FRAMES, where="v", keep=[3, 17]), full[[3, 17]])


def test_an_edit_that_skips_frames_is_left_to_ffmpeg(frames):
    data = bytearray(encode_video(frames, 10.0, gop=5))
    at = data.find(b"elst")
    assert at > 0 and sample_table(bytes(data)) is not None
    struct.pack_into(">i", data, at + 4 + 4 + 4 + 4, 512)  # version/flags, count, duration; then media_time
    assert sample_table(bytes(data)) is None


def test_other_codecs_and_non_mp4_bytes_are_left_to_ffmpeg(frames):
    assert sample_table(encode_video(frames[:6], 10.0, codec="av1", gop=5)) is None
    assert sample_table(b"") is None
    assert sample_table(b"\x00\x00\x00\x08free" * 4) is None
    assert sample_table(b"not an mp4 at all") is None


def test_hostile_bytes_give_a_table_inside_the_file_or_none_and_decode_to_data_errors(frames):
    """Every single-byte change in the boxes the table is read from, and every truncation, either
    reads as a table whose packets lie inside the file or as None; decoding such a file succeeds
    or raises DataError, never anything else."""
    data = encode_video(frames, 10.0, gop=5)
    moov = data.find(b"moov") - 4
    rng = np.random.default_rng(1)
    cases = [data[:n] for n in range(moov, len(data), 37)]
    for at in rng.integers(moov, len(data), size=300):
        mutated = bytearray(data)
        mutated[at] = int(rng.integers(256))
        cases.append(bytes(mutated))
    for case in cases:
        table = sample_table(case)
        if table is not None:
            assert len(table) > 0 and table.offsets.min() >= 0 and int((table.offsets + table.sizes).max()) <= len(case)
        try:
            decode_video(case, frames=FRAMES, where="v", keep=[2, 11])
        except DataError:
            pass


def test_an_edit_that_ends_before_the_last_frame_is_left_to_ffmpeg(frames):
    data = bytearray(encode_video(frames, 10.0, gop=5))
    at = data.find(b"elst")
    (duration,) = struct.unpack_from(">I", data, at + 4 + 4 + 4)  # version/flags, count; then the segment duration
    struct.pack_into(">I", data, at + 4 + 4 + 4, duration // 2)  # a trimmed end: FFmpeg drops the frames after it
    assert sample_table(bytes(data)) is None
    with av.open(io.BytesIO(bytes(data))) as container:
        shown = sum(1 for _ in container.decode(video=0))
    assert shown < FRAMES  # FFmpeg indeed shows fewer frames: reading the table would have shown them all
