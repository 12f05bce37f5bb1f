"""Batches handed from loader workers to the training process in reused shared memory: a ring per worker.

A plain DataLoader worker collates every batch into a *new* shared-memory block: torch allocates it
with ``posix_fallocate`` and the copy then faults every page in, and each tensor of the batch travels
as its own file descriptor: about 6 ms per 6.6 MB batch (benchmarks/shm_handoff.py), more when
other processes compete for memory and cores. Here each worker keeps a ring of
``prefetch_factor +`` :data:`CONSUMER_HELD` shared buffers and collates a batch into a free one:
the whole batch, every tensor field packed into one buffer, goes over as one descriptor
(:class:`RingBatch`), and the pages are faulted in once per worker, not once per batch.

When is a slot free again? The training process hands the consumer tensors that *are* the slot's
memory (no copy), and the slot is released when the last of them is gone: the consumer dropped the
batch, or ``pin_memory`` copied it into pinned memory and dropped the original. A batch the consumer
holds is therefore never written over: a worker that finds no free slot (a consumer holding many
batches) collates that batch into fresh shared memory, as a plain DataLoader does. A batch the
DataLoader drops unseen (an epoch cut short, a persistent worker's reset) releases its slot too.

The one-byte "in use" flag of each slot lives in the slot's own first bytes, written by the worker
when it fills the slot and cleared by the training process; both map the same pages.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, default_convert, get_worker_info
from torch.utils.data._utils import signal_handling

from fsdtrain.errors import FsdtrainError

__all__ = [
    "CONSUMER_HELD", "WORKER_START_TIMEOUT_S", "RingBatch", "RingCollate", "RingLoader", "WorkersNotStarted", "keep_freed_memory",
    "quiet_handoff_resets",
]  # fmt: skip

log = logging.getLogger(__name__)

CONSUMER_HELD = 2
"""Batches the consumer holds at once (the one the training step reads, the one Lightning fetched
ahead of it): a worker's ring has this many slots beyond the DataLoader's ``prefetch_factor``
batches in flight per worker."""

WORKER_START_TIMEOUT_S = 60.0
"""Seconds a loader worker may take from its fork to its ``worker_init_fn`` before the loader starts
its workers again (:class:`RingLoader`): about 20-30 ms normally."""
_START_ATTEMPTS = 3

_ALIGN = 64  # every field starts on a cache line: dtype views need alignment, and no field shares a line with the flag
_HEADER = _ALIGN  # byte 0: 1 while the batch in the slot is in use
_IN_USE, _FREE = 1, 0
_NUMBER_DTYPES = {bool: torch.bool, int: torch.int64, float: torch.float64}  # what default_collate makes of them


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class RingBatch:
    """A collated batch sitting in a worker's shared slot: what crosses from the worker to the training process.

    ``fields`` maps each tensor field to ``(byte offset, dtype, shape)`` inside ``storage``; ``rest``
    holds the fields that are not tensors (lists of strings), as the default collate makes them.
    In the training process :meth:`materialize` turns it into the batch dict (tensors viewing the
    slot); dropped without that, it frees its slot.
    """

    def __init__(self, storage: torch.UntypedStorage, slot: int, pid: int, fields: dict, rest: dict, order: list[str]) -> None:
        self.storage, self.slot, self.pid = storage, slot, pid
        self.fields, self.rest, self.order = fields, rest, order
        self._receiver = False  # the copy unpickled in the training process owns the release
        self._handed = False

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_receiver", "_handed")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _receiver=True, _handed=False)

    def materialize(self, keep: dict | None = None) -> dict:
        """The batch dict: its tensors view the slot, which is released when the last of them is dropped.

        Args:
            keep: where the caller keeps each worker slot's mapping between batches (so the next
                batch in that slot maps nothing anew); None keeps nothing.
        """
        whole = torch.empty(0, dtype=torch.uint8).set_(self.storage)
        if keep is not None:
            keep[(self.pid, self.slot)] = whole
        base = whole.numpy()
        handle = base.view()  # one object per batch: the tensors below keep it alive, its end frees the slot
        weakref.finalize(handle, _release, base)
        self._handed = True
        data = torch.from_numpy(handle)
        batch = {}
        for key in self.order:
            if key in self.fields:
                offset, dtype, shape = self.fields[key]
                size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                batch[key] = data[offset : offset + size].view(dtype).view(shape)
            else:
                batch[key] = self.rest[key]
        return batch

    def pin_memory(self) -> dict:
        """Pinned copies of the batch (DataLoader ``pin_memory``): the slot is free once they are made."""
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.materialize().items()}

    def __del__(self) -> None:
        received = getattr(self, "_receiver", False)  # False too when unpickling failed half way (a worker died)
        if received and not self._handed:  # dropped by the DataLoader unseen: nobody will read the slot
            _release(torch.empty(0, dtype=torch.uint8).set_(self.storage).numpy())


def _release(base: np.ndarray) -> None:
    # The consumer's last read of the slot happened before its tensors were freed, and freeing them
    # went through the interpreter (GIL hand-offs, allocator locks): the flag store comes after.
    base[0] = _FREE


class RingCollate:
    """``collate_fn`` that collates a batch of window dicts into a free slot of this worker's ring.

    In the training process (``num_workers=0``), for batches that are not flat dicts of tensors,
    numbers and strings, or when every slot is in use, it is :func:`torch.utils.data.default_collate`.

    Args:
        slots: shared buffers per worker.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a batch ring needs at least one slot, got {slots}")
        self.slots = slots
        self._ring: list[tuple[torch.UntypedStorage, np.ndarray] | None] = [None] * slots
        self._next = 0
        self.reused = 0  # batches written into a slot that held an earlier batch (what the ring is for)
        self.fresh = 0  # batches that found every slot in use: fresh shared memory, as without the ring

    def __getstate__(self) -> dict:
        return {"slots": self.slots}  # a worker starts with an empty ring of its own

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["slots"])

    def __call__(self, windows: list) -> object:
        if not isinstance(windows, list):  # batch_size=None: one sample at a time, as the DataLoader converts it
            return default_convert(windows)
        if get_worker_info() is None:
            return default_collate(windows)
        layout = _layout(windows)
        if layout is None:
            return default_collate(windows)
        fields, rest, order, nbytes = layout
        slot = self._free_slot()
        if slot is None:
            if not self.fresh:
                log.info(
                    "loader worker %d: all %d batch buffers are held by the consumer; this batch goes into fresh shared memory",
                    get_worker_info().id, self.slots,
                )  # fmt: skip
            self.fresh += 1
            return default_collate(windows)
        storage, flags = self._slot(slot, nbytes)
        flags[0] = _IN_USE
        whole = torch.empty(0, dtype=torch.uint8).set_(storage)
        for key, (offset, dtype, shape) in fields.items():
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out = whole[offset : offset + size].view(dtype).view(shape)
            values = [w[key] for w in windows]
            if isinstance(values[0], torch.Tensor):
                torch.stack(values, out=out)  # [B, ...]
            else:
                out.copy_(torch.tensor(values, dtype=dtype))
        return RingBatch(storage, slot, os.getpid(), fields, rest, order)

    def _free_slot(self) -> int | None:
        for i in range(self.slots):
            slot = (self._next + i) % self.slots
            held = self._ring[slot]
            if held is None or held[1][0] == _FREE:
                self._next = (slot + 1) % self.slots
                if held is not None:
                    self.reused += 1
                return slot
        return None

    def _slot(self, slot: int, nbytes: int) -> tuple[torch.UntypedStorage, np.ndarray]:
        held = self._ring[slot]
        if held is None or held[0].nbytes() < nbytes:  # first use, or a larger batch than the slot held
            # the private constructor the default collate uses: a shared block the training process maps
            storage = torch.UntypedStorage._new_shared(nbytes)
            held = (storage, torch.empty(0, dtype=torch.uint8).set_(storage).numpy())
            self._ring[slot] = held
        return held


def _layout(windows: list) -> tuple[dict, dict, list[str], int] | None:
    """Where each field of the batch goes in a slot: ``(fields, rest, order, bytes)``; None when the
    windows are not dicts with the same keys whose values are tensors of one shape and dtype, numbers
    or strings (the default collate then handles them, or says what is wrong)."""
    first = windows[0]
    if not isinstance(first, Mapping) or any(not isinstance(w, Mapping) or w.keys() != first.keys() for w in windows):
        return None
    fields: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
    rest: dict[str, list] = {}
    offset = _HEADER
    for key, value in first.items():
        values = [w[key] for w in windows]
        if isinstance(value, torch.Tensor):
            if any(not isinstance(v, torch.Tensor) or v.shape != value.shape or v.dtype != value.dtype or v.device.type != "cpu" for v in values):
                return None
            dtype, shape = value.dtype, (len(windows), *value.shape)
        elif type(value) in _NUMBER_DTYPES and all(type(v) is type(value) for v in values):
            dtype, shape = _NUMBER_DTYPES[type(value)], (len(windows),)
        elif isinstance(value, str) and all(isinstance(v, str) for v in values):
            rest[key] = values
            continue
        else:
            return None
        fields[key] = (offset, dtype, shape)
        offset += _aligned(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return fields, rest, list(first), offset


class RingLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` whose workers hand batches over through a ring of
    reused shared buffers (:class:`RingCollate`); everything else is the DataLoader's.

    Its iterator yields the batch dicts a DataLoader with the default collate would (same keys,
    dtypes, shapes and values), with the tensors viewing the slot until the consumer drops them.

    Args:
        dataset: as for DataLoader.
        slots: shared buffers per worker; None: ``prefetch_factor`` (DataLoader's, default 2) +
            :data:`CONSUMER_HELD`.
        **kwargs: DataLoader arguments; ``collate_fn`` may not be given (the ring is the collate).
    """

    def __init__(
        self, dataset, *, slots: int | None = None, start_timeout_s: float = WORKER_START_TIMEOUT_S, **kwargs
    ) -> None:
        if kwargs.get("collate_fn") is not None:
            raise ValueError("RingLoader collates into its ring itself: give no collate_fn")
        if slots is None:
            slots = (kwargs.get("prefetch_factor") or 2) + CONSUMER_HELD
        super().__init__(dataset, collate_fn=RingCollate(slots), **kwargs)
        self.start_timeout_s = start_timeout_s
        self._init_fn = self.worker_init_fn

    def __iter__(self) -> _RingIterator:
        """The batches, from workers that have all started: a worker that has not reached its
        ``worker_init_fn`` within ``start_timeout_s`` of its fork is killed and the workers are started
        again (up to 3 times; nothing has been read yet, so the batches are the same).

        A forked child can hang before running any Python: CPython 3.11 (gh-112275, fixed in 3.12)
        deadlocks a child that inherits the runtime's thread-state lock from a parent thread holding
        it at the fork (seen once in the test suite: rank 0 of a 2-rank DDP run waited for ever on its
        second loader worker, while its first one and the other rank ran). A loader that forks every
        worker of every rank each epoch meets it sooner or later. The DataLoader internals this uses
        are listed, with why, in fsdtrain/train/lightning_internals.py (checked by the test suite).
        """
        if self.num_workers == 0 or (self.persistent_workers and self._iterator is not None):
            return _RingIterator(super().__iter__())
        context = self.multiprocessing_context or multiprocessing.get_context()
        for attempt in range(1, _START_ATTEMPTS + 1):
            started = context.RawArray("b", self.num_workers)  # set by each worker before its init
            self.worker_init_fn = functools.partial(_started, started, self._init_fn)
            try:
                inner = super().__iter__()
            finally:
                self.worker_init_fn = self._init_fn
            stuck = _not_started(inner._workers, started, self.start_timeout_s)
            if not stuck:
                return _RingIterator(inner)
            log.warning(
                "loader worker(s) %s did not start within %.0f s of their fork (attempt %d of %d); starting the workers again",
                [w.pid for w in stuck], self.start_timeout_s, attempt, _START_ATTEMPTS,
            )  # fmt: skip
            # torch's SIGCHLD handler would report the killed worker as a failure: forget its workers first
            signal_handling._remove_worker_pids(id(inner))
            inner._worker_pids_set = False
            for w in stuck:
                os.kill(w.pid, signal.SIGKILL)
            inner._shutdown_workers()  # joins (reaps) every worker
            self._iterator = None  # a persistent iterator with a killed worker is not kept
        raise WorkersNotStarted(
            f"loader workers did not start within {self.start_timeout_s:.0f} s of their fork, {_START_ATTEMPTS} times "
            "in a row: the machine is overloaded or out of memory; check `free -g` and the other processes"
        )


class WorkersNotStarted(FsdtrainError):
    """The loader's workers did not start, :data:`_START_ATTEMPTS` times in a row (the machine is
    overloaded or out of memory): one line from the CLI, not a traceback."""


def _started(flags, init_fn, worker_id: int) -> None:
    """``worker_init_fn`` of a :class:`RingLoader` worker: marks it started, then runs the loader's own."""
    flags[worker_id] = 1
    if init_fn is not None:
        init_fn(worker_id)


def _not_started(workers: list, flags, timeout_s: float) -> list:
    """The worker processes that have not marked themselves started within ``timeout_s`` (none once
    all have, or once one has exited: the DataLoader reports a worker that died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = [w for i, w in enumerate(workers) if not flags[i]]
        if not waiting or any(not w.is_alive() for w in waiting) or time.monotonic() > deadline:
            return waiting if waiting and all(w.is_alive() for w in waiting) else []
        time.sleep(0.005)


class _RingIterator:
    """The DataLoader's iterator, with every :class:`RingBatch` turned into its batch dict; keeps each
    slot's mapping while it runs so that a reused slot maps nothing anew."""

    def __init__(self, inner: Iterator) -> None:
        self._inner = inner
        self._mapped: dict = {}

    def __iter__(self) -> _RingIterator:
        return self

    def __next__(self) -> object:
        batch = next(self._inner)
        return batch.materialize(self._mapped) if isinstance(batch, RingBatch) else batch

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str):  # the DataLoader iterator's own attributes (Lightning reads a few)
        return getattr(self._inner, name)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """In a loader worker (glibc): blocks up to 32 MiB come from the heap, and freed memory stays with the process.

    A worker allocates and frees the same sizes over and over (each clip's decoded frames, each
    window's images). By default glibc maps every block over its threshold (128 KiB to 32 MiB,
    adapting) fresh from the kernel and unmaps it on free, and trims the heap's free top: every
    window then faults its pages in again, the cost the ring removes for batches. Kept, the pages
    are reused: about 10 % less CPU per pass at 448x256 frames (docs/data-loading.md). The heap
    stays at the worker's peak, which the held-clip bound sizes. Other C libraries (musl, macOS)
    keep their own policy.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # no mallopt in this process's C library: its allocator decides
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 512 << 20)


def quiet_handoff_resets() -> None:
    """In a loader worker: a hand-off the training process broke off is logged, not printed as a traceback.

    A batch's shared memory goes to the training process as a file descriptor, sent by the worker's
    multiprocessing ``resource_sharer`` thread over a unix socket once the training process asks for
    it. A training process stopped by a signal may close that socket half way; the thread then hands
    ``ConnectionResetError`` (or ``EOFError``) to ``sys.excepthook``, which would print a traceback
    on the terminal of a job that is stopping cleanly. Every other error keeps the hook it had.
    """
    previous = sys.excepthook

    def hook(kind, error, trace) -> None:
        frames = traceback.extract_tb(trace) if trace is not None else []
        if issubclass(kind, (ConnectionError, EOFError)) and any(f.filename.endswith(_SHARER) for f in frames):
            log.debug("loader worker %d: the training process broke off a batch hand-off (%s)", os.getpid(), kind.__name__)
            return
        previous(kind, error, trace)

    sys.excepthook = hook


_SHARER = os.path.join("multiprocessing", "resource_sharer.py")
