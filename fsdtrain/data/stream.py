"""The streaming loader: shards -> (rank, worker) split -> residency check -> decode -> windows.

Every rank reads a disjoint set of shards and every loader worker a disjoint part of its rank's
set. Training streams are *equalized*: from the manifests alone (no data read) each rank computes
how many windows every (rank, worker) can produce and all ranks stop after the same number of
batches, so uneven shards never hang a collective. Tail windows beyond that count are dropped for
the epoch (a different shard order next epoch drops different ones).

Validation streams are equalized by *padding* instead: every window is yielded exactly once, and
each (rank, worker) tops its stream up with repeats of one of its own windows, marked
``valid: False``, until every worker emits only full batches and every rank as many batches as the
longest one. Metrics drop the padding after gathering across ranks (``fsdtrain.train.module``), so
they do not depend on the number of ranks or workers.
"""

from __future__ import annotations

import bisect
import logging
import multiprocessing.util
import random
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fsdtrain.data.augment import Augment
from fsdtrain.data.order import EpochOrder, batch_positions, hash_seed
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.manifest import Manifest
from fsdtrain.format.samples import TarSample, parse_clip, shard_samples
from fsdtrain.format.video import decode_video
from fsdtrain.format.windows import WindowSpec, derive_command, ego_window, window_frames
from fsdtrain.store.gate import ZoneGate

__all__ = ["Source", "StreamSpec", "ShardRef", "FleetStream", "init_loader_worker", "plan_shards", "worker_caps", "ERROR_POLICIES", "ORDERS", "BALANCES"]

ERROR_POLICIES = ("fail", "skip")
ORDERS = ("sharded", "global")
BALANCES = ("none", "drop", "pad")
log = logging.getLogger("fsdtrain.data")


@dataclass(frozen=True)
class ShardRef:
    """One shard of one manifest, with what the loader needs to know before opening it."""

    url: str
    zone: str
    country: str
    samples: int
    sha256: str
    windows: int  # windows this shard yields under the stream's WindowSpec


def plan_shards(
    manifests: list[Manifest], spec: WindowSpec, *, seed: int, epoch: int, shuffle: bool
) -> list[ShardRef]:
    """All shards of all manifests in the epoch's order (a seeded permutation when ``shuffle``)."""
    refs = []
    for m in manifests:
        per_clip = spec.count(m.frames, m.fps)
        for s in m.shards:
            refs.append(
                ShardRef(m.shard_url(s), m.zone, m.country, s.samples, s.sha256, s.samples * per_clip)
            )
    if shuffle:
        random.Random(hash_seed(seed, epoch)).shuffle(refs)
    return refs


def worker_caps(
    shards: list[ShardRef], *, world_size: int, workers: int, batch_size: int, equalize: bool, pad: bool = False
) -> dict[tuple[int, int], tuple[list[ShardRef], int | None]]:
    """Shards and window count of every (rank, worker): ``None`` means all of its windows.

    Shard ``i`` goes to rank ``i % world_size``; a rank's ``j``-th shard to worker ``j % workers``.
    With ``equalize``, every rank gets the same number of full batches: the minimum over ranks of
    what its workers can fill (tail windows are dropped). With ``pad`` as well, the maximum: every
    worker's windows rounded up to full batches, and a rank with fewer batches than the longest one
    adds the missing batches to its workers that have windows, in turn; the count is then at least
    the worker's windows and the rest is padding. Each worker's count is a multiple of
    ``batch_size``, so no worker emits a partial batch.

    Raises:
        ConfigError: with ``pad``, when a rank that needs padding has no window to repeat.
    """
    if pad and not equalize:
        raise ValueError("pad=True pads equalized streams; it needs equalize=True")
    plan: dict[tuple[int, int], list[ShardRef]] = {
        (r, w): [] for r in range(world_size) for w in range(workers)
    }
    for i, ref in enumerate(shards):
        rank = i % world_size
        plan[(rank, (i // world_size) % workers)].append(ref)
    if not equalize:
        return {k: (v, None) for k, v in plan.items()}
    if pad:
        return _padded_caps(plan, world_size=world_size, workers=workers, batch_size=batch_size, shards=len(shards))
    full = {k: sum(r.windows for r in v) // batch_size for k, v in plan.items()}
    per_rank = min(sum(full[(r, w)] for w in range(workers)) for r in range(world_size))
    out = {}
    for r in range(world_size):
        left = per_rank
        for w in range(workers):
            take = min(full[(r, w)], left)
            left -= take
            out[(r, w)] = (plan[(r, w)], take * batch_size)
    return out


def _padded_caps(
    plan: dict[tuple[int, int], list[ShardRef]], *, world_size: int, workers: int, batch_size: int, shards: int
) -> dict[tuple[int, int], tuple[list[ShardRef], int]]:
    batches = {k: -(-sum(r.windows for r in v) // batch_size) for k, v in plan.items()}  # ceil: a partial batch is padded
    per_rank = max(sum(batches[(r, w)] for w in range(workers)) for r in range(world_size))
    for r in range(world_size):
        missing = per_rank - sum(batches[(r, w)] for w in range(workers))
        fillers = [w for w in range(workers) if batches[(r, w)] > 0]
        if missing and not fillers:
            raise ConfigError(
                f"rank {r} of {world_size} gets no window from the {shards} shards (each rank reads whole shards), so it "
                f"has none to repeat to match the other ranks' {per_rank} batches; use more shards or fewer ranks"
            )
        for i in range(missing):
            batches[(r, fillers[i % len(fillers)])] += 1
    return {k: (v, batches[k] * batch_size) for k, v in plan.items()}


def init_loader_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: creates this worker's multiprocessing temp dir now.

    A worker passes batches to the training process as file descriptors over a unix socket in a
    ``pymp-*`` temp dir that multiprocessing removes at exit. Created lazily, that dir can be made
    by the queue's feeder thread while the worker is already running its exit handlers (e.g. after
    the parent was SIGKILLed), too late for its removal to be registered, and it stays behind.
    """
    multiprocessing.util.get_temp_dir()


@dataclass(frozen=True)
class Source:
    """One dataset a stream reads, with its mixing weight (as MosaicML Streaming's ``Stream``): the
    two travel together instead of in parallel lists.

    Args:
        manifest: the shard directory's manifest (checked against the site zone by the gate).
        weight: with ``order: global``, how often each of its windows is used per epoch on average
            (``2`` twice, ``0.5`` a seeded half); None: no mixing asked for (every window once).
    """

    manifest: Manifest
    weight: float | None = None

    @staticmethod
    def all(manifests: list[Manifest], weights: list[float] | None = None) -> list[Source]:
        """One source per manifest; ``weights``, when given, one per manifest."""
        if weights is not None and len(weights) != len(manifests):
            raise ConfigError(f"data.weights needs one weight per data.train entry ({len(manifests)}), got {weights}")
        return [Source(m, None if weights is None else float(w)) for m, w in zip(manifests, weights or [None] * len(manifests))]


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """How a stream reads its sources: order, shuffling, how ranks are balanced, bad clips.

    Checked on construction (one line naming the bad value). The data module makes one for training
    (``order`` as configured, shuffled, ``balance: drop``) and one for validation (``sharded``,
    ``balance: pad``); ``fsdtrain eval`` reads with the defaults (every window once, one process).

    Args:
        order: ``sharded`` (each rank reads its own shards: every clip decoded once; order depends on
            the world size) or ``global`` (order from (seed, epoch, global window index) alone, see
            ``order.py``: resumable mid-epoch on another number of ranks or workers; each worker
            decodes every clip of a block that holds one of its windows).
        shuffle: shuffle shard order per epoch and windows in a buffer.
        balance: how every rank gets the same number of batches under DDP: ``none`` (single-process
            evaluation: every window, no equalizing), ``drop`` (every rank stops after the same number
            of full batches; tail windows are dropped: training) or ``pad`` (``order: sharded`` only:
            every window once, and every (rank, worker) padded with ``valid: False`` repeats of its own
            windows up to the longest rank's number of full batches: validation, whose metrics then
            see every window exactly once on any number of ranks and workers).
        seed: base seed of all shuffles.
        shuffle_buffer: windows held for shuffling (memory: about 1 MB per window at 160x96).
        block_shards: with ``global``, shards whose windows are shuffled together.
        on_error: bad clip policy: ``fail`` (raise) or ``skip`` (log it, count it, go on; balanced
            streams repeat recent windows so every rank keeps its batch count).
        max_skip_fraction: with ``skip``, fail once more than this fraction of a worker's clips was skipped.
    """

    order: str = "sharded"
    shuffle: bool = False
    balance: str = "none"
    seed: int = 0
    shuffle_buffer: int = 64
    block_shards: int = 4
    on_error: str = "fail"
    max_skip_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"data.order must be one of {ORDERS}, got {self.order!r}")
        if self.balance not in BALANCES:
            raise ConfigError(f"balance must be one of {BALANCES}, got {self.balance!r}")
        if self.balance == "pad" and self.order != "sharded":
            raise ConfigError("balance='pad' (validation: every window once) needs order='sharded'")
        if self.on_error not in ERROR_POLICIES:
            raise ConfigError(f"data.on_error must be one of {ERROR_POLICIES}, got {self.on_error!r}")
        if self.shuffle_buffer < 1 or self.block_shards < 1:
            raise ConfigError(f"data.shuffle_buffer ({self.shuffle_buffer}) and data.block_shards ({self.block_shards}) must be at least 1")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")


class FleetStream(IterableDataset):
    """Windows from sharded clips, one dict per window.

    A window: ``images`` uint8 [N_cam, history, 3, H, W]; ``ego_hist`` float32 [history, 6];
    ``future`` float32 [future_steps, 3]; ``command`` int64; ``intrinsics`` float32 [N_cam, 3, 3];
    ``cam_to_ego`` float32 [N_cam, 4, 4]; ``country``, ``zone``, ``clip_id`` str; ``frame`` int;
    ``valid`` bool: False for a repeat the stream made up (padding, or standing in for a skipped
    clip), which metrics drop and training uses like any window.

    Args:
        sources: the data to read, each manifest with its mixing weight (:meth:`Source.all`).
        window: how windows are cut.
        cameras: camera names, in the order of the ``images`` axis.
        batch_size: per-rank micro batch (used to balance batch counts across ranks).
        gate: the job's zone gate: every shard is checked against the site zone and recorded in the
            audit log before its first byte is requested.
        reading: order, shuffling, balance across ranks and the bad clip policy.
        image_size: ``(H, W)`` to resize frames to, or None for the stored size.
        augment: augmentations per window (training), deterministic given (seed, epoch, window).
    """

    def __init__(
        self,
        sources: list[Source],
        window: WindowSpec,
        *,
        cameras: list[str],
        batch_size: int,
        gate: ZoneGate,
        reading: StreamSpec = StreamSpec(),  # noqa: B008 (frozen dataclass)
        image_size: tuple[int, int] | None = None,
        augment: Augment | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("no data: give at least one shard directory URL")
        weighted = any(s.weight is not None for s in sources)
        if weighted:
            if any(s.weight is not None and s.weight < 0 for s in sources):
                raise ConfigError(f"data.weights must be non-negative, got {[s.weight for s in sources]}")
            if reading.order != "global":
                raise ConfigError("data.weights (mixing) needs data.order=global")
        manifests = [s.manifest for s in sources]
        for m in manifests:
            missing = [c for c in cameras if c not in m.cameras]
            if missing:
                raise ConfigError(
                    f"{m.url}: cameras {missing} are not in this dataset (it has {m.cameras}); fix data.cameras"
                )
            gate.check_data(m.url, m.zone)
        self.manifests = manifests
        self.spec = window
        self.reading = reading
        self.cameras = list(cameras)
        self.batch_size = batch_size
        self.shuffle = reading.shuffle
        self.equalize, self.pad = reading.balance != "none", reading.balance == "pad"
        self.seed = reading.seed
        self.shuffle_buffer = reading.shuffle_buffer
        self.gate = gate
        self.image_size = tuple(image_size) if image_size else None
        self.on_error, self.max_skip_fraction = reading.on_error, reading.max_skip_fraction
        self.order, self.block_shards = reading.order, reading.block_shards
        self.weights = [1.0 if s.weight is None else s.weight for s in sources] if weighted else None
        self.augment = augment if augment is not None and augment.enabled else None
        self.epoch = 0
        self.start_batch = 0  # micro-batches of this epoch already consumed (resume), order=global
        self.rank = 0
        self.world_size = 1
        self.num_workers = 1

    def set_distributed(self, rank: int, world_size: int, num_workers: int) -> None:
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)

    def __len__(self) -> int:
        """Windows (padding included) this rank yields in a whole epoch, from the manifests alone (no data read)."""
        if self.order == "global":
            return len(self._epoch_order()) // (self.batch_size * self.world_size) * self.batch_size
        total = 0
        for (rank, _), (shards, cap) in self._caps().items():
            if rank == self.rank:
                total += cap if cap is not None else sum(s.windows for s in shards)
        return total

    def _global_shards(self) -> list[tuple[ShardRef, np.ndarray]]:
        """Every shard in manifest order, with the current frames of its clips' windows."""
        out = []
        for m in self.manifests:
            currents = self.spec.current_frames(m.frames, m.fps)
            out += [
                (
                    ShardRef(
                        m.shard_url(s), m.zone, m.country, s.samples, s.sha256, s.samples * len(currents)
                    ),
                    currents,
                )
                for s in m.shards
            ]
        return out

    def _epoch_order(self) -> EpochOrder:
        shards = [(ref.samples, currents) for ref, currents in self._global_shards()]
        weights = None
        if self.weights is not None:
            weights = [w for m, w in zip(self.manifests, self.weights) for _ in m.shards]
        return EpochOrder(
            shards, seed=self.seed, epoch=self.epoch, block_shards=self.block_shards, weights=weights
        )

    def _global_iter(self, worker: int) -> Iterator[dict]:
        """Windows at this (rank, worker)'s positions of the epoch's global order, from ``start_batch``.

        A clip belongs to one block, so when a block starts this worker works out which of the
        block's windows it will cut, and decodes only the frames those need (from their keyframes)
        when it first touches each clip. Decoded clips and parsed shards are kept for the block.
        Under ``on_error: skip`` a bad clip's windows are replaced by repeats of the next good
        window, so every position still yields a window (batch counts stay equal); only the batches
        around a bad clip then differ from another world size's.
        """
        order, shards = self._epoch_order(), [ref for ref, _ in self._global_shards()]
        batches = list(batch_positions(
            len(order), micro_batch=self.batch_size, world_size=self.world_size, rank=self.rank,
            workers=self.num_workers, worker=worker, start_batch=self.start_batch,
        ))  # fmt: skip
        starts = [r.start for r in batches]
        clips_touched = self._clip_count(order, batches, starts) if self.on_error == "skip" else 0  # a pass over the epoch: only when skipping
        skips = _SkipBudget(self.on_error, self.max_skip_fraction, clips=clips_touched)
        clips: OrderedDict[tuple[int, int], _Clip | DataError] = OrderedDict()  # decoded clips, LRU
        samples: OrderedDict[str, list[dict] | DataError] = OrderedDict()  # parsed shards by URL, LRU
        clip_capacity = self.block_shards * max((ref.samples for ref in shards), default=1)
        block, needs, owed, last = -1, {}, 0, None
        for positions in batches:
            for p in positions:
                if (b := order.block_of(p)) != block:
                    block = b
                    needs = _block_needs(order, batches, starts, block)
                w = order[p]
                key = (w.shard, w.sample)
                if key not in clips:
                    clips[key] = self._global_clip(shards[w.shard], w.sample, samples, currents=needs[key], skips=skips)
                    while len(clips) > clip_capacity:
                        clips.popitem(last=False)
                clips.move_to_end(key)
                if isinstance(clips[key], DataError):
                    owed += 1  # made up with the next good window
                    continue
                last = clips[key].window(w.current)
                yield last
                for _ in range(owed):
                    yield _filler(last)
                owed = 0
        if owed:
            if last is None:
                raise DataError(f"rank {self.rank} worker {worker}: every clip was skipped ({skips.summary()})")
            for _ in range(owed):
                yield _filler(last)

    def _global_clip(self, ref: ShardRef, sample: int, samples: OrderedDict, *, currents: set[int], skips: _SkipBudget) -> _Clip | DataError:
        """A decoded clip, or the error that made the skip policy drop it (or its whole shard)."""
        if ref.url not in samples:
            try:
                samples[ref.url] = list(self._samples(ref, self._fetch(ref)))
            except DataError as exc:  # checksum, tar structure, sample count: the whole shard is out
                samples[ref.url] = exc
                skips.skip(exc, clips=ref.samples)
            while len(samples) > self.block_shards:
                samples.popitem(last=False)
        parsed = samples[ref.url]
        if isinstance(parsed, DataError):
            return parsed
        try:
            clip = self._load_clip(ref, parsed[sample], currents=currents)
        except DataError as exc:
            skips.skip(exc, clips=1)
            return exc
        assert clip is not None, "the order only holds windows that clips yield"
        return clip

    @staticmethod
    def _clip_count(order: EpochOrder, batches: list[range], starts: list[int]) -> int:
        """Distinct clips this worker's positions touch (the skip budget's denominator)."""
        blocks = sorted({order.block_of(p) for r in batches for p in (r.start, r.stop - 1)})
        blocks = range(blocks[0], blocks[-1] + 1) if blocks else range(0)
        return sum(len(_block_needs(order, batches, starts, b)) for b in blocks)

    def _caps(self):
        shards = plan_shards(
            self.manifests, self.spec, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle
        )
        return worker_caps(
            shards,
            world_size=self.world_size,
            workers=self.num_workers,
            batch_size=self.batch_size,
            equalize=self.equalize,
            pad=self.pad,
        )

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise ConfigError(
                f"stream planned for {self.num_workers} workers but the DataLoader has {info.num_workers}"
            )
        if self.order == "global":
            yield from self._global_iter(worker)
            return
        shards, cap = self._caps()[(self.rank, worker)]
        skips = _SkipBudget(self.on_error, self.max_skip_fraction, clips=sum(s.samples for s in shards))
        windows = self._windows(shards, skips)
        if self.shuffle:
            windows = _shuffled(
                windows,
                self.shuffle_buffer,
                random.Random(hash_seed(self.seed, self.epoch, self.rank, worker)),
            )
        recent: list[dict] = []
        n = 0
        for window in windows:
            if cap is not None and n >= cap:  # without padding: tail windows beyond the rank's share
                return
            yield window
            n += 1
            if skips.skipped or not recent:  # keep one window to pad with, more once clips were skipped
                recent = (recent + [window])[-self.shuffle_buffer :]
        if cap is not None and n < cap:
            # skipped clips or padding left this worker short: repeat its own windows so that every
            # rank still yields the same number of batches (a short rank would hang the others' collectives)
            if not recent:
                raise DataError(
                    f"rank {self.rank} worker {worker}: every clip was skipped ({skips.summary()})"
                )
            short = min(cap, sum(s.windows for s in shards)) - n
            if short > 0:
                log.warning(
                    "rank %d worker %d: %d windows repeated to make up for skipped clips", self.rank, worker, short
                )
            for i in range(cap - n):
                yield _filler(recent[i % len(recent)])

    # --- reading ---------------------------------------------------------------------------------

    def _windows(self, shards: list[ShardRef], skips: _SkipBudget) -> Iterator[dict]:
        # the next shard is fetched in a thread while this one decodes, so store latency overlaps compute
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsdtrain-prefetch")
        try:
            pending = pool.submit(self._fetch, shards[0]) if shards else None
            for i, ref in enumerate(shards):
                fetched = pending
                pending = pool.submit(self._fetch, shards[i + 1]) if i + 1 < len(shards) else None
                try:
                    samples = list(self._samples(ref, fetched.result()))  # checks the whole shard
                except DataError as exc:  # checksum, tar structure, sample count: the whole shard is out
                    skips.skip(exc, clips=ref.samples)
                    continue
                for sample in samples:
                    try:
                        windows = list(self._clip_windows(ref, sample))
                    except DataError as exc:
                        skips.skip(exc, clips=1)
                        continue
                    yield from windows
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, ref: ShardRef) -> bytes:
        return self.gate.read_shard(ref.url, zone=ref.zone, sha256=ref.sha256)

    def _samples(self, ref: ShardRef, data: bytes) -> Iterator[TarSample]:
        return iter(shard_samples(data, ref.url, sha256=ref.sha256, samples=ref.samples))

    def _clip_windows(self, ref: ShardRef, sample: TarSample) -> Iterator[dict]:
        clip = self._load_clip(ref, sample)
        if clip is not None:
            for current in clip.currents:
                yield clip.window(int(current))

    def _load_clip(self, ref: ShardRef, sample: TarSample, currents: set[int] | None = None) -> _Clip | None:
        """Validates a sample and decodes the frames its windows need (None: it yields no window).

        ``currents``: cut only the windows ending at these frames (default: every window of the clip).
        """
        where = f"{ref.url}:{sample.key}"
        parsed = parse_clip(sample.key, sample.members, self.cameras, where)
        meta, calib, ego = parsed.meta, parsed.calib, parsed.ego
        all_currents = self.spec.current_frames(meta.frames, meta.fps)
        currents = (
            all_currents
            if currents is None
            else np.array(sorted(set(currents) & set(all_currents.tolist())), dtype=np.int64)
        )
        if len(currents) == 0:
            return None
        needed = sorted({int(f) for c in currents for f in window_frames(self.spec, int(c))})
        videos = [  # channels first once per decoded frame, not once per window that uses it
            np.ascontiguousarray(
                decode_video(parsed.videos[c], frames=meta.frames, keep=needed, where=f"{where}/{c}.mp4", size=self.image_size).transpose(0, 3, 1, 2)
            )
            for c in self.cameras
        ]  # each [len(needed), 3, H, W]
        intrinsics, cam_to_ego = _calib_tensors(calib, self.cameras, self.image_size)
        clip = _Clip(
            self.spec,
            meta,
            ego,
            currents,
            {f: i for i, f in enumerate(needed)},
            videos,
            intrinsics,
            cam_to_ego,
        )
        if self.augment is not None:
            augment, seed, epoch = self.augment, self.seed, self.epoch
            clip.augment = lambda images, current: augment(images, augment.rng(seed, epoch, meta.clip_id, current))
        return clip


class _Clip:
    """A decoded clip: cuts any of its windows."""

    def __init__(self, spec, meta, ego, currents, slot, videos, intrinsics, cam_to_ego) -> None:
        self.spec, self.meta, self.ego, self.currents = spec, meta, ego, currents
        self.slot, self.videos = slot, videos  # frame index -> row of each camera's decoded array
        self.intrinsics, self.cam_to_ego = intrinsics, cam_to_ego
        self.augment: Callable[[np.ndarray, int], np.ndarray] | None = None

    def window(self, current: int) -> dict:
        rows = [self.slot[int(f)] for f in window_frames(self.spec, current)]
        first = self.videos[0]
        images = np.empty((len(self.videos), len(rows), *first.shape[1:]), dtype=first.dtype)  # [N_cam, T, 3, H, W]
        for n, video in enumerate(self.videos):
            for t, row in enumerate(rows):  # plain contiguous copies (np.take with out= was slower in a profile)
                images[n, t] = video[row]
        if self.augment is not None:
            images = self.augment(images, current)
        ego_hist, future = ego_window(self.spec, self.ego, current, self.meta.fps)
        return {
            "images": torch.from_numpy(images),  # [N_cam, T, 3, H, W]
            "ego_hist": torch.from_numpy(ego_hist),
            "future": torch.from_numpy(future),
            "command": derive_command(future),
            "intrinsics": self.intrinsics,
            "cam_to_ego": self.cam_to_ego,
            "country": self.meta.country,
            "zone": self.meta.zone,
            "clip_id": self.meta.clip_id,
            "frame": current,
            "valid": True,
        }


class _SkipBudget:
    """Applies the bad-sample policy: ``fail`` raises at once; ``skip`` logs and counts, and raises
    once more than ``fraction`` of the worker's clips were skipped."""

    def __init__(self, policy: str, fraction: float, *, clips: int) -> None:
        self.policy, self.fraction, self.clips = policy, fraction, clips
        self.skipped = 0
        self.first: str | None = None

    def skip(self, exc: DataError, *, clips: int) -> None:
        if self.policy == "fail":
            raise exc
        self.skipped += clips
        self.first = self.first or str(exc)
        log.warning("skipped %d clip(s): %s", clips, exc)
        if self.skipped > self.fraction * self.clips:
            raise DataError(
                f"{self.summary()}, more than data.max_skip_fraction={self.fraction}; first: {self.first}"
            )

    def summary(self) -> str:
        return f"skipped {self.skipped} of {self.clips} clips"


def _block_needs(
    order: EpochOrder, batches: list[range], starts: list[int], block: int
) -> dict[tuple[int, int], set[int]]:
    """Current frames of the windows, per (shard, sample), that ``batches`` (ascending, first
    positions ``starts``) take from ``block``."""
    lo, hi = int(order.block_starts[block]), int(order.block_starts[block + 1])
    needs: dict[tuple[int, int], set[int]] = defaultdict(set)
    first = max(0, bisect.bisect_right(starts, lo) - 1)
    for r in batches[first:]:
        if r.start >= hi:
            break
        for p in range(max(r.start, lo), min(r.stop, hi)):
            w = order[p]
            needs[(w.shard, w.sample)].add(w.current)
    return needs


def _calib_tensors(
    calib: dict, cameras: list[str], image_size: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    Ks, Ts = [], []
    for c in cameras:
        K = calib[c]["K"].copy()
        if image_size is not None:  # pixel-centre convention: u' = (u + 0.5) * s - 0.5
            w, h = calib[c]["size"]
            for row, scale in ((0, image_size[1] / w), (1, image_size[0] / h)):
                K[row, :2] *= scale
                K[row, 2] = (K[row, 2] + 0.5) * scale - 0.5
        Ks.append(K)
        Ts.append(calib[c]["T_cam_to_ego"])
    return torch.tensor(np.stack(Ks), dtype=torch.float32), torch.tensor(np.stack(Ts), dtype=torch.float32)


def _filler(window: dict) -> dict:
    """A repeat of ``window`` made up by the stream: metrics drop it, training uses it."""
    return {**window, "valid": False}


def _shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Buffer shuffle: keep ``size`` items, emit a random one as each new one arrives."""
    buf: list[dict] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf
