"""The streaming loader: clips -> (rank, worker) -> residency check -> range read -> decode -> windows.

No whole shard is read: every clip's members the loader needs come by range reads through the
per-shard index (:class:`~fsdtrain.format.index.IndexedShards`).

Two ways to read, one reader of clips:

- **Training** (``order: streams``): the epoch's order is :class:`~fsdtrain.data.order.StreamOrder`,
  a function of (data, stream shape, seed, epoch) and the position only. Each (rank, worker) takes
  its micro-batches' positions, works out which clips they need and which frames of each, fetches
  each clip's members with range requests through the per-shard index (the next clips are fetched
  in a thread while the current ones decode), decodes the needed frames once, cuts the windows and
  drops the clip after its last window. When the run's layout matches the stream shape every clip
  is fetched and decoded by one worker per epoch, and a worker holds at most one group of clips per
  stream it owns, whatever the shard size. Every rank yields the same number of batches.
- **Every window once** (``order: clips``: validation, ``fsdtrain eval``): clips are dealt round robin
  over ranks and workers in manifest order, and each worker reads its clips the same way (range
  reads, prefetched, decoded once) and yields all their windows. For validation (``balance: pad``)
  each (rank, worker) tops its stream up with repeats of one of its own windows, marked
  ``valid: False``, until every worker emits only full batches and every rank as many batches as the
  longest one. Metrics drop the padding after gathering across ranks (``fsdtrain.train.module``), so
  they do not depend on the number of ranks or workers.

docs/data-loading.md explains the order, what a resume allows, and how to size workers and shards.
"""

from __future__ import annotations

import logging
import multiprocessing.util
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fsdtrain.data.augment import Augment
from fsdtrain.data.batch_ring import keep_freed_memory, quiet_handoff_resets
from fsdtrain.data.clip_buffers import ClipBuffers
from fsdtrain.data.order import ClipRef, ClipWindow, StreamOrder, StreamShape, batch_positions, worker_caps
from fsdtrain.data.prefetch import Prefetch
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format import schema
from fsdtrain.format.index import IndexedShards
from fsdtrain.format.manifest import Manifest, ShardInfo
from fsdtrain.format.samples import TarSample, check_same_size, manifest_expect, parse_clip
from fsdtrain.format.schema import FIXED_MEMBERS
from fsdtrain.format.video import FrameSizeError, decode_video
from fsdtrain.format.windows import WindowSpec, derive_command, ego_windows, window_frames
from fsdtrain.store.gate import ZoneGate

__all__ = [
    "Source", "StreamSpec", "FleetStream", "init_loader_worker", "window_in_seconds", "ERROR_POLICIES", "ORDERS", "BALANCES",
]  # fmt: skip

ERROR_POLICIES = ("fail", "skip")
ORDERS = ("streams", "clips")
BALANCES = ("none", "pad")
PREFETCH_CLIPS = 4  # clips fetched ahead of the one being decoded, per worker
log = logging.getLogger("fsdtrain.data")


def init_loader_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: creates this worker's multiprocessing temp dir now, lets
    its heap keep the memory it frees (:func:`~fsdtrain.data.batch_ring.keep_freed_memory`), and
    logs a batch hand-off the stopping training process broke off instead of printing a traceback
    (:func:`~fsdtrain.data.batch_ring.quiet_handoff_resets`).

    A worker passes batches to the training process as file descriptors over a unix socket in a
    ``pymp-*`` temp dir that multiprocessing removes at exit. Created lazily, that dir can be made
    by the queue's feeder thread while the worker is already running its exit handlers (e.g. after
    the parent was SIGKILLed), too late for its removal to be registered, and it stays behind.
    """
    multiprocessing.util.get_temp_dir()
    keep_freed_memory()
    quiet_handoff_resets()


@dataclass(frozen=True)
class Source:
    """One dataset a stream reads, with its mixing weight (as MosaicML Streaming's ``Stream``): the
    two travel together instead of in parallel lists.

    Args:
        manifest: the shard directory's manifest (checked against the site zone by the gate).
        weight: in the training order, how often each of its clips is used per epoch on average
            (``2`` twice, ``0.5`` a seeded half of them); None: no mixing asked for (every clip once).
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
    """How a stream reads its sources: order, balance across ranks, bad clips.

    Checked on construction (one line naming the bad value). The data module makes one for training
    (``order: streams``) and one for validation (``order: clips``, ``balance: pad``); ``fsdtrain
    eval`` reads with the defaults (every window once, one process).

    Args:
        order: ``streams`` (training: the seeded epoch order of :mod:`fsdtrain.data.order`, the same
            windows at the same positions on any number of ranks and workers, equal batch counts,
            each clip fetched and decoded once when the layout matches the shape) or ``clips``
            (every window exactly once, clips dealt over ranks and workers in manifest order).
        balance: with ``clips``: ``none`` (single-process evaluation: every window, no equalizing)
            or ``pad`` (every window once, and every (rank, worker) padded with ``valid: False``
            repeats of its own windows up to the longest rank's number of full batches: validation).
        seed: seed of the training order (and of the augmentations).
        streams: with ``streams``, the number of logical streams; None: fitted to the data and the
            run's layout (:meth:`~fsdtrain.data.order.StreamShape.fit`).
        on_error: bad clip policy: ``fail`` (raise) or ``skip`` (log it, count it, go on; the
            positions of a skipped clip are filled with repeats of the next good window, so every
            rank keeps its batch count).
        max_skip_fraction: with ``skip``, fail once more than this fraction of a worker's clips was skipped.
    """

    order: str = "clips"
    balance: str = "none"
    seed: int = 0
    streams: int | None = None
    on_error: str = "fail"
    max_skip_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.balance not in BALANCES:
            raise ConfigError(f"balance must be one of {BALANCES}, got {self.balance!r}")
        if self.balance == "pad" and self.order != "clips":
            raise ConfigError("balance='pad' (validation: every window once) needs order='clips'")
        if self.streams is not None and self.streams < 1:
            raise ConfigError(f"data.streams must be at least 1 (or empty: fitted to the run), got {self.streams}")
        if self.on_error not in ERROR_POLICIES:
            raise ConfigError(f"data.on_error must be one of {ERROR_POLICIES}, got {self.on_error!r}")
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
        window: how windows are cut; fields in frames (fsdtrain <= 0.2) are converted to seconds at
            the datasets' one shared rate (:func:`window_in_seconds`).
        cameras: camera names, in the order of the ``images`` axis.
        batch_size: per-rank micro batch.
        gate: the job's zone gate: every clip (and shard index) is checked against the site zone and
            recorded in the audit log before its first byte is requested.
        reading: order, balance across ranks and the bad clip policy.
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
            if reading.order != "streams":
                raise ConfigError("data.weights (mixing) applies to the training order; every-window-once reading (validation, eval) takes none")
        manifests = [s.manifest for s in sources]
        for m in manifests:
            missing = [c for c in cameras if c not in m.cameras]
            if missing:
                raise ConfigError(
                    f"{m.url}: cameras {missing} are not in this dataset (it has {m.cameras}); fix data.cameras"
                )
            gate.check_data(m.url, m.zone)
        self.manifests = manifests
        self.spec = window_in_seconds(window, manifests)
        self.reading = reading
        self.order = reading.order
        self.cameras = list(cameras)
        self.batch_size = batch_size
        self.pad = reading.balance == "pad"
        self.seed = reading.seed
        self.gate = gate
        self.image_size = tuple(image_size) if image_size else None
        self.on_error, self.max_skip_fraction = reading.on_error, reading.max_skip_fraction
        self.weights = [1.0 if s.weight is None else s.weight for s in sources] if weighted else None
        self.augment = augment if augment is not None and augment.enabled else None
        self.epoch = 0
        self.start_batch = 0  # micro-batches of this epoch already consumed (resume), order=streams
        self.rank = 0
        self.world_size = 1
        self.num_workers = 1
        self.shape: StreamShape | None = None  # order=streams: fitted by set_distributed, or a checkpoint's
        self._order: tuple[tuple, StreamOrder] | None = None
        self._readers: dict[int, IndexedShards] = {}
        self._buffers: ClipBuffers | None = None  # while iterating
        self._sizes: dict[str, tuple[tuple[int, int], str]] = {}  # camera -> (W, H) of the first clip read, and where
        self._clip_starts = [np.concatenate([[0], np.cumsum([s.samples for s in m.shards])]).astype(np.int64) for m in manifests]

    def set_distributed(self, rank: int, world_size: int, num_workers: int) -> None:
        """This process's place in the run; with ``order: streams`` also fits the stream shape to it."""
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        if self.order == "streams":
            self.shape = self._fit_shape()

    def _fit_shape(self) -> StreamShape:
        B, W, K = self.batch_size, self.world_size, self.num_workers
        n = self.reading.streams
        if n is None:
            return StreamShape.fit(self._clips_used(), micro_batch=B, world_size=W, workers=K)
        clips = self._clips_used()
        if n > clips:
            raise ConfigError(f"data.streams={n} is more than the {clips} clips the epoch uses (every stream needs clips of its own): lower it or leave it empty")
        slots = B * W * K  # one stream per window of every worker's micro batch, and turns of 1
        if n % slots == 0:
            return StreamShape(n, 1)
        if slots % n == 0 and B % (slots // n) == 0:
            return StreamShape(n, slots // n)
        raise ConfigError(
            f"data.streams={n} does not fit micro batch {B} x {W} ranks x {K} loader workers = {slots} stream slots: use a "
            f"multiple of {slots}, or a divisor of it whose turn {slots} / streams divides {B}, down to {W * K} (one stream "
            "per loader worker), or leave it empty"
        )

    def _clips_used(self) -> int:
        """Clips the training order uses per epoch (a weight below 1 uses a part of its source's)."""
        weights = self.weights or [1.0] * len(self.manifests)
        return sum(
            m.samples if w >= 1 else int(round(w * m.samples))
            for m, w in zip(self.manifests, weights)
            if self.spec.count(m.frames, m.fps)
        )

    def owned(self) -> bool:
        """Whether this run's layout reads each stream (so each clip) in exactly one loader worker."""
        assert self.shape is not None
        return self.shape.owned(micro_batch=self.batch_size, world_size=self.world_size, workers=self.num_workers)

    def stream_order(self) -> StreamOrder:
        """This epoch's training order (``order: streams``)."""
        if self.shape is None:
            self.shape = self._fit_shape()
        key = (self.shape, self.seed, self.epoch)
        if self._order is None or self._order[0] != key:
            weights = self.weights or [1.0] * len(self.manifests)
            sources = [([s.samples for s in m.shards], self.spec.current_frames(m.frames, m.fps), w) for m, w in zip(self.manifests, weights)]
            self._order = (key, StreamOrder(sources, self.shape, seed=self.seed, epoch=self.epoch))
        return self._order[1]

    def __len__(self) -> int:
        """Windows (padding included) this rank yields in a whole epoch, from the manifests alone (no data read)."""
        if self.order == "streams":
            return len(self.stream_order()) // (self.batch_size * self.world_size) * self.batch_size
        total = 0
        for (rank, _), (clips, cap) in self._caps().items():
            if rank == self.rank:
                total += cap if cap is not None else sum(c.windows for c in clips)
        return total

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise ConfigError(
                f"stream planned for {self.num_workers} workers but the DataLoader has {info.num_workers}"
            )
        self._buffers = ClipBuffers()  # this process's own (a worker's, after the fork)
        try:
            if self.order == "streams":
                yield from self._stream_iter(worker)
            else:
                yield from self._clips_iter(worker)
        finally:
            self._buffers = None

    # --- training: the stream order ------------------------------------------------------------------

    def _stream_iter(self, worker: int) -> Iterator[dict]:
        """Windows at this (rank, worker)'s positions of the epoch's order, from ``start_batch``.

        The worker lists the windows of all its micro-batches first, so it knows for every clip the
        frames its windows need and the last position that uses it: a clip is fetched (range reads,
        :data:`PREFETCH_CLIPS` ahead in a thread) and decoded once, when first needed, and dropped
        after its last window. Under ``on_error: skip`` a bad clip's windows are replaced by repeats
        of the next good window, so every position still yields a window (batch counts stay equal).
        """
        order = self.stream_order()
        batches = batch_positions(
            len(order), micro_batch=self.batch_size, world_size=self.world_size, rank=self.rank,
            workers=self.num_workers, worker=worker, start_batch=self.start_batch,
        )  # fmt: skip
        refs: list[ClipWindow] = [order[p] for positions in batches for p in positions]
        needs: dict[tuple[int, int], set[int]] = defaultdict(set)
        last: dict[tuple[int, int], int] = {}
        for i, w in enumerate(refs):
            needs[(w.source, w.clip)].add(w.current)
            last[(w.source, w.clip)] = i
        skips = _SkipBudget(self.on_error, self.max_skip_fraction, clips=len(needs))
        fetched = Prefetch(self._fetch_clip, list(needs), depth=PREFETCH_CLIPS)  # first-use order
        held: dict[tuple[int, int], _Clip | DataError] = {}
        owed, good = 0, None
        try:
            for i, w in enumerate(refs):
                key = (w.source, w.clip)
                if key not in held:
                    held[key] = self._open_clip(fetched, key, needs[key], skips)
                clip = held.pop(key) if last[key] == i else held[key]
                if isinstance(clip, DataError):
                    owed += 1  # made up with the next good window
                    continue
                good = clip.window(w.current, own=last[key] == i)  # a dropped clip is not kept by its last window
                yield good
                for _ in range(owed):
                    yield _filler(good)
                owed = 0
        finally:
            fetched.close()
        if owed:
            if good is None:
                raise DataError(f"rank {self.rank} worker {worker}: every clip was skipped ({skips.summary()})")
            for _ in range(owed):
                yield _filler(good)

    def _open_clip(self, fetched: Prefetch, key: tuple[int, int], currents: set[int], skips: _SkipBudget) -> _Clip | DataError:
        """A decoded clip, or the error that made the skip policy drop it."""
        try:
            url, sample = fetched.get(key)
            clip = self._load_clip(self.manifests[key[0]], url, sample, currents=currents)
        except DataError as exc:
            skips.skip(exc, clips=1)
            return exc
        assert clip is not None, "the order only holds windows that clips yield"
        return clip

    def _fetch_clip(self, key: tuple[int, int]) -> tuple[str, TarSample]:
        """The members of one clip the loader reads (metadata and its cameras), by range reads through
        the shard's index; the gate checks and audits every request."""
        source, clip = key
        m = self.manifests[source]
        i = int(np.searchsorted(self._clip_starts[source], clip, side="right")) - 1
        shard: ShardInfo = m.shards[i]
        if source not in self._readers:
            self._readers[source] = IndexedShards(m, self.gate)
        reader, sample = self._readers[source], clip - int(self._clip_starts[source][i])
        names = [*FIXED_MEMBERS, *(f"{c}.mp4" for c in self.cameras)]
        key, members = reader.read_members(shard, sample, names)
        for name in reader.index(shard).samples[sample].members:  # the members not read must still be the schema's
            try:
                schema.validate_member(key, name, None)
            except DataError as exc:
                raise DataError(f"{m.shard_url(shard)}:{key}: {exc}") from None
        return m.shard_url(shard), TarSample(key, members)

    # --- every window once: clips dealt over ranks and workers ---------------------------------------

    def _clips(self) -> list[ClipRef]:
        """Every clip of every manifest, in manifest order."""
        return [
            ClipRef(s, c, self.spec.count(m.frames, m.fps)) for s, m in enumerate(self.manifests) for c in range(m.samples)
        ]

    def _caps(self):
        return worker_caps(self._clips(), world_size=self.world_size, workers=self.num_workers, batch_size=self.batch_size, pad=self.pad)

    def _clips_iter(self, worker: int) -> Iterator[dict]:
        clips, cap = self._caps()[(self.rank, worker)]
        skips = _SkipBudget(self.on_error, self.max_skip_fraction, clips=len(clips))
        recent: list[dict] = []
        n = 0
        fetched = Prefetch(self._fetch_clip, [(c.source, c.clip) for c in clips], depth=PREFETCH_CLIPS)
        try:
            for ref in clips:
                try:
                    url, sample = fetched.get((ref.source, ref.clip))
                    clip = self._load_clip(self.manifests[ref.source], url, sample)
                except DataError as exc:
                    skips.skip(exc, clips=1)
                    continue
                currents = clip.currents if clip is not None else ()
                for k, current in enumerate(currents):
                    kept = skips.skipped or not recent  # keep one window to pad with, more once clips were skipped
                    window = clip.window(int(current), own=kept or k == len(currents) - 1)  # not keeping its clip
                    yield window
                    n += 1
                    if kept:
                        recent = (recent + [window])[-_RECENT:]
        finally:
            fetched.close()
        if cap is not None and n < cap:
            # skipped clips or padding left this worker short: repeat its own windows so that every
            # rank still yields the same number of batches (a short rank would hang the others' collectives)
            if not recent:
                raise DataError(
                    f"rank {self.rank} worker {worker}: every clip was skipped ({skips.summary()})"
                )
            short = min(cap, sum(c.windows for c in clips)) - n
            if short > 0:
                log.warning(
                    "rank %d worker %d: %d windows repeated to make up for skipped clips", self.rank, worker, short
                )
            for i in range(cap - n):
                yield _filler(recent[i % len(recent)])

    # --- one clip ------------------------------------------------------------------------------------

    def _load_clip(self, m: Manifest, url: str, sample: TarSample, currents: set[int] | None = None) -> _Clip | None:
        """Validates a sample against the schema and its manifest ``m`` and decodes the frames its
        windows need (None: it yields no window).

        ``currents``: cut only the windows ending at these frames (default: every window of the clip).
        """
        where = f"{url}:{sample.key}"
        # the clip's own meta.json against the site zone (a ResidencyError stops the job, skip or not:
        # a shard relabelled under another zone's manifest) and against the manifest the order was
        # planned from (a DataError, skippable)
        expect = manifest_expect(m, where, site_zone=self.gate.site_zone)
        parsed = parse_clip(sample.key, sample.members, self.cameras, where, expect=expect)
        meta, calib, ego = parsed.meta, parsed.calib, parsed.ego
        if self.image_size is None:  # a batch stacks the clips: a DataError here, not a torch.stack error
            fix = "set data.image_size to train on clips of several resolutions (docs/data-format.md)"
            check_same_size(self._sizes, parsed, self.cameras, where, fix)
        all_currents = self.spec.current_frames(meta.frames, meta.fps)
        currents = (
            all_currents
            if currents is None
            else np.array(sorted(set(currents) & set(all_currents.tolist())), dtype=np.int64)
        )
        if len(currents) == 0:
            return None
        needed = sorted({int(f) for c in currents for f in window_frames(self.spec, int(c), meta.fps)})
        frames = self._decode_cameras(parsed, needed, where)  # [len(needed), N_cam, 3, H, W]
        intrinsics, cam_to_ego = _calib_tensors(calib, self.cameras, self.image_size)
        clip = _Clip(self.spec, meta, ego, currents, {f: i for i, f in enumerate(needed)}, frames, intrinsics, cam_to_ego)
        if self.augment is not None:
            augment, seed, epoch = self.augment, self.seed, self.epoch
            clip.augment = lambda images, current: augment(images, augment.rng(seed, epoch, meta.clip_id, current))
        return clip

    def _decode_cameras(self, parsed, needed: list[int], where: str) -> np.ndarray:
        """The ``needed`` frames of every camera, channels first, frame-major: ``[len(needed), N_cam, 3,
        H, W]``, each frame converted once (not once per window that uses it) and written in place,
        so that a window's frames are a view of consecutive rows (:meth:`_Clip.window`)."""
        sizes = {c: tuple(parsed.calib[c]["size"]) for c in self.cameras}  # (W, H)
        if self.image_size is None and len(set(sizes.values())) > 1:
            said = ", ".join(f"{c} {w}x{h}" for c, (w, h) in sizes.items())
            raise DataError(f"{where}: calib.json sizes differ between cameras ({said}): set data.image_size to train on cameras of several resolutions (docs/data-format.md)")
        height, width = self.image_size if self.image_size is not None else sizes[self.cameras[0]][::-1]
        shape = (len(self.cameras), 3, height, width)
        frames = self._buffers.take(len(needed), shape) if self._buffers is not None else np.empty((len(needed), *shape), dtype=np.uint8)
        for n, c in enumerate(self.cameras):
            try:
                decode_video(
                    parsed.videos[c], frames=parsed.meta.frames, keep=needed, where=f"{where}/{c}.mp4",
                    size=self.image_size, channels_first=True, out=frames[:, n],
                )  # fmt: skip
            except FrameSizeError as exc:
                raise DataError(f"{where}/{c}.mp4: frames are {exc.width}x{exc.height}, calib.json {c}.size says {width}x{height}") from None
        return frames


class _Clip:
    """A decoded clip: cuts any of its windows."""

    def __init__(self, spec, meta, ego, currents, slot, frames, intrinsics, cam_to_ego) -> None:
        self.spec, self.meta, self.ego, self.currents = spec, meta, ego, currents
        self.slot, self.frames = slot, frames  # frame index -> row of frames [rows, N_cam, 3, H, W]
        self.intrinsics, self.cam_to_ego = intrinsics, cam_to_ego
        self.augment: Callable[[np.ndarray, int], np.ndarray] | None = None
        # every window's ego history and future at once: [W, history, 6], [W, future_steps, 3]
        self._ego_row = {int(c): i for i, c in enumerate(currents)}
        self._ego_hist, self._future = ego_windows(spec, ego, currents, meta.fps)

    def window(self, current: int, *, own: bool = False) -> dict:
        """The window ending at ``current``. Its images view the clip's frames where its frames are
        evenly spaced rows (the collate copies them into the batch: one copy of each pixel); ``own``:
        a copy of its own, so that keeping the window does not keep the whole clip."""
        rows = [self.slot[int(f)] for f in window_frames(self.spec, current, self.meta.fps)]
        step = rows[1] - rows[0] if len(rows) > 1 else 1
        if step > 0 and rows == list(range(rows[0], rows[-1] + 1, step)):
            images = self.frames[rows[0] : rows[-1] + 1 : step].swapaxes(0, 1)  # [N_cam, T, 3, H, W], a view
        else:
            images = self.frames[rows].swapaxes(0, 1)  # a copy, frame-major
        if own:
            images = np.ascontiguousarray(images)
        if self.augment is not None:
            images = self.augment(images, current)
        row = self._ego_row[int(current)]
        ego_hist, future = self._ego_hist[row], self._future[row]
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


def window_in_seconds(window: WindowSpec, manifests: list[Manifest]) -> WindowSpec:
    """``window`` in seconds for these datasets (fields in frames converted at their one shared rate),
    checked against every dataset's rate: one line naming a dataset whose frames cannot be placed
    within ``window.tolerance_s`` of the history times."""
    rates = {_dataset(m): m.fps for m in manifests}
    spec = window.at_rates(rates)
    for name, fps in rates.items():
        spec.history_offsets(fps, where=f"data: {name}")
    return spec


def _dataset(m: Manifest) -> str:
    return f"{m.dataset}/{m.split}/{m.country}"


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


_RECENT = 64  # windows a worker keeps to repeat once clips were skipped
