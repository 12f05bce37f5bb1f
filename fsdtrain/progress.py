"""Progress of a long command (``data write``, ``data verify``): a bar on a terminal, plain lines in a log.

A :class:`Progress` is the ``progress`` callback those commands take (``Callable[[str], None]``): each
call is one item done (a drive written, a shard checked), with the line that says which. On a terminal
(its stream is a TTY) it redraws one line in place: count, share of the total where it is known, rate,
time left and the last item. Anywhere else (a batch job's log, a pipe) it logs a plain line through
``logging`` at most every ``every_s`` seconds, and always the first and the last, so a log shows that
the command moves without a line per item.

This module imports nothing from fsdtrain, so every layer may use it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import weakref
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

log = logging.getLogger(__name__)

_BAR_CELLS = 24


class Progress:
    """Counts the items of one command and shows how far it is.

    Args:
        what: the command, the start of every line (``data verify``).
        unit: what an item is, plural (``shards``).
        total: items expected, when known (:meth:`set_total` gives it later).
        every_s: seconds between two plain lines (not on a terminal).
        stream: where the bar goes; its ``isatty()`` picks bar or lines. Default: stderr, as the logs.
        clock: seconds, monotonic (``time.monotonic``; tests give their own to step time exactly).

    Use it as a context manager or call :meth:`close`. One passed as an argument and dropped
    (``progress=Progress(...)``) closes itself when it is garbage-collected, as the call returns.
    """

    def __init__(
        self, what: str, *, unit: str = "items", total: int | None = None, every_s: float = 10.0,
        stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self._state = _State(what, unit, every_s, sys.stderr if stream is None else stream, clock)
        # the state, not self, is what the finalizer holds: closing must not keep the Progress alive
        self._finalizer = weakref.finalize(self, self._state.finish)
        if total is not None:
            self.set_total(total)

    @property
    def done(self) -> int:
        """Items done so far."""
        return self._state.done

    @property
    def tty(self) -> bool:
        """True when the stream is a terminal: a bar redrawn in place, no log lines."""
        return self._state.tty

    def set_total(self, total: int) -> None:
        """The number of items this command will do, once the caller knows it."""
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self._state.total = total

    def __call__(self, message: str) -> None:
        """One item done; ``message`` says which (the ``progress`` callback of the data commands)."""
        self.advance(1, message)

    def advance(self, n: int = 1, message: str | None = None) -> None:
        """``n`` items done; ``message``, when given, becomes the last item shown."""
        self._state.advance(n, message)

    def line(self) -> str:
        """The plain line for now: ``data verify: 12/40 shards (30%) in 15 s, 0.8/s, about 35 s left; last: ...``."""
        return self._state.line(self._state.clock())

    def close(self) -> None:
        """The final state: the bar drawn once more and its line ended on a terminal, the last plain line
        otherwise (when the last item has not been logged yet). Closing twice does nothing."""
        self._finalizer()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _State:
    """What a :class:`Progress` counts and draws; apart from it, so that its finalizer can close it."""

    def __init__(
        self, what: str, unit: str, every_s: float, stream: TextIO, clock: Callable[[], float]
    ) -> None:
        self.what, self.unit, self.every_s, self.stream, self.clock = what, unit, every_s, stream, clock
        self.tty = _is_tty(stream)
        self.total: int | None = None
        self.done = 0
        self.last = ""
        self.start = clock()
        self.logged_at: float | None = None
        self.logged_done = 0
        self.drawn = False

    def advance(self, n: int, message: str | None) -> None:
        self.done += n
        if message is not None:
            self.last = message.strip().splitlines()[0] if message.strip() else ""
        now = self.clock()
        if self.tty:
            self.draw(now)
        elif self.logged_at is None or now - self.logged_at >= self.every_s:
            self.log(now)

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.draw(self.clock())
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):  # the terminal went away (a closed stream at exit): no line to end
                pass
        elif not self.tty and self.done and self.logged_done != self.done:
            self.log(self.clock())

    def count(self) -> str:
        if self.total is None:
            return f"{self.done} {self.unit}"
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.done}/{self.total} {self.unit}{share}"

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 0.0)
        text = f"{self.what}: {self.count()} in {_duration(elapsed)}"
        rate = self.done / elapsed if elapsed > 0 else None
        if rate:
            text += f", {_rate(rate)}/s"
            if self.total is not None and self.done < self.total:
                text += f", about {_duration((self.total - self.done) / rate)} left"
        return text + (f"; last: {self.last}" if self.last else "")

    def log(self, now: float) -> None:
        log.info(self.line(now))
        self.logged_at, self.logged_done = now, self.done

    def draw(self, now: float) -> None:
        elapsed = max(now - self.start, 0.0)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        bar = ""
        if self.total:
            filled = min(_BAR_CELLS, round(_BAR_CELLS * self.done / self.total))
            bar = "[" + "#" * filled + "-" * (_BAR_CELLS - filled) + "] "
        left = ""
        if self.total and rate and self.done < self.total:
            left = f" {_duration((self.total - self.done) / rate)} left"
        text = f"{self.what} {bar}{self.count()} {_rate(rate)}/s {_duration(elapsed)}{left}"
        if self.last:
            text += f" | {self.last}"
        width = shutil.get_terminal_size(fallback=(100, 24)).columns
        # \r back to the line's start; \x1b[K clears what a longer earlier line left
        self.stream.write("\r" + text[: max(width - 1, 10)] + "\x1b[K")
        self.stream.flush()
        self.drawn = True


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _rate(per_s: float) -> str:
    """``0.25``, ``3.4``, ``1523``: two significant digits below 10, whole numbers above."""
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.2g}"


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
