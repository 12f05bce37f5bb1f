"""``FleetDataModule``: the LightningDataModule over sharded fleet data (docs/architecture.md)."""

from __future__ import annotations

import logging
import os

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from fsdtrain.batching import BatchPlan
from fsdtrain.data.augment import Augment
from fsdtrain.data.batch_ring import RingLoader
from fsdtrain.data.order import StreamShape
from fsdtrain.data.stream import FleetStream, Source, StreamSpec, init_loader_worker
from fsdtrain.errors import ConfigError
from fsdtrain.format.manifest import Manifest, load_manifest
from fsdtrain.format.schema import DEFAULT_CAMERAS, MAX_IMAGE_SIDE, is_int
from fsdtrain.format.windows import WindowSpec
from fsdtrain.residency import resolve_site_zone
from fsdtrain.store.gate import AuditLog, ZoneGate

__all__ = ["FleetDataModule", "load_manifests"]

log = logging.getLogger(__name__)


def load_manifests(urls: list[str], gate: ZoneGate) -> list[Manifest]:
    """Manifests of the given shard directories, each checked by ``gate``: every URL's bucket zone
    first (no request leaves for any of them otherwise), then each manifest's own zone."""
    gate.check_urls(urls)
    return [load_manifest(url, gate) for url in urls]


class FleetDataModule(pl.LightningDataModule):
    """Batches of windows streamed from shard directories (``<root>/<dataset>/<split>/<country>``).

    Args:
        train: shard directory URLs to train on (s3://, file:// or paths).
        val: shard directory URLs to validate on: every window exactly once on any number of ranks and
            workers (ranks are padded to equal batch counts with repeats that metrics drop); needs at
            least as many clips as ranks.
        cameras: camera names, in model order.
        window: how windows are cut from clips, in seconds (history and its spacing, stride, horizon...),
            so datasets at different frame rates mix with the same meaning; ``frame_stride`` /
            ``window_stride`` in frames (deprecated) are converted at the data's one rate.
        batch_size: micro batch per rank.
        global_batch_size: windows per optimizer step over all ranks; empty means ``batch_size x
            trainer.accumulate_grad_batches x world size``. When set, the accumulation is derived from it
            (it must divide by ``batch_size x world size``), so one config keeps its optimisation on any
            number of ranks (fsdtrain/batching.py).
        num_workers: loader worker processes per rank (0 = load in the training process).
        seed: seed of the data order.
        image_size: ``[H, W]`` to resize frames to; empty keeps the stored size.
        site_zone: zone this job runs in; empty means ``$FSDTRAIN_SITE_ZONE`` or ``global``.
        audit_log: JSONL file that records every shard or clip requested (url, sample, byte range, rank,
            process); empty disables it.
        on_error: what a corrupt or invalid clip does: ``fail`` the run, or ``skip`` it (logged and counted).
        max_skip_fraction: with ``skip``, the run still fails once more than this fraction of clips was skipped.
        order: training order: ``streams``, the only one (docs/data-loading.md). Every clip belongs to one
            of ``streams`` logical streams per epoch; the windows at each position depend on (data,
            seed, epoch, streams) only, so a run resumes mid-epoch with exactly the unseen windows on any
            number of ranks or workers (same windows per micro batch over all ranks), and each clip is
            fetched (range reads of its members) and decoded by one loader worker per epoch when the
            layout owns the streams. ``global`` and ``sharded`` (fsdtrain 0.1) are gone.
        streams: logical streams of the training order; empty: fitted to the data and to the first
            run's layout (one per window of every worker's micro batch, fewer when the data has under
            4 clips per stream) and kept in its checkpoints. A run owns the streams (every clip read
            once) when ``turn`` divides ``batch_size`` and ``batch_size x ranks x num_workers / turn``
            divides ``streams`` (docs/data-loading.md).
        block_shards: no longer used (fsdtrain 0.1's ``global`` order); warns when set.
        shuffle_buffer: no longer used (fsdtrain 0.1's ``sharded`` order); warns when set.
        weights: one weight per ``train`` entry: how often each of its clips is used per epoch on
            average (e.g. ``[1.0, 0.5]`` halves the second dataset's share).
        country_weights: sampling weight per country of ``train`` (e.g.
            ``{US: 1.0, DE: 2.0}``; unlisted countries 1.0), multiplied into ``weights``: multi-country
            pretraining with each country's share set once, whatever its datasets. Countries that
            ``train`` lacks are reported and unused (a shared config on a run with fewer countries).
        augment: training augmentations (colour jitter, camera dropout), in the loader workers,
            deterministic per window given the seed and epoch; validation is never augmented.
    """

    def __init__(
        self,
        *,
        train: list[str] | None = None,
        val: list[str] | None = None,
        cameras: list[str] | None = None,
        window: WindowSpec = WindowSpec(),  # noqa: B008 (frozen dataclass)
        batch_size: int = 4,
        global_batch_size: int | None = None,
        num_workers: int = 1,
        shuffle_buffer: int | None = None,
        seed: int = 0,
        image_size: list[int] | None = None,
        site_zone: str | None = None,
        audit_log: str | None = None,
        on_error: str = "fail",
        max_skip_fraction: float = 0.01,
        order: str = "streams",
        streams: int | None = None,
        block_shards: int | None = None,
        weights: list[float] | None = None,
        country_weights: dict[str, float] | None = None,
        augment: Augment = Augment(),  # noqa: B008 (frozen dataclass)
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if global_batch_size is not None and global_batch_size < 1:
            raise ConfigError(f"data.global_batch_size must be >= 1 (or empty), got {global_batch_size}")
        if image_size is not None and (len(image_size) != 2 or not all(is_int(v, 1, MAX_IMAGE_SIDE) for v in image_size)):
            raise ConfigError(f"data.image_size must be [H, W], each a whole number of pixels in [1, {MAX_IMAGE_SIDE}] (or empty: the stored size), got {image_size}")
        self.train_urls = list(train or [])
        self.val_urls = list(val or [])
        self.cameras = list(cameras or DEFAULT_CAMERAS)
        self.window = window
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.image_size = tuple(image_size) if image_size else None
        self.site_zone = resolve_site_zone(site_zone)  # a malformed zone fails here, at construction
        self.audit_log = audit_log
        self.on_error, self.max_skip_fraction = on_error, max_skip_fraction
        if order in ("global", "sharded"):
            raise ConfigError(
                f"data.order: {order} was replaced by `streams` (every clip fetched and decoded once, resumable on any "
                "number of ranks and workers; docs/data-loading.md): remove the setting"
            )
        if order != "streams":
            raise ConfigError(f"data.order must be streams, got {order!r}")
        for name, value in (("block_shards", block_shards), ("shuffle_buffer", shuffle_buffer)):
            if value is not None:
                log.warning(f"data.{name} is no longer used (the streams order replaced it; docs/data-loading.md): remove it")
        self.order, self.streams = order, streams
        self.weights = list(weights) if weights is not None else None
        self.country_weights = dict(country_weights) if country_weights is not None else None
        self.augment = augment
        self.train_stream: FleetStream | None = None
        self.val_stream: FleetStream | None = None
        self.batch_plan: BatchPlan | None = None  # handed over by the CLI once the world size is known
        self.resuming = False  # set by the CLI for `fit --ckpt_path`: the order's shape then comes from the checkpoint

    @property
    def manifests(self) -> list[Manifest]:
        return [s_m for s in (self.train_stream, self.val_stream) if s is not None for s_m in s.manifests]

    def _stream(self, urls: list[str], *, train: bool) -> FleetStream:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        job = os.environ.get("FSDTRAIN_JOB", "fsdtrain")
        gate = ZoneGate(self.site_zone, audit=AuditLog(self.audit_log, job=job, rank=rank) if self.audit_log else None)
        manifests = load_manifests(urls, gate)
        if not train:
            # validation pads each rank with repeats of its own windows (every window is read once): a rank
            # without a clip has none to repeat. Workers without one are fine: the others pad for them.
            clips = sum(m.samples for m in manifests)
            if clips < world:
                raise ConfigError(
                    f"data.val has {clips} clip(s), fewer than the {world} ranks (each rank validates on its own clips); "
                    "add clips to the val split or validate on fewer ranks"
                )
        reading = StreamSpec(
            order="streams" if train else "clips",
            balance="none" if train else "pad",  # every rank the same number of batches: a short one would hang the collectives
            seed=self.seed,
            streams=self.streams if train else None,
            on_error=self.on_error,
            max_skip_fraction=self.max_skip_fraction,
        )
        sources = Source.all(manifests, self._train_weights(manifests) if train else None)
        stream = FleetStream(
            sources, self.window, cameras=self.cameras, batch_size=self.batch_size, gate=gate, reading=reading,
            image_size=self.image_size, augment=self.augment if train else None,
        )  # fmt: skip
        resuming = train and self.resuming
        try:
            stream.set_distributed(rank, world, self.num_workers)
        except ConfigError:
            if not resuming:
                raise
            return stream  # data.streams set for another layout: the checkpoint's shape comes in load_state_dict
        if train and not resuming:
            self._say_shape(stream)
        if len(stream) == 0:
            which = "train" if train else "val"
            raise ConfigError(
                f"data.{which}: not enough windows for one batch of {self.batch_size} on each of {world} ranks; "
                + "add clips, or lower data.batch_size"
            )
        return stream

    @staticmethod
    def _say_shape(stream: FleetStream) -> None:
        """Logs the training order's shape, and warns when this run's layout shares streams between workers."""
        if rank_zero_only.rank != 0:
            return
        shape, layout = stream.shape, f"{stream.world_size} rank(s) x {stream.num_workers} loader worker(s) x micro batch {stream.batch_size}"
        if stream.owned():
            log.info(f"data order: {shape.streams} streams, turns of {shape.turn} window(s); {layout}: each clip read once")
        else:
            log.warning(
                f"data order: {shape.streams} streams, turns of {shape.turn} window(s) (from the checkpoint) do not divide over {layout}: "
                "the windows are the same, but clips whose stream is shared are fetched and decoded by each worker that needs them"
            )

    def _train_weights(self, manifests: list[Manifest]) -> list[float] | None:
        """Per ``train`` manifest: ``weights`` x its country's ``country_weights``."""
        if self.country_weights is None:
            return self.weights
        countries = sorted({m.country for m in manifests})
        unknown = sorted(set(self.country_weights) - set(countries))
        if unknown:  # a shared config's weights, on a run that trains on fewer countries: said, not fatal
            if rank_zero_only.rank == 0:
                log.warning(f"data.country_weights: {', '.join(unknown)} not in data.train (countries {', '.join(countries)}); unused")
        if any(w < 0 for w in self.country_weights.values()):
            raise ConfigError(f"data.country_weights must be >= 0, got {self.country_weights}")
        base = self.weights if self.weights is not None else [1.0] * len(manifests)
        if len(base) != len(manifests):
            return base  # Source.all reports the length mismatch of data.weights
        weights = [w * self.country_weights.get(m.country, 1.0) for w, m in zip(base, manifests)]
        return None if self.weights is None and all(w == 1.0 for w in weights) else weights  # None: no mixing asked for

    def setup(self, stage: str) -> None:
        if stage == "fit":
            if not self.train_urls:
                raise ConfigError("data.train is empty: give the shard directory URLs to train on")
            self.train_stream = self._stream(self.train_urls, train=True)
        if stage in ("fit", "validate") and self.val_urls:
            self.val_stream = self._stream(self.val_urls, train=False)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Where the next training iterator starts: ``epoch``, after ``batch`` micro-batches (resume)."""
        if self.train_stream is not None:
            self.train_stream.epoch = epoch
            self.train_stream.start_batch = batch

    def _windows_per_micro_batch(self) -> int:
        """Windows in one micro batch over all ranks: how far the data position moves per micro-batch step."""
        if self.batch_plan is not None:
            return self.batch_plan.windows_per_micro_batch
        return self.batch_size * (self.trainer.world_size if self.trainer is not None else 1)

    def _datasets(self) -> list[str]:
        return [m.digest() for m in self.train_stream.manifests] if self.train_stream is not None else []

    def state_dict(self) -> dict:
        """The data position saved in every checkpoint: order and its shape, seed, epoch, windows of
        the epoch already trained on (whatever the ranks and workers), the windows per micro batch over
        all ranks and the data."""
        if self.train_stream is None or self.trainer is None:
            return {}
        # micro-batches per rank: Lightning's loop internals, listed in fsdtrain/train/lightning_internals.py
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "order": self.train_stream.order,
            "streams": self.train_stream.shape.streams,
            "turn": self.train_stream.shape.turn,
            "seed": self.seed,
            "epoch": self.trainer.current_epoch,
            "windows_done": done * self._windows_per_micro_batch(),
            "windows_per_micro_batch": self._windows_per_micro_batch(),
            "datasets": self._datasets(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continues from a checkpoint's data state, checked against this run's data and batch.

        Applied at once: Lightning restores the datamodule before it creates the first training
        iterator (which forks the loader workers), and the workers must start at this position.
        """
        if not state or self.train_stream is None:
            return
        if state["datasets"] != self._datasets():
            raise ConfigError("the checkpoint was trained on other data.train manifests (their digests differ); resume with the same data.train")
        if state["order"] != self.train_stream.order:
            raise ConfigError(
                f"the checkpoint's data order is {state['order']} (fsdtrain 0.1), which this version no longer reads: "
                "resume with fsdtrain 0.1, or start a new run from its weights (fsdtrain finetune --from)"
            )
        shape = StreamShape(int(state["streams"]), int(state["turn"]))
        if self.streams is not None and self.streams != shape.streams:
            raise ConfigError(
                f"data.streams={self.streams}, but the checkpoint's order has {shape.streams} streams: leave data.streams empty "
                "to continue the checkpoint's order"
            )
        if state["seed"] != self.seed:
            raise ConfigError(
                f"the checkpoint's data order has seed {state['seed']}, this run's {self.seed}; resume with data.seed {state['seed']}"
            )
        step = self._windows_per_micro_batch()
        # checkpoints of fsdtrain <= 0.1 called this quantity "global_batch" (read for one release)
        saved = state.get("windows_per_micro_batch", state.get("global_batch"))
        if state["windows_done"] % step:
            raise ConfigError(
                f"the checkpoint stopped after {state['windows_done']} windows of epoch {state['epoch']} ({saved} windows "
                f"per micro batch over all ranks), not a whole number of this run's micro batches of {step} windows "
                f"(data.batch_size {self.batch_size} x {step // self.batch_size} ranks): "
                "resume with the checkpoint's data.batch_size x trainer.devices x trainer.num_nodes"
            )
        self.train_stream.shape = shape
        self._say_shape(self.train_stream)
        self.set_position(state["epoch"], state["windows_done"] // step)

    def _loader(self, stream: FleetStream) -> RingLoader:
        # workers hand batches over through reused shared buffers (fsdtrain/data/batch_ring.py)
        return RingLoader(
            stream, batch_size=self.batch_size, num_workers=self.num_workers, persistent_workers=False, worker_init_fn=init_loader_worker
        )

    def train_dataloader(self) -> RingLoader:
        assert self.train_stream is not None, "setup('fit') first"
        return self._loader(self.train_stream)

    def val_dataloader(self) -> RingLoader | list:
        if self.val_stream is None:
            return []
        return self._loader(self.val_stream)
