"""Fetching ahead: the next clips' bytes requested in a thread while the current ones decode.

A loader worker knows the clips it will read, in order, before it reads the first
(fsdtrain/data/stream.py). :class:`Prefetch` fetches them in that order in one thread, up to
``depth`` ahead of the one asked for, so that the store's latency overlaps decoding; it holds the
bytes of at most ``depth`` clips beyond the one asked for (docs/data-loading.md, "Memory").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Prefetch"]

T = TypeVar("T")


class Prefetch(Generic[T]):
    """``fetch(key)`` for ``keys`` in their order, in one thread, up to ``depth`` ahead of the key
    asked for. Keys must be asked for in the same order; a fetch's exception is raised by the
    :meth:`get` of its key."""

    def __init__(self, fetch: Callable[[Hashable], T], keys: list[Hashable], depth: int) -> None:
        self._fetch, self._keys, self._depth = fetch, keys, max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsdtrain-prefetch")
        self._futures: dict[Hashable, Future] = {}
        self._next = 0

    def _fill(self, depth: int) -> None:
        while self._next < len(self._keys) and len(self._futures) < depth:
            key = self._keys[self._next]
            self._next += 1
            self._futures[key] = self._pool.submit(self._fetch, key)

    def get(self, key: Hashable) -> T:
        """The fetched value of ``key`` (the next key in order), waiting for it if need be."""
        self._fill(self._depth + 1)
        future = self._futures.pop(key)
        self._fill(self._depth)
        return future.result()

    def close(self) -> None:
        """Cancels the fetches not started; the one running finishes in its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
