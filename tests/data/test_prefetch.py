"""Tests for fsdtrain/data/prefetch.py: keys fetched in order, never more than ``depth`` ahead, a
fetch's error raised where its key is asked for, and nothing fetched after close."""

from __future__ import annotations

import threading
import time

import pytest

from fsdtrain.data.prefetch import Prefetch


class Recorder:
    """A fetch that records the order of its calls and how far ahead of the consumer it ran."""

    def __init__(self, fail: set[int] = frozenset(), delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.taken = 0  # keys the consumer has received
        self.ahead: list[int] = []  # per call: keys fetched beyond the last one taken
        self.fail, self.delay_s = fail, delay_s
        self.lock = threading.Lock()

    def __call__(self, key: int) -> str:
        time.sleep(self.delay_s)
        with self.lock:
            self.calls.append(key)
            self.ahead.append(len(self.calls) - self.taken)
        if key in self.fail:
            raise ValueError(f"clip {key} is corrupt")
        return f"bytes of {key}"


@pytest.mark.parametrize("depth", [1, 4])
def test_keys_are_fetched_in_order_and_at_most_depth_ahead(depth: int) -> None:
    fetch = Recorder()
    keys = [7, 3, 9, 1, 4, 8, 2]
    ahead = Prefetch(fetch, keys, depth=depth)
    got = []
    for key in keys:
        got.append(ahead.get(key))
        with fetch.lock:
            fetch.taken += 1
        time.sleep(0.01)  # the thread runs ahead while the consumer "decodes"
    ahead.close()
    assert got == [f"bytes of {k}" for k in keys]
    assert fetch.calls == keys
    assert max(fetch.ahead) <= depth + 1  # the one asked for and at most depth beyond it
    assert max(fetch.ahead) >= depth  # and it does run ahead while the consumer decodes


def test_a_fetch_error_is_raised_by_the_get_of_its_key_only() -> None:
    fetch = Recorder(fail={3})
    ahead = Prefetch(fetch, [1, 3, 5], depth=2)
    assert ahead.get(1) == "bytes of 1"
    with pytest.raises(ValueError, match="clip 3 is corrupt"):
        ahead.get(3)
    assert ahead.get(5) == "bytes of 5"
    ahead.close()


def test_nothing_is_fetched_after_close() -> None:
    fetch = Recorder(delay_s=0.05)
    ahead = Prefetch(fetch, list(range(20)), depth=4)
    assert ahead.get(0) == "bytes of 0"
    ahead.close()
    time.sleep(0.5)
    assert len(fetch.calls) <= 1 + 4 + 1  # what was queued may have started; the other 14 keys never were
