"""The global window order of an epoch: a pure function of (data, window spec, seed, epoch).

Every window of every clip gets a global position. Shards are permuted per epoch; consecutive
shards form blocks of ``block_shards``, and the windows inside a block are permuted, so a batch
mixes clips and shards while a worker needs at most one block of clips at a time (bounded memory).

Positions are dealt out in micro-batches: micro-batch ``j`` of rank ``r`` holds positions
``[(j * W + r) * B, (j * W + r + 1) * B)`` for world size ``W`` and micro batch ``B``. One optimizer
step of all ranks therefore covers positions ``[j * G, (j + 1) * G)`` with ``G = W * B``, whatever
``W`` is: a run resumed on another number of ranks (same global batch) continues with exactly the
windows not yet seen. A rank's micro-batches are split over its loader workers in the order the
DataLoader asks for them (round robin from worker 0), so the worker count never changes the order.
Every rank gets ``len(order) // G`` micro-batches: equal by construction.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["WindowRef", "EpochOrder", "batch_positions", "hash_seed"]


def hash_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


@dataclass(frozen=True)
class WindowRef:
    """One window: shard (index into the order's shard list), sample in the shard, current frame."""

    shard: int
    sample: int
    current: int


class EpochOrder:
    """Global positions -> windows for one epoch.

    Args:
        shards: per shard, ``(samples, current_frames)``: its clip count and the current frames of
            the windows each of its clips yields.
        seed, epoch: the order is a function of these (and the data) only.
        block_shards: shards whose windows are shuffled together.
        weights: per shard, how many times each of its windows is used per epoch on average
            (mixing: a manifest's weight applies to all its shards). ``2.0`` uses every window
            twice, ``0.5`` a seeded half of them (another half next epoch). Default 1.
    """

    def __init__(
        self,
        shards: list[tuple[int, np.ndarray]],
        *,
        seed: int,
        epoch: int,
        block_shards: int = 4,
        weights: list[float] | None = None,
    ) -> None:
        self.shards = shards
        self.seed, self.epoch = seed, epoch
        self.weights = list(weights) if weights is not None else [1.0] * len(shards)
        if len(self.weights) != len(shards) or any(w < 0 for w in self.weights):
            raise ValueError("one non-negative weight per shard")
        order = list(range(len(shards)))
        random.Random(hash_seed(seed, epoch, "shards")).shuffle(order)
        self.blocks = [order[i : i + block_shards] for i in range(0, len(order), max(1, block_shards))]
        self.block_sizes = [sum(self._count(s) for s in block) for block in self.blocks]
        self.block_starts = np.concatenate([[0], np.cumsum(self.block_sizes)]).astype(np.int64)
        self._cached: tuple[int, list[WindowRef]] | None = None

    def _count(self, s: int) -> int:
        """Windows shard ``s`` contributes this epoch."""
        n = self.shards[s][0] * len(self.shards[s][1])
        whole, frac = divmod(self.weights[s], 1.0)
        return int(whole) * n + int(round(frac * n))

    def __len__(self) -> int:
        return int(self.block_starts[-1])

    def _shard_refs(self, s: int) -> list[WindowRef]:
        refs = [
            WindowRef(s, sample, int(c)) for sample in range(self.shards[s][0]) for c in self.shards[s][1]
        ]
        whole, _ = divmod(self.weights[s], 1.0)
        extra = self._count(s) - int(whole) * len(refs)
        picked = (
            random.Random(hash_seed(self.seed, self.epoch, "mix", s)).sample(refs, extra) if extra else []
        )
        return refs * int(whole) + picked

    def _block(self, b: int) -> list[WindowRef]:
        if self._cached is None or self._cached[0] != b:
            refs = [r for s in self.blocks[b] for r in self._shard_refs(s)]
            random.Random(hash_seed(self.seed, self.epoch, "block", b)).shuffle(refs)
            self._cached = (b, refs)
        return self._cached[1]

    def block_of(self, position: int) -> int:
        """The block holding ``position``; its positions are ``block_starts[b]:block_starts[b + 1]``."""
        if not 0 <= position < len(self):
            raise IndexError(position)
        return int(np.searchsorted(self.block_starts, position, side="right")) - 1

    def __getitem__(self, position: int) -> WindowRef:
        b = self.block_of(position)
        return self._block(b)[position - int(self.block_starts[b])]


def batch_positions(
    total: int,
    *,
    micro_batch: int,
    world_size: int,
    rank: int,
    workers: int,
    worker: int,
    start_batch: int = 0,
) -> Iterator[range]:
    """Positions of each micro-batch that ``worker`` of ``rank`` yields, from ``start_batch`` on."""
    batches = total // (micro_batch * world_size)
    for i, j in enumerate(range(start_batch, batches)):
        if i % workers == worker:
            first = (j * world_size + rank) * micro_batch
            yield range(first, first + micro_batch)
