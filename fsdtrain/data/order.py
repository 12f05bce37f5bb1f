"""The training order of an epoch: a pure function of (data, stream shape, seed, epoch) and the position.

Every clip belongs to one logical *stream* per epoch (:class:`StreamOrder`); streams take turns
round robin, ``turn`` windows at a time (:class:`StreamShape`). Positions are dealt out in
micro-batches: micro-batch ``j`` of rank ``r`` holds positions ``[(j * W + r) * B, (j * W + r + 1) * B)``
for world size ``W`` and micro batch ``B`` (:func:`batch_positions`), and a rank's micro-batches go
to its ``K`` loader workers round robin, as the DataLoader asks for them. One optimizer step of all
ranks therefore covers positions ``[j * G, (j + 1) * G)`` with ``G = W * B`` whatever ``W`` and
``K`` are: a run resumed on other ranks or workers continues with exactly the windows not yet seen.
When the layout matches the shape (:meth:`StreamShape.owned`), every stream, and so every clip,
belongs to one (rank, worker): each clip is fetched once and decoded by one worker per epoch.
Every rank gets ``len(order) // G`` micro-batches: equal by construction. docs/data-loading.md.

Reading every window once (validation, ``fsdtrain eval``) has its own partition, also a pure function
of the clips and the layout (:func:`worker_caps`): clips dealt round robin over ranks, then over each
rank's workers, in manifest order, each worker's window count padded to whole batches and to the
longest rank's batch count.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fsdtrain.errors import ConfigError

__all__ = ["ClipWindow", "StreamShape", "StreamOrder", "batch_positions", "hash_seed", "ClipRef", "worker_caps"]


def hash_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


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


@dataclass(frozen=True)
class ClipWindow:
    """One window of the stream order: clip ``clip`` of source ``source`` (its index in the source's
    clips, manifest order), ending at frame ``current``."""

    source: int
    clip: int
    current: int


@dataclass(frozen=True)
class StreamShape:
    """The shape of a stream order: ``streams`` logical streams, each taking ``turn`` consecutive
    positions per turn. Saved in every checkpoint; a resumed run keeps it, whatever its ranks and workers.

    Position ``p`` belongs to turn ``p // turn``, and turn ``t`` to stream ``t % streams``: the streams
    take turns round robin, so every micro-batch of ``B`` windows holds ``B / turn`` streams.
    """

    streams: int
    turn: int

    def __post_init__(self) -> None:
        if self.streams < 1 or self.turn < 1:
            raise ValueError(f"streams ({self.streams}) and turn ({self.turn}) must be at least 1")

    def owned(self, *, micro_batch: int, world_size: int, workers: int) -> bool:
        """Whether every stream is read by exactly one loader worker of this physical layout.

        Micro-batch ``j`` of rank ``r`` is positions ``[(j W + r) B, (j W + r + 1) B)`` and is made by
        worker ``j % K``; a turn lies in one micro batch when ``turn | B``, and the owner of turn
        ``t`` repeats with period ``(W B / turn) K``, so each stream has one owner when that divides
        ``streams``. (Exact: a layout that breaks it shares some stream between two workers; one
        worker in all owns everything.)
        """
        if world_size * workers == 1:
            return True
        if micro_batch % self.turn:
            return False
        return self.streams % (micro_batch * world_size // self.turn * workers) == 0

    @staticmethod
    def fit(clips: int, *, micro_batch: int, world_size: int, workers: int, min_clips: int = 4) -> StreamShape:
        """The default shape for a run: one stream per (worker, window of its micro batch) when the
        data has ``min_clips`` clips per stream, fewer (longer turns) otherwise; never fewer streams
        than loader workers, so each worker owns its own clips.

        Raises:
            ConfigError: fewer clips than loader workers over all ranks.
        """
        workers = max(1, workers)
        for turn in (d for d in range(1, micro_batch + 1) if micro_batch % d == 0):
            streams = micro_batch * world_size * workers // turn
            if clips >= min_clips * streams or turn == micro_batch:
                break
        if clips < streams:
            raise ConfigError(
                f"{clips} clips cannot keep {world_size} ranks x {workers} loader workers busy (each worker reads its own "
                f"clips): lower data.num_workers, use fewer ranks or add clips"
            )
        return StreamShape(streams, turn)


class StreamOrder:
    """Global positions -> windows for one epoch, with every clip in exactly one logical stream.

    The epoch's clips are listed shard by shard, shards in a seeded order and the clips of a shard
    in a seeded order, and the list is cut into ``streams`` consecutive runs of nearly equal window
    counts (each within one clip's windows of ``T / streams``, ``T`` the epoch's windows): each stream
    reads a few shards' clips (a worker reads a few shard indexes, not all of them). A stream reads
    its clips in groups of ``group`` (at least ``turn``) and deals their windows in rounds, one window
    of each clip per round in a seeded order: it holds one group's clips at a time (bounded memory),
    and the windows of a turn come from different clips while its group has clips left. Every stream
    yields exactly ``T // streams`` windows (rounded down to whole turns), so the epoch's length
    depends on the data and the shape only: a longer stream drops its tail (other clips each epoch),
    a shorter one repeats windows of its last group (still held: nothing is fetched again). Streams
    take turns of ``shape.turn`` windows round robin (:class:`StreamShape`), so a micro batch mixes
    ``B / turn`` streams, that is shards.

    The order depends on (data, shape, seed, epoch) and the position only: any number of ranks and
    workers reads the same windows at the same positions; with :meth:`StreamShape.owned` true, each
    stream (and so each clip) is read and decoded by one loader worker.

    Args:
        sources: per source (manifest), ``(shard_clips, currents, weight)``: the clip count of each of
            its shards, the current frames of the windows each clip yields (``WindowSpec.current_frames``
            of the manifest's frames and fps: the same for every clip of a source), and how many times each
            clip is used per epoch on average (``2`` twice, ``0.5`` half of the clips: consecutive
            slices of one seeded permutation, so every clip is used once in two epochs).
        shape: streams and turn.
        seed, epoch: the order is a function of these (and the data) only.
        group: clips a stream reads together (``max(group, shape.turn)``).
    """

    def __init__(
        self,
        sources: list[tuple[list[int], np.ndarray, float]],
        shape: StreamShape,
        *,
        seed: int,
        epoch: int,
        group: int = 4,
    ) -> None:
        self.sources, self.shape, self.seed, self.epoch = sources, shape, seed, epoch
        self.group = max(1, group, shape.turn)  # a turn's windows come from as many clips as it has windows
        times = self._visits()
        shards = [(s, start, start + n) for s, (sizes, _, _) in enumerate(sources) for start, n in zip(np.cumsum([0, *sizes[:-1]]), sizes)]
        random.Random(hash_seed(seed, epoch, "shards")).shuffle(shards)
        clips: list[tuple[int, int, int]] = []  # (source, clip, times), shard by shard
        for source, start, end in shards:
            members = [(source, c, int(times[source][c])) for c in range(int(start), int(end)) if times[source][c]]
            random.Random(hash_seed(seed, epoch, "clips", source, int(start))).shuffle(members)
            clips += members
        weights = np.array([t * len(sources[s][1]) for s, _, t in clips], dtype=np.int64)
        ends = np.cumsum(weights)
        total = int(ends[-1]) if len(ends) else 0
        # stream k takes the clips whose windows start in [k T / L, (k + 1) T / L): runs of T / L windows, +- one clip
        stream_of = np.minimum(shape.streams - 1, (ends - weights) * shape.streams // max(1, total))
        bounds = np.searchsorted(stream_of, np.arange(shape.streams + 1), side="left")
        self.stream_clips = [clips[bounds[k] : bounds[k + 1]] for k in range(shape.streams)]
        if total and any(not c for c in self.stream_clips):
            raise ConfigError(
                f"a clip of more than {total // shape.streams} windows leaves a stream of the {shape.streams} without clips: "
                "set data.streams lower (or leave it empty)"
            )
        self.turns = total // shape.streams // shape.turn  # turns of every stream: T / L windows, whatever the epoch
        self._cache: dict[int, list[ClipWindow]] = {}

    def _visits(self) -> list[np.ndarray]:
        """Per source, how many times each of its clips is used this epoch (0: not at all)."""
        out = []
        for s, (sizes, currents, weight) in enumerate(self.sources):
            if weight < 0:
                raise ValueError("weights must be non-negative")
            clips = int(sum(sizes))
            whole, frac = divmod(weight, 1.0)
            times = np.full(clips, int(whole) if len(currents) else 0, dtype=np.int64)
            extra = int(round(frac * clips)) if len(currents) else 0
            if extra:  # consecutive slices of one permutation: every clip in turn, epoch after epoch
                order = random.Random(hash_seed(self.seed, "mix", s)).sample(range(clips), clips)
                first = self.epoch * extra
                times[[order[(first + i) % clips] for i in range(extra)]] += 1
            out.append(times)
        return out

    def __len__(self) -> int:
        return self.shape.streams * self.turns * self.shape.turn

    def stream(self, s: int) -> list[ClipWindow]:
        """Stream ``s``'s windows this epoch, in order: cut, or topped up from its last group, to the epoch's length."""
        if s not in self._cache:
            out: list[ClipWindow] = []
            clips = self.stream_clips[s]
            last = 0  # where the last group's windows start
            for g in range(0, len(clips), self.group):
                last = len(out)
                rng = random.Random(hash_seed(self.seed, self.epoch, "stream", s, g))
                lists = []
                for source, clip, times in clips[g : g + self.group]:
                    windows = [ClipWindow(source, clip, int(c)) for c in self.sources[source][1] for _ in range(times)]
                    rng.shuffle(windows)
                    lists.append(windows)
                while lists:  # rounds: one window of each clip left, in a new order each round
                    rng.shuffle(lists)
                    out += [windows.pop() for windows in lists]
                    lists = [windows for windows in lists if windows]
            want = self.turns * self.shape.turn
            tail = out[last:]
            out += [tail[i % len(tail)] for i in range(want - len(out))] if tail else []
            self._cache[s] = out[:want]
        return self._cache[s]

    def __getitem__(self, position: int) -> ClipWindow:
        if not 0 <= position < len(self):
            raise IndexError(position)
        turn, i = divmod(position, self.shape.turn)
        stream, t = turn % self.shape.streams, turn // self.shape.streams
        return self.stream(stream)[t * self.shape.turn + i]


# --- every window once ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRef:
    """One clip of the every-window-once reading: its source (manifest) and index there, and its windows."""

    source: int
    clip: int
    windows: int  # windows this clip yields under the stream's WindowSpec


def worker_caps(
    clips: list[ClipRef], *, world_size: int, workers: int, batch_size: int, pad: bool = False
) -> dict[tuple[int, int], tuple[list[ClipRef], int | None]]:
    """Clips and window count of every (rank, worker) reading every window once: ``None`` means all of its windows.

    Clip ``i`` goes to rank ``i % world_size``; a rank's ``j``-th clip to worker ``j % workers``.
    With ``pad``, every rank gets the same number of full batches, the maximum over ranks: every
    worker's windows rounded up to full batches, and a rank with fewer batches than the longest one
    adds the missing batches to its workers that have windows, in turn; the count is then at least
    the worker's windows and the rest is padding. Each worker's count is a multiple of
    ``batch_size``, so no worker emits a partial batch.

    Raises:
        ConfigError: with ``pad``, when a rank that needs padding has no window to repeat.
    """
    plan: dict[tuple[int, int], list[ClipRef]] = {
        (r, w): [] for r in range(world_size) for w in range(workers)
    }
    for i, ref in enumerate(clips):
        plan[(i % world_size, (i // world_size) % workers)].append(ref)
    if not pad:
        return {k: (v, None) for k, v in plan.items()}
    return _padded_caps(plan, world_size=world_size, workers=workers, batch_size=batch_size, clips=len(clips))


def _padded_caps(
    plan: dict[tuple[int, int], list[ClipRef]], *, world_size: int, workers: int, batch_size: int, clips: int
) -> dict[tuple[int, int], tuple[list[ClipRef], int]]:
    batches = {k: -(-sum(r.windows for r in v) // batch_size) for k, v in plan.items()}  # ceil: a partial batch is padded
    per_rank = max(sum(batches[(r, w)] for w in range(workers)) for r in range(world_size))
    for r in range(world_size):
        missing = per_rank - sum(batches[(r, w)] for w in range(workers))
        fillers = [w for w in range(workers) if batches[(r, w)] > 0]
        if missing and not fillers:
            raise ConfigError(
                f"rank {r} of {world_size} gets no window from the {clips} clips, so it has none to repeat to match the "
                f"other ranks' {per_rank} batches; use more clips or fewer ranks"
            )
        for i in range(missing):
            batches[(r, fillers[i % len(fillers)])] += 1
    return {k: (v, batches[k] * batch_size) for k, v in plan.items()}
