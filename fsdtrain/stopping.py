"""Stopping on SIGTERM and SIGINT: every command ends the same way, whoever sends the signal.

Schedulers stop a job with SIGTERM (``timeout``, SLURM at its time limit, Kubernetes, ``docker stop``)
and a terminal with SIGINT. The CLI installs :func:`stop_on_signals` around every command: the signal
raises :class:`Stopped` (a ``KeyboardInterrupt``, so every ``with`` block and ``finally`` on the way out
runs: the local store stops, loader workers and pools are shut, Lightning tears the ranks it started
down), and the CLI prints one line and exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT),
the shell's convention. A command that starts ``fsdtrain`` children (the demo) passes the signal on
and waits for them (:func:`stop_child`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

__all__ = ["Stopped", "STOP_SIGNALS", "stop_on_signals", "received", "exit_code", "stop_child"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[signal.Signals] = []


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)


def received() -> signal.Signals | None:
    """The first stop signal this process received since :func:`stop_on_signals` began, if any."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


_owner: list[int] = []  # the pid that installed the handlers
_raised: list[bool] = []  # Stopped is on its way out (a second signal then does not interrupt the clean-up)
RETRY_S = 0.1  # a stop dropped by the interpreter is delivered again this much later


def _raise(signum: int, frame) -> None:
    if _owner and os.getpid() != _owner[0]:
        # a forked child (worker pools, loader workers) got the signal before _child_defaults ran: it
        # dies as it would have without the handler, quietly (its parent stops it), and the parent unwinds
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _raised:
        return
    if not _received:
        _received.append(signal.Signals(signum))
    _raised.append(True)
    raise Stopped(signum)


def _dropped(unraisable) -> None:
    """``sys.unraisablehook`` within :func:`stop_on_signals`: a signal that lands in a ``__del__``, a
    ``weakref`` callback or an at-fork hook raises where the interpreter prints the exception and runs on
    (a DataLoader iterator's ``__del__`` joins its workers, and a fork runs logging's hooks: a training
    job would never stop). The stop is delivered again, to the main thread, once out of there."""
    if not (isinstance(unraisable.exc_value, Stopped) and _owner and os.getpid() == _owner[0]):
        _hooks[0](unraisable)
        return
    _raised.clear()
    retry = threading.Timer(RETRY_S, signal.pthread_kill, (threading.main_thread().ident, unraisable.exc_value.signum))
    retry.daemon = True
    retry.start()


_hooks: list = [sys.__unraisablehook__]  # the hook in place before stop_on_signals


def _child_defaults() -> None:
    """In a forked child (worker pools, loader workers) while the handlers are installed: the stop
    signals' default action again, so the kernel ends the child at once. With the handler inherited,
    a child blocked on a lock could miss it: ``Pool.terminate`` signals workers that wait on the pool's
    queue lock, and one whose signal came as it went to block never ran the handler (the demo's
    synthesis hung so at its end, joining that worker forever)."""
    if _owner:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


os.register_at_fork(after_in_child=_child_defaults)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Stopped` in the main thread (elsewhere: a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _raised.clear()
    _owner[:] = [os.getpid()]
    _hooks[:] = [sys.unraisablehook]
    sys.unraisablehook = _dropped
    previous = {sig: signal.signal(sig, _raise) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = _hooks[0]
        _owner.clear()


def stop_child(proc: subprocess.Popen, signum: int = signal.SIGTERM, *, grace_s: float = 60.0) -> None:
    """Stops ``proc`` (an ``fsdtrain`` child, which stops its own children the same way): ``signum``,
    then SIGKILL after ``grace_s`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
