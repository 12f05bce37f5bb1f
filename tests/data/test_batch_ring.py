import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fsdtrain.data.batch_ring import CONSUMER_HELD, RingBatch, RingCollate, RingLoader
from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.stream import FleetStream, Source, StreamSpec
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.store.gate import ZoneGate
from helpers.fleet import TINY_WINDOW

GLOBAL_GATE = ZoneGate("global")


class Numbered(IterableDataset):
    """Windows whose every value says which window it is: a batch written over by a later one shows it."""

    def __init__(self, windows: int, die_after: int | None = None) -> None:
        self.windows, self.die_after = windows, die_after

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for i in range(worker, self.windows, workers):
            if self.die_after is not None and i >= self.die_after:
                os._exit(3)  # a worker killed mid-epoch
            yield {"images": torch.full((3, 32, 32), i % 251, dtype=torch.uint8), "pose": torch.full((4,), float(i)), "frame": i, "valid": i % 2 == 0, "id": f"w{i}"}


def check(batch) -> list[int]:
    frames = batch["frame"].tolist()
    for k, i in enumerate(frames):
        assert batch["id"][k] == f"w{i}" and bool(batch["valid"][k]) == (i % 2 == 0)
        assert (batch["images"][k] == i % 251).all() and (batch["pose"][k] == float(i)).all()
    return frames


def test_same_batches_as_the_default_collate():
    plain = list(DataLoader(Numbered(70), batch_size=8, num_workers=2))
    ring = list(RingLoader(Numbered(70), batch_size=8, num_workers=2))
    assert len(ring) == len(plain) == 10  # each worker: 4 batches of 8 and one of 3
    for a, b in zip(plain, ring):
        assert a.keys() == b.keys() and list(a) == list(b)
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key]


def through_buffers(loader: RingLoader, buffers: set):
    """The loader's batches, adding to ``buffers`` the shared-memory block (its inode) each came in;
    a batch collated into fresh memory counts as a new block."""
    for batch in DataLoader.__iter__(loader):  # the DataLoader's own iterator: what crosses from the workers
        if isinstance(batch, RingBatch):
            fd, _ = batch.storage._share_fd_cpu_()  # the received block's descriptor (torch keeps it open)
            buffers.add(os.fstat(fd).st_ino)
            batch = batch.materialize()
        else:
            buffers.add(("fresh", len(buffers)))
        yield batch


def test_slots_are_reused_when_the_consumer_lets_go():
    buffers, frames = set(), []
    for batch in through_buffers(RingLoader(Numbered(400), batch_size=4, num_workers=2), buffers):
        frames += check(batch)
    assert sorted(frames) == list(range(400))
    assert len(buffers) <= 2 * (2 + CONSUMER_HELD) < 100  # 100 batches through 4 buffers per worker (prefetch 2)


def test_a_batch_the_consumer_holds_is_never_written_over():
    held = []
    for step, batch in enumerate(RingLoader(Numbered(240), batch_size=4, num_workers=2)):
        held.append(batch)
        if step % 3 == 0:
            held = held[-10:]  # hold up to 10 batches at a time, more than all slots of both workers
        for b in held:
            check(b)
    kept = list(RingLoader(Numbered(240), batch_size=4, num_workers=2))  # every batch held to the end
    assert sorted(f for b in kept for f in check(b)) == list(range(240))


def test_an_epoch_cut_short_frees_its_slots_for_the_next():
    loader = RingLoader(Numbered(400), batch_size=4, num_workers=1, persistent_workers=True, prefetch_factor=3)
    buffers = set()
    for epoch in range(3):
        for step, batch in enumerate(through_buffers(loader, buffers)):
            check(batch)
            if step == 30 and epoch < 2:
                break  # batches in flight are dropped unseen by the DataLoader's reset
    assert len(buffers) <= 3 + CONSUMER_HELD  # one worker for all epochs: the dropped batches' slots came back


DEAD_WORKER = """
import signal
from data.test_batch_ring import Numbered, check
from fsdtrain.data.batch_ring import RingLoader
# torch's SIGCHLD handler would raise the death again at any later bytecode; unblocked, the loader
# still finds the dead worker when it polls (every 5 s) or when a batch from it cannot be received
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
try:
    for batch in RingLoader(Numbered(400, die_after=200), batch_size=4, num_workers=2):
        check(batch)
    print("no error")
except (RuntimeError, ConnectionError) as exc:  # a batch whose sender died cannot be received either
    print("error:", type(exc).__name__, exc)
"""


def test_a_dead_worker_is_an_error_not_a_hang():
    # in its own process: torch reports a dead worker from its SIGCHLD handler, whenever the signal comes
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", DEAD_WORKER], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("error:"), proc.stderr[-2000:]
    assert "exited unexpectedly" in proc.stdout or "ConnectionResetError" in proc.stdout, proc.stdout


STUCK_AT_FORK = """
import os, sys, time
from data.test_batch_ring import Numbered
from fork_hang import first_child
from fsdtrain.data.batch_ring import RingLoader

def hang_in_the_first_child():  # as a child of CPython 3.11 does that inherits a held thread-state lock (gh-112275)
    if first_child(sys.argv[1]):
        while True:
            time.sleep(1)

os.register_at_fork(after_in_child=hang_in_the_first_child)
loader = RingLoader(Numbered(40), batch_size=4, num_workers=2, start_timeout_s=3, persistent_workers=True)
for epoch in range(2):
    print(sorted(int(i) for batch in loader for i in batch["frame"]))
"""


def test_a_worker_stuck_at_its_fork_is_replaced_not_waited_for(tmp_path):
    marker = tmp_path / "stuck.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", STUCK_AT_FORK, str(marker)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    every = sorted(int(i) for batch in RingLoader(Numbered(40), batch_size=4, num_workers=2) for i in batch["frame"])
    assert proc.stdout.splitlines() == [str(every)] * 2  # both epochs, all of it, through the workers started again
    stuck = int(marker.read_text())
    assert f"loader worker(s) [{stuck}] did not start within 3 s of their fork (attempt 1 of 3)" in proc.stderr
    assert not Path(f"/proc/{stuck}").exists(), "the stuck worker was left running"


NEVER_STARTS = """
import os, time
from data.test_batch_ring import Numbered
from fsdtrain.data.batch_ring import RingLoader
from fsdtrain.errors import FsdtrainError

def hang():  # every child: the machine cannot start a worker at all
    open(os.environ["PIDS"], "a").write(f"{os.getpid()}\\n")
    while True:
        time.sleep(1)

os.register_at_fork(after_in_child=hang)
try:
    list(RingLoader(Numbered(8), batch_size=4, num_workers=2, start_timeout_s=1))
except FsdtrainError as exc:  # what the CLI prints as one line
    print(type(exc).__name__, exc)
"""


def test_workers_that_never_start_end_in_one_error_line_and_leave_no_process(tmp_path):
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "PIDS": str(pids)}
    proc = subprocess.run([sys.executable, "-c", NEVER_STARTS], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("WorkersNotStarted loader workers did not start within 1 s of their fork, 3 times in a row")
    assert "attempt 3 of 3" in proc.stderr and "Traceback" not in proc.stderr
    forked = [int(pid) for pid in pids.read_text().split()]
    assert len(forked) == 6  # 2 workers, 3 attempts
    assert not [pid for pid in forked if Path(f"/proc/{pid}").exists()], "a stuck worker was left running"


def test_in_process_and_odd_batches_use_the_default_collate():
    ring = RingCollate(slots=2)
    batch = ring([{"x": torch.ones(2), "n": 1}, {"x": torch.zeros(2), "n": 2}])  # no worker: a plain dict
    assert torch.equal(batch["x"], torch.tensor([[1.0, 1.0], [0.0, 0.0]])) and batch["n"].tolist() == [1, 2]
    single = next(iter(RingLoader(Numbered(4), batch_size=None, num_workers=1)))  # no batching: samples as they are
    assert single["id"] == "w0" and torch.equal(single["pose"], torch.zeros(4))
    with pytest.raises(ValueError, match="at least one slot"):
        RingCollate(slots=0)
    with pytest.raises(ValueError, match="no collate_fn"):
        RingLoader(Numbered(4), batch_size=2, collate_fn=lambda b: b)


def make_stream(urls, batch_size=4):
    return FleetStream(
        Source.all(load_manifests(urls, GLOBAL_GATE)), TINY_WINDOW, cameras=list(DEFAULT_CAMERAS), batch_size=batch_size,
        gate=GLOBAL_GATE, reading=StreamSpec(order="streams", seed=3),
    )  # fmt: skip


def test_the_stream_through_the_ring_resumes_exactly(tiny_fleet):
    urls = [tiny_fleet[c]["train"] for c in ("US", "DE")]
    stream = make_stream(urls)
    stream.set_distributed(0, 1, 2)
    reference = list(DataLoader(stream, batch_size=4, num_workers=2))
    for start in (0, 3):
        stream.start_batch = start
        resumed = list(RingLoader(stream, batch_size=4, num_workers=2))
        assert len(resumed) == len(reference) - start
        for a, b in zip(reference[start:], resumed):
            assert a["clip_id"] == b["clip_id"] and torch.equal(a["frame"], b["frame"])
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["future"], b["future"])
            assert torch.equal(a["intrinsics"], b["intrinsics"]) and a["valid"].dtype == b["valid"].dtype == torch.bool


FAULTS = """
import resource
import numpy as np
from fsdtrain.data.batch_ring import keep_freed_memory

def faults_per_window():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # a batch of 8 windows' images at 448x256 (4.1 MB each), made and freed together
        batch = [np.ones((6, 2, 3, 256, 448), dtype=np.uint8) for _ in range(8)]
        del batch
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40

faults_per_window()
print(faults_per_window())
keep_freed_memory()
faults_per_window()
print(faults_per_window())
"""


def test_a_worker_reuses_the_memory_it_frees_instead_of_faulting_new_pages_in():
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    default, kept = float(out[0]), float(out[1])
    assert default > 500 and kept < 10, (default, kept)  # 1000 4-KiB pages a window by default; none once kept


BROKEN_HANDOFF = """
import os, select, socket, sys
from multiprocessing import resource_sharer
from fsdtrain.data.batch_ring import quiet_handoff_resets
if sys.argv[1] == "quiet":
    quiet_handoff_resets()
shared = resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))  # as a batch's fd: the sharer thread starts
with socket.socket(socket.AF_UNIX) as peer:  # a training process that asks for it, then stops half way
    peer.connect(resource_sharer._resource_sharer._address)
    assert select.select([peer], [], [], 30)[0]  # the sharer's challenge arrived, unread: closing resets the connection
resource_sharer.stop()  # returns once the sharer thread has met the reset and taken the next request (its stop)
raise RuntimeError("any other error still gets its traceback")
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_a_hand_off_the_training_process_broke_off_prints_no_traceback(quiet):
    mode = "quiet" if quiet else "default"
    proc = subprocess.run([sys.executable, "-c", BROKEN_HANDOFF, mode], capture_output=True, text=True, timeout=60)
    assert proc.stderr.count("Traceback") == (1 if quiet else 2), proc.stderr
    assert ("resource_sharer.py" in proc.stderr) != quiet and "any other error still gets its traceback" in proc.stderr
