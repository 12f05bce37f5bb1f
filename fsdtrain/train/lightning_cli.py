"""``FleetCLI``: LightningCLI for ``fsdtrain fit|validate|test`` and ``fsdtrain finetune``.

Adds to LightningCLI what every run needs and a YAML should not repeat: ``--workdir`` (checkpoints,
weights, audit log, W&B files), ``--site.zone``, ``--wandb.*``, ``--checkpoint.*``, the W&B logger in
offline mode by default, and the callbacks (checkpoints, weights export, throughput, run info,
``<workdir>/val_metrics.json`` after every validation; W&B tables, pictures and model artifacts from
``wandb_log.py``). DeepSpeed strategy names are registered so they also run on CPU.

Values that travel between config groups are linked (``link_arguments``), never copied by hand: the
model's input shapes come from the data config (``data.cameras``, ``data.window``) and the data's
site zone from ``site.zone``. The batch plan (:mod:`fsdtrain.batching`) is made once, when the
Trainer exists, and handed to the data module and the DeepSpeed strategy.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from fsdtrain.batching import plan_batches
from fsdtrain.data.datamodule import FleetDataModule, load_manifests
from fsdtrain.data.stream import window_in_seconds
from fsdtrain.errors import ConfigError
from fsdtrain.format.windows import WindowSpec
from fsdtrain.residency import resolve_site_zone
from fsdtrain.store.gate import ZoneGate
from fsdtrain.train.callbacks import (
    ExportWeights,
    OptimizerStats,
    ProgressLines,
    RunInfo,
    StreamEpoch,
    Throughput,
    ValidationReport,
)
from fsdtrain.train.checkpoints import CheckpointConfig, FleetCheckpoint
from fsdtrain.train.cluster import cluster_setup, detect_cluster
from fsdtrain.train.finite import FiniteTraining
from fsdtrain.train.lightning_internals import own_stop_signals, subcommand_parser
from fsdtrain.train.module import DrivingModule
from fsdtrain.train.safe_resume import check_checkpoint_files
from fsdtrain.train.strategies import STRATEGY_NAMES, FleetDeepSpeedStrategy, register_strategies
from fsdtrain.train.wandb_log import (
    FleetWandbLogger,
    WandbReview,
    WandbTarget,
    resolve_settings,
    stage_artifacts_in,
    sync_line,
)
from fsdtrain.weights.checkpoint_files import (
    META_NAME,
    last_checkpoint,
    read_checkpoint_metadata,
    resolve_checkpoint,
    sidecar,
)
from fsdtrain.weights.files import read_metadata

__all__ = ["WandbConfig", "SiteConfig", "FleetCLI", "WEIGHTS_NAME", "VAL_METRICS_NAME"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
VAL_METRICS_NAME = "val_metrics.json"


@dataclass
class WandbConfig:
    """Weights & Biases settings. An unset ``mode``, ``project``, ``entity`` or ``dir`` is read from W&B's
    variable (``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_DIR``), else the default given
    here (docs/wandb.md, Settings and precedence).

    Args:
        mode: ``offline`` (run files on disk, upload later with ``wandb sync``), ``online``, or ``disabled``
            (CSV only). Unset: ``$WANDB_MODE``, else ``offline``.
        project: W&B project. Unset: ``$WANDB_PROJECT``, else ``fsdtrain``.
        entity: W&B team or user the run belongs to. Unset: ``$WANDB_ENTITY``, else the logged-in user's default.
        group: run group (e.g. one experiment's pretrain, finetune and eval runs).
        name: run name; empty lets W&B choose.
        tags: run tags, e.g. ``[cn, ablation]`` (filters in the W&B run table).
        notes: a line about the run, shown beside it in W&B.
        dir: folder that holds ``wandb/`` (run files and staged artifact files). Unset: ``$WANDB_DIR``, else ``--workdir``.
        base_url: self-hosted W&B server (e.g. one inside the site's zone).
        zone: residency zone the ``base_url`` server is inside (e.g. ``cn``); camera frames go only to a server
            in their own zone (docs/residency.md). Empty: the server counts as ``global``.
        images: validation windows drawn after each validation (bird's-eye plots; camera frames where allowed).
    """

    mode: str | None = None
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] | None = None
    notes: str | None = None
    dir: str | None = None
    base_url: str | None = None
    zone: str | None = None
    images: int = 4


@dataclass
class SiteConfig:
    """Where this job runs.

    Args:
        zone: residency zone of the site (``global``, ``cn``...); empty means ``$FSDTRAIN_SITE_ZONE`` or ``global``.
    """

    zone: str | None = None


def _check_strategy(strategy) -> None:
    """A strategy name Lightning does not know fails here, in one line with the names it knows, before any work."""
    if not isinstance(strategy, str):
        return  # a Strategy given by class path: LightningCLI has built it
    known = ["auto", *StrategyRegistry.available_strategies()]
    if strategy.lower() not in known:
        raise ConfigError(
            f"--trainer.strategy {strategy!r} is not a strategy; use one of auto, {', '.join(STRATEGY_NAMES)} "
            "(or another strategy name Lightning registers; docs/multi-node.md)"
        )


class FleetCLI(LightningCLI):
    """LightningCLI with fsdtrain's run conventions; ``job_type`` is ``pretrain`` or ``finetune``.

    Uses LightningCLI's private ``_parser`` (listed, with why, in :mod:`fsdtrain.train.lightning_internals`)."""

    def __init__(self, args: list[str], *, job_type: str = "pretrain") -> None:
        self.job_type = job_type
        register_strategies()
        # fsdtrain passes the (possibly rewritten) command line as args on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        super().__init__(
            DrivingModule,
            FleetDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            seed_everything_default=0,
        )

    def parse_arguments(self, parser, args) -> None:
        """Parses as LightningCLI does; a ``--ckpt_path`` file (which LightningCLI opens next for its
        hyperparameters) is read first without unpickling, so a crafted one is refused in one line."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_files(ckpt_path)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--workdir", type=str, default="runs/fsdtrain", help="Run directory: checkpoints, weights, audit log, W&B files.")
        parser.add_dataclass_arguments(WandbConfig, "wandb")
        parser.add_dataclass_arguments(SiteConfig, "site")
        parser.add_dataclass_arguments(CheckpointConfig, "checkpoint")
        # one source of truth for each value: the model reads the data's shapes, the data the site's zone
        parser.link_arguments("data.cameras", "model.cameras", apply_on="parse")
        for field in dataclasses.fields(WindowSpec):  # field by field: jsonargparse links leaves, not whole groups
            parser.link_arguments(f"data.window.{field.name}", f"model.window.{field.name}", apply_on="parse")
        parser.link_arguments("site.zone", "data.site_zone", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        workdir = Path(cfg.workdir)
        wb = cfg.wandb
        self._wandb = resolve_settings(mode=wb.mode, project=wb.project, entity=wb.entity, dir=wb.dir, default_dir=workdir)
        _check_strategy(cfg.trainer.strategy)
        cfg.trainer.default_root_dir = str(workdir)
        if not cfg.data.audit_log:
            cfg.data.audit_log = str(workdir / "audit.jsonl")
        self._cfg = cfg
        self._wandb_target = WandbTarget.resolve(
            mode=self._wandb.mode, base_url=cfg.wandb.base_url, zone=cfg.wandb.zone, site_zone=resolve_site_zone(cfg.site.zone)
        )
        self._window_in_seconds(cfg, self._preflight(cfg))
        if "ckpt_path" in cfg:
            cfg.ckpt_path = self._ckpt_path(cfg.ckpt_path, workdir)
        self._check_weights_zones(cfg)
        if "weights_only" in cfg:  # checkpoints never unpickle (docs/checkpoints.md); DeepSpeed's: fsdtrain/train/safe_resume.py
            if cfg.weights_only is False:
                raise ConfigError("--weights_only false: fsdtrain never unpickles checkpoints (docs/checkpoints.md); leave --weights_only out")
            cfg.weights_only = True

    @staticmethod
    def _preflight(cfg) -> list:
        """Fails on unreadable data and residency violations before any process, logger or model starts; returns the manifests."""
        return load_manifests(list(cfg.data.train or []) + list(cfg.data.val or []), ZoneGate(cfg.site.zone))

    @staticmethod
    def _window_in_seconds(cfg, manifests: list) -> None:
        """``data.window`` (and the model's copy, which the weights metadata records) in seconds: fields in
        frames (fsdtrain <= 0.2) converted at the data's one rate, with a warning saying what to write
        instead; several rates fail in one line (:func:`fsdtrain.data.stream.window_in_seconds`)."""
        if not manifests:
            return
        names = [f.name for f in dataclasses.fields(WindowSpec)]
        given = WindowSpec(**{n: getattr(cfg.data.window, n) for n in names})
        spec = window_in_seconds(given, manifests)
        if given.legacy and rank_zero_only.rank == 0:
            fps = manifests[0].fps
            log.warning(f"data.window.frame_stride / window_stride count frames (deprecated): at the data's {fps:g} fps write {given.suggestion(fps, 'data.window.')} instead")
        for group in (cfg.data.window, cfg.model.window):
            for n in names:
                setattr(group, n, getattr(spec, n))

    @staticmethod
    def _check_weights_zones(cfg) -> None:
        """Weights trained on a restricted zone's data are used only at a site of that zone: the starting weights (``--model.init_from``, ``finetune --from``) and the checkpoint resumed or validated
        (``--ckpt_path``, when it records zones), from their metadata, before any tensor is read."""
        site = resolve_site_zone(cfg.site.zone)
        if cfg.model.get("init_from"):
            read_metadata(cfg.model.init_from).check_site(site, "--model.init_from / finetune --from")
        ckpt = cfg.get("ckpt_path")
        if ckpt and "://" not in str(ckpt) and ckpt not in ("best", "hpc") and sidecar(Path(ckpt), META_NAME).is_file():
            read_checkpoint_metadata(ckpt)[0].check_site(site, "--ckpt_path")

    @staticmethod
    def _ckpt_path(ckpt_path: str | None, workdir: Path) -> str | None:
        """``last``: the newest complete checkpoint in ``<workdir>/checkpoints`` (none yet: start from the
        beginning, so a preemptible job can always pass it); a path must be a complete checkpoint."""
        if ckpt_path == "last":
            found = last_checkpoint(workdir / "checkpoints")
            if rank_zero_only.rank == 0:
                restart = detect_cluster().restart  # torchrun restarted the workers after a failure
                again = f" (torchelastic restart {restart})" if restart else ""
                log.info(f"resuming from {found}{again}" if found else f"no checkpoint in {workdir / 'checkpoints'} yet; starting from the beginning{again}")
            return str(found) if found else None
        if ckpt_path is None or ckpt_path in ("best", "hpc") or "://" in str(ckpt_path):
            return ckpt_path
        return str(resolve_checkpoint(ckpt_path))

    def _logger(self, workdir: Path):
        wb, settings = self._cfg.wandb, self._wandb
        if settings.mode == "disabled":
            return CSVLogger(str(workdir), name="metrics")
        import wandb

        settings.wandb_dir.mkdir(parents=True, exist_ok=True)
        stage_artifacts_in(settings)
        server = {"settings": wandb.Settings(base_url=wb.base_url)} if wb.base_url else {}
        return FleetWandbLogger(
            project=settings.project,
            entity=settings.entity,
            name=wb.name,
            group=wb.group,
            tags=list(wb.tags) if wb.tags else None,
            notes=wb.notes,
            job_type=self.job_type if self.subcommand == "fit" else "eval",
            save_dir=str(settings.root),
            mode=settings.mode,  # resolved here (flag > WANDB_MODE > offline): wandb.init gets it explicitly
            **server,
        )

    def instantiate_trainer(self, **kwargs):
        """The Trainer with fsdtrain's logger and callbacks, and the run's batch plan applied."""
        workdir = Path(self._cfg.workdir)
        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        if config.get("logger") in (None, True):
            kwargs["logger"] = self._logger(workdir)
        resolved = self._cfg.as_dict()
        given = config.get("callbacks") or []
        callbacks = [
            *(given if isinstance(given, list) else [given]),
            FleetCheckpoint(str(workdir / "checkpoints"), every_n_steps=self._cfg.checkpoint.every_n_steps, keep=self._cfg.checkpoint.keep, config_yaml=self._resolved_yaml()),
            ExportWeights(str(workdir / WEIGHTS_NAME)),
            ValidationReport(str(workdir / VAL_METRICS_NAME)),
            StreamEpoch(),
            FiniteTraining(),  # a NaN loss or gradient stops the run before its step (fsdtrain/train/finite.py)
            Throughput(),
            OptimizerStats(),  # train/lr, train/grad_norm
            RunInfo(resolved),
            *cluster_setup(config),  # SLURM, torchrun, DeepSpeed launcher or Kubeflow: fsdtrain/train/cluster.py
        ]
        self._review = None
        if isinstance(kwargs.get("logger", config.get("logger")), FleetWandbLogger):  # after ExportWeights: it logs the weights that one writes
            site_zone = resolve_site_zone(self._cfg.site.zone)
            self._review = WandbReview(self._wandb_target, site_zone=site_zone, weights=str(workdir / WEIGHTS_NAME), images=self._cfg.wandb.images)
            callbacks.append(self._review)
        if config.get("enable_progress_bar") is False:
            callbacks.append(ProgressLines())
        trainer = super().instantiate_trainer(**kwargs, callbacks=callbacks)
        own_stop_signals(trainer)  # SIGTERM is fsdtrain's (fsdtrain/stopping.py), on every rank
        self._apply_batch_plan(trainer)
        return trainer

    def _apply_batch_plan(self, trainer) -> None:
        """Makes the run's one batch plan (fsdtrain/batching.py) before any process starts and hands it
        to the Trainer (accumulation), the data module and the DeepSpeed strategy; a global batch the world
        size cannot split fails in one line."""
        dm, accumulation = self.datamodule, trainer.accumulate_grad_batches
        if dm.global_batch_size is not None and accumulation == 1:
            accumulation = None  # the Trainer's default: derive it from the global batch
        plan = plan_batches(micro_batch=dm.batch_size, world_size=trainer.world_size, accumulation=accumulation, global_batch=dm.global_batch_size)
        trainer.accumulate_grad_batches = plan.accumulation
        dm.batch_plan = plan
        subcommand_config = self.config.get(str(self.subcommand), self.config)
        dm.resuming = bool(subcommand_config.get("ckpt_path"))  # the data order's shape then comes from the checkpoint
        if isinstance(trainer.strategy, FleetDeepSpeedStrategy):
            trainer.strategy.batch_plan = plan
        if rank_zero_only.rank == 0 and self.subcommand in (None, "fit"):
            log.info(plan.describe())

    def _resolved_yaml(self) -> str:
        """The resolved config as LightningCLI's SaveConfigCallback writes it (after the workdir, site and shape links)."""
        return subcommand_parser(self, self.subcommand).dump(self.config.get(str(self.subcommand), self.config), skip_none=False)

    def after_fit(self) -> None:
        line = sync_line(self.trainer.logger, self._review) if self.trainer.is_global_zero else None
        for i, text in enumerate((line or "").splitlines()):  # how to upload; then a zone warning, if any
            (log.warning if i else log.info)(text)
