import os

import numpy as np
import pytest
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fsdtrain.errors import DataError
from fsdtrain.format.video import decode_video, encode_video, frames_to_decode


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


@pytest.mark.parametrize("size", [None, (16, 24), (30, 46)])
def test_channels_first_has_the_pixels_of_rgb_transposed(video, size):
    """Channels-first frames are the rgb24 frames transposed, with and without a resize (widths 48,
    24 and 46: FFmpeg pads lines to its alignment, which no copy may carry into the array)."""
    keep = [0, 3, 9, 19]
    hwc = decode_video(video, frames=20, where="v", keep=keep, size=size)
    chw = decode_video(video, frames=20, where="v", keep=keep, size=size, channels_first=True)
    assert chw.shape == (4, 3, *hwc.shape[1:3]) and chw.flags.c_contiguous
    np.testing.assert_array_equal(chw, hwc.transpose(0, 3, 1, 2))


def test_short_or_broken_video_names_where(video):
    with pytest.raises(DataError, match="cam X: video has 20 frames, the clip declares 25"):
        decode_video(video, frames=25, where="cam X")
    with pytest.raises(DataError, match="cam Y"):
        decode_video(video[: len(video) // 4], frames=20, where="cam Y")
    with pytest.raises(DataError, match="asked of a clip"):
        decode_video(video, frames=20, where="v", keep=[20])


def test_frames_to_decode_starts_at_the_keyframe_before_each_wanted_frame():
    keyframes = [i % 5 == 0 for i in range(20)]
    need = frames_to_decode(keyframes, [7, 8, 17])
    assert np.flatnonzero(need).tolist() == [5, 6, 7, 8, 15, 16, 17]
    assert frames_to_decode(keyframes, []).sum() == 0


@pytest.mark.parametrize("seed", range(4))
def test_random_access_equals_a_full_decode(video, seed):
    full = decode_video(video, frames=20, where="v")
    keep = np.random.default_rng(seed).choice(20, size=1 + seed * 2, replace=False).tolist()
    np.testing.assert_array_equal(decode_video(video, frames=20, where="v", keep=keep), full[sorted(keep)])


def _decode_in_worker(index: int) -> np.ndarray:
    return decode_video(_WORKER_VIDEO, frames=20, where="v", keep=[index])[0]


_WORKER_VIDEO = b""


def test_decodes_in_forked_loader_workers(video):
    # decoding after fork must neither hang nor differ (PyAV/FFmpeg state is created per call)
    global _WORKER_VIDEO
    _WORKER_VIDEO = video
    decode_video(video, frames=20, where="v", keep=[3])  # the parent has used FFmpeg before forking
    loader = DataLoader(_Indices(), batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60)
    got = {int(i): frame for i, frame in loader}
    full = decode_video(video, frames=20, where="v")
    assert sorted(got) == list(range(0, 20, 3))
    for i, frame in got.items():
        np.testing.assert_array_equal(frame.numpy(), full[i])


class _Indices(IterableDataset):
    def __iter__(self):
        info = get_worker_info()
        for i in range(info.id * 3, 20, 3 * info.num_workers):
            yield i, _decode_in_worker(i)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="scheduling policies are Linux's")
def test_encoding_av1_leaves_the_callers_scheduling_policy_as_it_was(video):
    """SVT-AV1 switches the thread that opens it to real-time FIFO when it may (as root); every
    process started afterwards would inherit that (a spinning one then starves its core)."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    frames = np.zeros((4, 32, 48, 3), dtype=np.uint8)
    assert len(encode_video(frames, 10.0, codec="av1", gop=2)) > 0
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
