"""Arrays for decoded clips, reused from clip to clip within one loader worker.

A clip's frames are decoded into one frame-major array (``[rows, N_cam, 3, H, W]`` uint8: about
40-70 MB per clip at configs/pretrain_global.yaml's 6 x 256x448). Allocated anew for every clip,
such an array is larger than anything glibc keeps on the heap (32 MiB at most, even with
:func:`~fsdtrain.data.batch_ring.keep_freed_memory`): every clip maps fresh pages, the kernel zeroes
them, and with transparent huge pages (which numpy asks for on large arrays) it may first compact
memory to find them; on the 2-core VM single allocations stalled for over 100 ms that way.

:class:`ClipBuffers` hands out views of arrays it keeps, and takes an array back once nothing but
the pool refers to it: the clip was dropped and every window that viewed it was collated into a
batch. CPython's reference count says so (a view keeps its base array referenced). The pool never
holds more arrays than were in use at once, so it keeps the worker's peak, not more.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["ClipBuffers"]


class ClipBuffers:
    """Reused uint8 arrays of ``[rows, *row_shape]`` for one process (a loader worker makes its own)."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []
        self._rows: dict[tuple[int, ...], int] = {}  # most rows asked for per row shape: new arrays get that many
        self.allocated = self.reused = 0

    def __len__(self) -> int:
        return len(self._arrays)

    def take(self, rows: int, row_shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized ``[rows, *row_shape]`` uint8 array: a view of a kept array that nothing
        else refers to any more, else a new one (kept in place of a free one too small for it)."""
        row_shape = tuple(row_shape)
        capacity = self._rows[row_shape] = max(rows, self._rows.get(row_shape, 0))
        spare = None
        for i in range(len(self._arrays)):
            if not self._unreferenced(i):
                continue
            array = self._arrays[i]
            if array.shape[1:] == row_shape and len(array) >= rows:
                self.reused += 1
                return array[:rows]
            spare = i
        array = np.empty((capacity, *row_shape), dtype=np.uint8)
        self.allocated += 1
        if spare is None:
            self._arrays.append(array)
        else:
            self._arrays[spare] = array
        return array[:rows]

    def _unreferenced(self, i: int) -> bool:
        # the pool's own reference and getrefcount's argument: no view (clip, window, tensor) is left
        return sys.getrefcount(self._arrays[i]) == 2
