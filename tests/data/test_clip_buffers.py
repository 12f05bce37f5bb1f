import ctypes
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fsdtrain.data.clip_buffers import ClipBuffers

ROW = (2, 3, 4, 5)
BIG_ROW = (3, 3, 256, 448)  # 5 rows of it and more are 4 MiB and more: a mapping of its own, not numpy's array


@pytest.mark.parametrize("row", [ROW, BIG_ROW])
def test_an_array_is_reused_only_once_nothing_views_it(row):
    pool = ClipBuffers()
    a = pool.take(6, row)
    window = torch.from_numpy(a[1:4].swapaxes(0, 1))  # what a window hands the collate
    del a
    b = pool.take(6, row)  # the first array is still viewed by the window: a second one
    assert not np.shares_memory(b, window.numpy()) and (pool.allocated, pool.reused) == (2, 0)
    del window
    c = pool.take(5, row)  # free again: reused, as a view of its first rows
    assert c.shape == (5, *row) and (pool.allocated, pool.reused, len(pool)) == (2, 1, 2)
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


def _mapping(array: np.ndarray) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``array``'s first byte."""
    address = array.__array_interface__["data"][0]
    fields: dict[str, str] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            if fields is not None:
                break
            if int(head[1], 16) <= address < int(head[2], 16):
                fields = {}
        elif fields is not None:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    assert fields is not None, "no mapping holds the array"
    return fields


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads the mapping's flags from Linux's /proc")
def test_clip_arrays_are_kept_out_of_transparent_huge_pages():
    pool = ClipBuffers()
    frames = pool.take(4, (6, 3, 256, 448))  # 8 MB: numpy would ask for huge pages
    frames[:] = 7  # touched: the kernel has placed every page
    mapping = _mapping(frames)
    assert "nh" in mapping["VmFlags"].split()  # MADV_NOHUGEPAGE
    assert mapping["AnonHugePages"] == "0 kB" and mapping["THPeligible"] == "0"
    assert int(mapping["Anonymous"].split()[0]) * 1024 >= frames.nbytes  # private memory of the process, not shared


def _resident_bytes(array: np.ndarray, *, whole_pages: bool = False) -> int:
    """Bytes of ``array``'s pages in memory (mincore; the kernel merges neighbouring mappings, so a
    mapping's Rss in /proc would count its neighbours' too); ``whole_pages``: of the pages wholly
    inside it (a heap array need not start on a page)."""
    page = mmap.PAGESIZE
    address, nbytes = array.ctypes.data, array.nbytes
    if whole_pages:
        start = -(-address // page) * page
        address, nbytes = start, (address + nbytes) // page * page - start
    assert address % page == 0, "a pool mapping starts on a page"
    pages = -(-nbytes // page)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
    vector = (ctypes.c_ubyte * pages)()
    assert libc.mincore(address, nbytes, vector) == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vector) * page


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="asks Linux which pages are in memory (mincore)")
@pytest.mark.parametrize("ahead", [True, False])
def test_each_new_array_after_the_first_comes_with_its_pages_already_placed(ahead):
    pool = ClipBuffers(ahead=ahead)
    first = pool.take(6, BIG_ROW)  # nothing prepared yet: mapped now, its pages placed as they are written
    assert _resident_bytes(first) == 0
    second = pool.take(6, BIG_ROW)  # the first is still in use: a new array, prepared while the first was used
    populated = _resident_bytes(second) >= second.nbytes
    assert populated == ahead and second.shape == (6, *BIG_ROW) and not np.shares_memory(first, second)
    third = pool.take(8, BIG_ROW)  # larger than the one prepared: mapped at its own size, not the prepared one
    assert third.shape == (8, *BIG_ROW) and _resident_bytes(third) == 0 and (pool.allocated, len(pool)) == (3, 3)
    third[:] = 5
    assert int(third.sum(dtype=np.int64)) == 5 * third.size


SMALL_AHEAD = """
import sys
from data.test_clip_buffers import _resident_bytes
from fsdtrain.data.batch_ring import keep_freed_memory
from fsdtrain.data.clip_buffers import ClipBuffers

keep_freed_memory()  # as in a loader worker: arrays under 32 MiB come from the heap
pool = ClipBuffers(ahead=sys.argv[1] == "ahead")
first = pool.take(8, (6, 3, 96, 160))  # 2.2 MB: numpy's own array, on the heap
second = pool.take(8, (6, 3, 96, 160))
print(_resident_bytes(first, whole_pages=True), _resident_bytes(second, whole_pages=True), second.nbytes)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="asks Linux which pages are in memory (mincore)")
@pytest.mark.parametrize("ahead", [True, False])
def test_arrays_under_4_mib_are_prepared_ahead_too(ahead):
    """A 160x96 clip's array (numpy's, on the heap) is also prepared in the thread: its pages placed
    before the decoder writes them (in a fresh process, whose heap has no free pages to hand out)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    argv = [sys.executable, "-c", SMALL_AHEAD, "ahead" if ahead else "on-touch"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    first, second, nbytes = (int(v) for v in out.split())
    assert first < nbytes / 2  # nothing prepared before the first (some pages the heap had freed)
    assert second >= nbytes - 2 * mmap.PAGESIZE if ahead else second < nbytes / 2, (first, second, nbytes)
