"""fsdtrain/pools.py: a pool whose worker hangs at its fork, as CPython 3.11's can (gh-112275), still
gives every result and ends, under the CLI's stop handlers; the stuck worker is gone."""

import os
import subprocess
import sys
from pathlib import Path

STUCK_AT_FORK = """
import ctypes, os, sys
from fork_hang import first_child

def hang_in_the_first_child():  # before fsdtrain's own at-fork hook, as the real hang is before any hook
    if not first_child(sys.argv[1]):
        return
    # blocked in C on a mutex, as the real child is on the thread-state lock: a signal's Python
    # handler never runs (pthread_mutex_lock resumes waiting after a signal), only its default action acts
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: glibc's PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # a normal mutex locked again by its owner: never returns

os.register_at_fork(after_in_child=hang_in_the_first_child)

import logging
from fsdtrain.pools import fork_pool
from fsdtrain.stopping import stop_on_signals

logging.basicConfig(level=logging.WARNING)
with stop_on_signals():  # the CLI's handlers: the stuck child inherits them and cannot act on SIGTERM
    with fork_pool(2) as pool:
        print(sorted(pool.imap_unordered(abs, range(-20, 0))))
print("ended")
"""


def test_a_pool_with_a_worker_stuck_at_its_fork_gives_every_result_and_ends(tmp_path):
    marker = tmp_path / "stuck.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-c", STUCK_AT_FORK, str(marker)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [str(list(range(1, 21))), "ended"]
    stuck = int(marker.read_text())
    assert f"pool worker(s) [{stuck}] never started (stuck at their fork)" in proc.stderr
    assert not Path(f"/proc/{stuck}").exists(), "the stuck worker was left running"


def test_a_pool_whose_workers_all_start_ends_without_a_warning():
    code = "from fsdtrain.pools import fork_pool\nwith fork_pool(2) as pool:\n    print(sum(pool.map(abs, range(-5, 0))))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0 and proc.stdout.strip() == "15" and "never started" not in proc.stderr
