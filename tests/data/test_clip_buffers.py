import numpy as np
import torch

from fsdtrain.data.clip_buffers import ClipBuffers

ROW = (2, 3, 4, 5)


def test_an_array_is_reused_only_once_nothing_views_it():
    pool = ClipBuffers()
    a = pool.take(6, ROW)
    window = torch.from_numpy(a[1:4].swapaxes(0, 1))  # what a window hands the collate
    del a
    b = pool.take(6, ROW)  # the first array is still viewed by the window: a second one
    assert not np.shares_memory(b, window.numpy()) and (pool.allocated, pool.reused) == (2, 0)
    del window
    c = pool.take(5, ROW)  # free again: reused, as a view of its first rows
    assert c.shape == (5, *ROW) and (pool.allocated, pool.reused, len(pool)) == (2, 1, 2)
    assert not np.shares_memory(b, c)


def test_the_pool_keeps_no_more_arrays_than_were_in_use_at_once():
    pool = ClipBuffers()
    held = [pool.take(4, ROW) for _ in range(3)]
    held.clear()
    for rows in (4, 8, 3, 8):  # one at a time: a larger clip replaces a free array too small for it
        array = pool.take(rows, ROW)
        array[:] = rows
        del array
    assert len(pool) == 3 and pool.allocated == 4
    other = pool.take(2, (1, 3, 4, 5))  # another frame size: its own array, in place of a free one
    assert other.shape == (2, 1, 3, 4, 5) and len(pool) == 3
