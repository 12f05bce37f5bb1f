"""Arrays for decoded clips, reused from clip to clip within one loader worker.

A clip's frames are decoded into one frame-major array (``[rows, N_cam, 3, H, W]`` uint8: about
40-70 MB per clip at configs/pretrain_global.yaml's 6 x 256x448). Allocated anew for every clip,
such an array is larger than anything glibc keeps on the heap (32 MiB at most, even with
:func:`~fsdtrain.data.batch_ring.keep_freed_memory`): every clip would map fresh pages for the
kernel to zero.

:class:`ClipBuffers` hands out views of arrays it keeps, and takes an array back once nothing but
the pool refers to it: the clip was dropped and every window that viewed it was collated into a
batch. CPython's reference count says so (every view, reshaped or sliced, refers to the kept flat
array). The pool never holds more arrays than were in use at once, so it keeps the worker's peak,
not more.

Arrays of 4 MiB and more are anonymous mappings of their own, in normal pages
(``MADV_NOHUGEPAGE``): numpy asks for transparent huge pages from that size, and under the kernel's
usual ``defrag=madvise`` the first touch of such an array may compact memory to find 2 MiB pages.
On the 2-core VM that made a worker's pass up to 1.5x slower at 448x256 (benchmarks/README.md,
``normal_vs_huge_pages``) and single allocations stall for over 100 ms; once every array was mapped,
both page sizes ran alike (timed by hand: passes through a kept pool, 83-87 against 84-86
windows/s). Smaller arrays are numpy's, as before.

Each array is new memory until the pool holds the worker's working set: the kernel zeroes and maps
it page by page as the decoder first writes each frame (13 ms per 29 MB array, a clip of 14 frames of
6 x 256x448, timed by hand; about 5 % of that clip's decode). So whenever the pool takes a new
array, it prepares the next one in a thread: allocated and its pages placed in one call
(``MADV_POPULATE_WRITE``, Linux 5.14 and later; made through ctypes, which releases the GIL, where
Python's ``mmap.madvise`` holds it; on a heap array, the pages wholly inside it), so the page faults
of a worker's first clips overlap their decoding on a core the worker does not use, and cost less
CPU than one fault per page (a 3.9 MB array: 1.5 against 2.2 ms, timed by hand). Measured side by
side (benchmarks/README.md, ``ahead_vs_on_touch``): 1.036 at 448x256 and 1.037 at 160x96 (48 clips,
where 32 of a worker's 48 clips need a new array). The pool holds at most one array beyond its
working set (``ahead=False``: none).
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

__all__ = ["ClipBuffers"]


class ClipBuffers:
    """Reused uint8 arrays of ``[rows, *row_shape]`` for one process (a loader worker makes its own)."""

    def __init__(self, *, ahead: bool = True) -> None:
        self._arrays: list[tuple[np.ndarray, tuple[int, ...], int]] = []  # (flat array, row shape, rows)
        self._rows: dict[tuple[int, ...], int] = {}  # most rows asked for per row shape: new arrays get that many
        self._ahead = _Ahead() if ahead else None
        self.allocated = self.reused = 0

    def __len__(self) -> int:
        return len(self._arrays)

    def take(self, rows: int, row_shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized ``[rows, *row_shape]`` uint8 array: a view of a kept array that nothing
        else refers to any more, else a new one (kept in place of a free one too small for it)."""
        row_shape = tuple(row_shape)
        row_bytes = int(np.prod(row_shape, dtype=np.int64))
        capacity = self._rows[row_shape] = max(rows, self._rows.get(row_shape, 0))
        spare = None
        for i, (flat, shape, kept_rows) in enumerate(self._arrays):
            if sys.getrefcount(flat) > 3:  # the pool's tuple, this loop's name, getrefcount's argument: a view is left
                continue
            if shape == row_shape and kept_rows >= rows:
                self.reused += 1
                return flat[: rows * row_bytes].reshape(rows, *row_shape)
            spare = i
        flat = self._ahead.take(capacity * row_bytes) if self._ahead is not None else _unhuge(capacity * row_bytes)
        self.allocated += 1
        if spare is None:
            self._arrays.append((flat, row_shape, capacity))
        else:
            self._arrays[spare] = (flat, row_shape, capacity)
        return flat[: rows * row_bytes].reshape(rows, *row_shape)


_HUGE_PAGE_ARRAY = 1 << 22  # numpy asks for transparent huge pages on arrays of 4 MiB and more


def _unhuge(nbytes: int) -> np.ndarray:
    """A flat uint8 array of ``nbytes`` that is not in transparent huge pages: numpy's own below the
    size where numpy asks for them, else an anonymous mapping of its own in normal pages (unmapped
    once the array and every view of it are gone)."""
    if nbytes < _HUGE_PAGE_ARRAY:
        return np.empty(nbytes, dtype=np.uint8)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)  # private anonymous memory, as malloc's
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; elsewhere there is no transparent huge page to refuse
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, dtype=np.uint8, count=nbytes)


_MADV_POPULATE_WRITE = 23  # Linux 5.14: fault in every page of a range for writing, in one call


class _Ahead:
    """The next new array of the pool, mapped and populated in a thread while the current clip decodes."""

    def __init__(self) -> None:
        self._thread: ThreadPoolExecutor | None = None  # made on first use (a worker's own, after the fork)
        self._next: Future | None = None

    def take(self, nbytes: int) -> np.ndarray:
        """A new array of ``nbytes`` (the prepared one if it is that large; otherwise its own), with
        one more of that size set to be prepared (arrays of every size: numpy's heap arrays under
        4 MiB too)."""
        prepared, self._next = self._next, None
        flat = prepared.result() if prepared is not None else None
        if flat is None or flat.size != nbytes:
            flat = _unhuge(nbytes)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsdtrain-clip-arrays")
        self._next = self._thread.submit(_populated, nbytes)
        return flat


def _populated(nbytes: int) -> np.ndarray:
    """:func:`_unhuge` with every page already placed where the kernel can do it in one call (the GIL
    released while it does); otherwise as mapped, its pages placed on first touch."""
    flat = _unhuge(nbytes)
    if _madvise is not None:  # the whole pages of it (a heap array need not start on one)
        start = -(-flat.ctypes.data // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (flat.ctypes.data + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            _madvise(start, end - start, _MADV_POPULATE_WRITE)  # an older kernel answers EINVAL: left as it is
    return flat


def _libc_madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):  # no C library to call into (not a Unix)
        return None
    madvise.argtypes, madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return madvise


_madvise = _libc_madvise() if sys.platform.startswith("linux") else None
