"""Fork pools (synthesis, ingest) whose end never waits for a worker that did not start.

CPython 3.11's fork can leave a child hung before it runs any Python (gh-112275, fixed in 3.12: a
parent thread held the interpreter's thread-state lock at the fork). In a pool the other workers take
its tasks, but at the pool's end ``terminate()`` stops every worker with SIGTERM, which such a child
cannot act on while it carries the CLI's handler (fsdtrain/stopping.py: the handler is Python's, and
the child never reaches Python), and the pool then joins it for ever; and a pool whose every worker
hangs so does no task at all. So each worker marks itself started. A worker forked by the pool's
constructor that has not started within :data:`START_TIMEOUT_S` is killed (SIGKILL, with a warning),
and the pool forks a replacement, as it does for any worker that exits; at the end, a worker that
never started is killed before ``terminate()``. Loader workers have a guard of their own
(fsdtrain/data/batch_ring.py).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing.pool import Pool

__all__ = ["fork_pool"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # a worker not started this long after its fork is stuck (as loader workers, WORKER_START_TIMEOUT_S)


@contextlib.contextmanager
def fork_pool(workers: int, *, start_timeout_s: float = START_TIMEOUT_S) -> Iterator[Pool]:
    """A ``fork`` :class:`~multiprocessing.pool.Pool` of ``workers`` processes, ended with
    ``terminate()`` as ``with Pool(...)`` ends it; a worker that never started is replaced after
    ``start_timeout_s`` and killed before the end."""
    context = multiprocessing.get_context("fork")
    before = {p.pid for p in multiprocessing.active_children()}
    started = context.Array("i", 2 * workers + 8)  # pids of the workers that ran their initializer (replacements too)
    count = context.Value("i", 0)
    pool = context.Pool(workers, initializer=_mark_started, initargs=(started, count))
    # the pool forks its workers in its constructor: only these are ever killed here (no other child
    # of the caller; a worker the pool forks later to replace a dead one is left to terminate())
    forked = {p.pid for p in multiprocessing.active_children()} - before

    def kill_stuck(why: str) -> None:
        with count.get_lock():
            marked = set(started[: min(count.value, len(started))])
        alive = {p.pid for p in multiprocessing.active_children()}
        stuck = sorted((forked - marked) & alive)
        if stuck:
            log.warning("pool worker(s) %s never started (stuck at their fork); %s", stuck, why)
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    ended = threading.Event()

    def watch() -> None:
        if not ended.wait(start_timeout_s):
            kill_stuck(f"killed after {start_timeout_s:.0f} s, the pool forks replacements")

    watchdog = threading.Thread(target=watch, name="fsdtrain-pool-watchdog", daemon=True)
    watchdog.start()
    try:
        yield pool
    finally:
        ended.set()
        watchdog.join()
        kill_stuck("killing them before the pool ends")
        pool.terminate()


def _mark_started(started, count) -> None:
    with count.get_lock():
        if count.value < len(started):
            started[count.value] = os.getpid()
        count.value += 1
