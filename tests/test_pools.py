"""fsdtrain/pools.py: a pool whose workers hang at their fork, as CPython 3.11's can (gh-112275), still
gives every result and ends, under the CLI's stop handlers; the stuck workers are gone."""

import os
import re
import subprocess
import sys
from pathlib import Path

STUCK_AT_FORK = """
import os, sys
from fork_hang import block_in_c, first_child

def hang_in_the_first_child():  # before fsdtrain's own at-fork hook, as the real hang is before any hook
    if first_child(sys.argv[1]):
        block_in_c()

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


def run_pool(script: str, marker: Path) -> subprocess.CompletedProcess:
    """Runs a pool script (its stuck workers' pids written to ``marker``); it must give every result and end."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-c", script, str(marker)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [str(list(range(1, 21))), "ended"]  # no task was lost with a stuck worker
    return proc


def test_a_pool_with_a_worker_stuck_at_its_fork_gives_every_result_and_ends(tmp_path):
    marker = tmp_path / "stuck.pid"
    proc = run_pool(STUCK_AT_FORK, marker)
    stuck = int(marker.read_text())
    assert f"pool worker(s) [{stuck}] never started (stuck at their fork)" in proc.stderr
    assert not Path(f"/proc/{stuck}").exists(), "the stuck worker was left running"


def test_a_pool_whose_workers_all_start_ends_without_a_warning():
    code = "from fsdtrain.pools import fork_pool\nwith fork_pool(2) as pool:\n    print(sum(pool.map(abs, range(-5, 0))))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0 and proc.stdout.strip() == "15" and "never started" not in proc.stderr


EVERY_WORKER_STUCK = """
import os, sys
from fork_hang import block_in_c

hang = [False]

def hang_while_the_pool_is_made():  # the constructor's children only; its replacements start
    if hang[0]:
        with open(sys.argv[1], "a") as f:
            f.write(f"{os.getpid()}\\n")
        block_in_c()

os.register_at_fork(after_in_child=hang_while_the_pool_is_made)

import logging
from fsdtrain.pools import fork_pool
from fsdtrain.stopping import stop_on_signals

logging.basicConfig(level=logging.WARNING)
with stop_on_signals():
    hang[0] = True
    with fork_pool(2, start_timeout_s=1.0) as pool:
        hang[0] = False
        print(sorted(pool.imap_unordered(abs, range(-20, 0))))
print("ended")
"""


def test_a_pool_whose_every_worker_is_stuck_at_its_fork_replaces_them(tmp_path):
    marker = tmp_path / "stuck.pids"
    proc = run_pool(EVERY_WORKER_STUCK, marker)
    stuck = sorted(int(line) for line in marker.read_text().split())
    assert len(stuck) == 2
    warned = re.search(r"pool worker\(s\) \[(\d+), (\d+)\] never started \(stuck at their fork\); killed after 1 s", proc.stderr)
    assert warned and sorted(int(pid) for pid in warned.groups()) == stuck, proc.stderr[-2000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in stuck), "a stuck worker was left running"
