"""What handing a batch from a loader worker to the trainer costs: fresh shared memory, a reused shared buffer, heap.

A plain DataLoader worker collates each batch into a new shared-memory block (torch allocates it
with ``posix_fallocate`` and the copy then faults every page in) so the main process can map it;
the data module's ``RingLoader`` collates into one of a few shared buffers it reuses
(fsdtrain/data/batch_ring.py); a collate in the training process reuses heap memory. This times the
three in one process, alternating in rounds (benchmarks/rounds.py), for the batch of
``data_throughput.py`` (8 windows x 6 cameras x 3 frames x 3x96x160 uint8, 6.6 MB) and reports ms
per batch and their ratios (docs/data-loading.md).

    python benchmarks/shm_handoff.py [--batches 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from machine import describe
from rounds import alternate, ratio_summary

WINDOW = (6, 3, 3, 96, 160)  # cameras, frames, channels, height, width
BATCH = 8


def collate_ms(windows: list[torch.Tensor], batches: int, *, shared: bool, reused: torch.Tensor | None = None) -> float:
    """Milliseconds per batch to stack ``windows`` into ``reused`` (a shared buffer written before),
    else into new memory, shared (as a plain DataLoader worker does) or heap."""
    t0 = time.perf_counter()
    for _ in range(batches):
        if reused is not None:
            torch.stack(windows, out=reused)
        elif shared:
            storage = torch.UntypedStorage._new_shared(sum(w.numel() for w in windows))
            out = torch.empty(0, dtype=torch.uint8).set_(storage).view(len(windows), *windows[0].shape)
            torch.stack(windows, out=out)
        else:
            torch.stack(windows)
    return (time.perf_counter() - t0) / batches * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    windows = [torch.randint(0, 255, WINDOW, dtype=torch.uint8) for _ in range(BATCH)]
    ring = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(BATCH * torch.Size(WINDOW).numel()))
    ring = ring.view(BATCH, *WINDOW)
    ring.fill_(0)  # a slot that already held a batch: its pages are in
    ms = alternate(
        {
            "heap": lambda: collate_ms(windows, args.batches, shared=False),
            "shared": lambda: collate_ms(windows, args.batches, shared=True),
            "ring": lambda: collate_ms(windows, args.batches, shared=True, reused=ring),
        },
        args.rounds,
    )
    result = {
        "shared_vs_heap": ratio_summary(ms["shared"], ms["heap"]),
        "ring_vs_heap": ratio_summary(ms["ring"], ms["heap"]),
        "shared_ms_per_batch": round(statistics.median(ms["shared"]), 3),
        "ring_ms_per_batch": round(statistics.median(ms["ring"]), 3),
        "heap_ms_per_batch": round(statistics.median(ms["heap"]), 3),
        "batch_mb": round(BATCH * torch.Size(WINDOW).numel() / 1e6, 2),
        **describe(load_before=load_before),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
