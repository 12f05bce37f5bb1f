"""For tests that hang a forked child as CPython 3.11's fork can (gh-112275): which child is the first,
and a wait in C that no signal's Python handler can end."""

import ctypes
import os


def first_child(marker: str) -> bool:
    """True in the first process that calls it with ``marker`` (its pid is written there), False after."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def block_in_c() -> None:
    """Never returns: blocked in C on a mutex, as the real child is on the thread-state lock. A
    signal's Python handler never runs (``pthread_mutex_lock`` resumes waiting after a signal); only
    a signal's default action (SIGKILL's, or SIGTERM's where no handler is installed) ends it."""
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: glibc's PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # a normal mutex locked again by its owner: never returns
