"""A loader killed with SIGKILL leaves no worker processes, temp files or shared memory behind.

The workers notice their parent is gone, stop, and remove their multiprocessing socket directories
(``pymp-*``). Only torch's compile-cache directory, created on import, is not ours to remove.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

SCRIPT = """
import sys
from torch.utils.data import DataLoader
from helpers.fleet import TINY_WINDOW
from fsdtrain.data.datamodule import load_manifests
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.data.stream import FleetStream, Source, StreamSpec, init_loader_worker
from fsdtrain.store.gate import ZoneGate

GLOBAL_GATE = ZoneGate("global")

stream = FleetStream(Source.all(load_manifests(sys.argv[1:], GLOBAL_GATE)), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
                     batch_size=2, reading=StreamSpec(order="streams"))
stream.set_distributed(0, 1, 2)
for i, batch in enumerate(DataLoader(stream, batch_size=2, num_workers=2, worker_init_fn=init_loader_worker)):
    print("batch", i, flush=True)
    input()  # hold here, mid-epoch, until killed
"""


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_sigkill_mid_epoch_leaves_nothing(tiny_fleet, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before = shm_entries()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(Path(__file__).parents[1])}
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, *urls], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().startswith("batch 0")
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # orphaned workers notice their parent is gone and exit
    while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers) and time.monotonic() < deadline:
        psutil.wait_procs(workers, timeout=0.5)
    assert not [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    leftovers = [p.name for p in tmpdir.iterdir()]
    assert [n for n in leftovers if not n.startswith(("torchinductor_",))] == []
    assert all(not any(p.rglob("*.tar")) for p in tmpdir.iterdir())  # no shard bytes spilled to disk
    assert {e for e in shm_entries() - before if "torch" in e or "fsdtrain" in e} == set()
