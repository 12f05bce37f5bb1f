"""For tests that hang a forked child as CPython 3.11's fork can (gh-112275): which child is the first."""

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
