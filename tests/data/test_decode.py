import numpy as np
import pytest

from fsdtrain.data.decode import decode_video
from fsdtrain.data.writer import encode_video
from fsdtrain.errors import DataError


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    frames = np.repeat(np.linspace(0, 255, 20, dtype=np.uint8)[:, None, None, None], 3, axis=3)
    frames = np.broadcast_to(frames, (20, 32, 48, 3)).copy()
    frames[:, :8, :8] = rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    return encode_video(frames, 10.0, gop=5)


def test_kept_frames_equal_the_same_rows_of_a_full_decode(video):
    full = decode_video(video, frames=20, where="v")
    part = decode_video(video, frames=20, where="v", keep=[13, 2, 7])
    assert full.shape == (20, 32, 48, 3)
    np.testing.assert_array_equal(part, full[[2, 7, 13]])
    small = decode_video(video, frames=20, where="v", keep=[0], size=(16, 24))
    assert small.shape == (1, 16, 24, 3)


def test_short_or_broken_video_names_where(video):
    with pytest.raises(DataError, match="cam X: video has 20 frames, the clip declares 25"):
        decode_video(video, frames=25, where="cam X")
    with pytest.raises(DataError, match="cam Y"):
        decode_video(video[: len(video) // 4], frames=20, where="cam Y")
    with pytest.raises(DataError, match="asked of a clip"):
        decode_video(video, frames=20, where="v", keep=[20])
