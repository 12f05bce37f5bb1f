"""``FleetCLI``: LightningCLI for ``fsdtrain fit|validate|test`` and ``fsdtrain finetune``.

Adds to LightningCLI what every run needs and a YAML should not repeat: ``--workdir`` (checkpoints,
weights, audit log, W&B files), ``--site.zone``, ``--wandb.*``, the model's input shapes taken from the data config
(cameras, window), the W&B logger in offline mode by default, and the callbacks (checkpoints, weights export,
throughput, run info, ``<workdir>/val_metrics.json`` after every validation). DeepSpeed strategy names are registered so they also run on CPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from fsdtrain.data.datamodule import FleetDataModule
from fsdtrain.errors import ConfigError
from fsdtrain.train.callbacks import (
    ExportWeights,
    ProgressLines,
    RunInfo,
    StreamEpoch,
    Throughput,
    ValidationReport,
)
from fsdtrain.train.module import DrivingModule
from fsdtrain.train.strategies import register_strategies

__all__ = ["WandbConfig", "SiteConfig", "FleetCLI", "WEIGHTS_NAME", "VAL_METRICS_NAME"]

WEIGHTS_NAME = "model.safetensors"
VAL_METRICS_NAME = "val_metrics.json"
_WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    """Weights & Biases settings.

    Args:
        mode: ``offline`` (run files on disk, upload later with ``wandb sync``), ``online``, or ``disabled`` (CSV only).
        project: W&B project.
        group: run group (e.g. one experiment's pretrain, finetune and eval runs).
        name: run name; empty lets W&B choose.
        base_url: self-hosted W&B server (e.g. one inside the site's zone).
    """

    mode: str = "offline"
    project: str = "fsdtrain"
    group: str | None = None
    name: str | None = None
    base_url: str | None = None


@dataclass
class SiteConfig:
    """Where this job runs.

    Args:
        zone: residency zone of the site (``global``, ``cn``...); empty means ``$FSDTRAIN_SITE_ZONE`` or ``global``.
    """

    zone: str | None = None


class FleetCLI(LightningCLI):
    """LightningCLI with fsdtrain's run conventions; ``job_type`` is ``pretrain`` or ``finetune``."""

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

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--workdir", type=str, default="runs/fsdtrain", help="Run directory: checkpoints, weights, audit log, W&B files.")
        parser.add_dataclass_arguments(WandbConfig, "wandb")
        parser.add_dataclass_arguments(SiteConfig, "site")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.wandb.mode not in _WANDB_MODES:
            raise ConfigError(f"--wandb.mode must be one of {_WANDB_MODES}, got {cfg.wandb.mode!r}")
        workdir = Path(cfg.workdir)
        cfg.trainer.default_root_dir = str(workdir)
        if cfg.site.zone:
            cfg.data.site_zone = cfg.site.zone
        # the model's input shapes are the data's: one source of truth
        cfg.model.cameras = cfg.data.cameras
        cfg.model.window = cfg.data.window
        if not cfg.data.audit_log:
            cfg.data.audit_log = str(workdir / "audit.jsonl")
        self._cfg = cfg
        self._preflight(cfg)

    @staticmethod
    def _preflight(cfg) -> None:
        """Fails on unreadable data and residency violations before any process, logger or model starts."""
        from fsdtrain.data.datamodule import load_manifests
        from fsdtrain.residency import resolve_site_zone

        zone = resolve_site_zone(cfg.data.site_zone)
        load_manifests(list(cfg.data.train or []) + list(cfg.data.val or []), zone)

    def _logger(self, workdir: Path):
        wb = self._cfg.wandb
        if wb.mode == "disabled":
            return CSVLogger(str(workdir), name="metrics")
        if wb.base_url:
            os.environ["WANDB_BASE_URL"] = wb.base_url
        (workdir / "wandb").mkdir(parents=True, exist_ok=True)
        return WandbLogger(
            project=wb.project,
            name=wb.name,
            group=wb.group,
            job_type=self.job_type,
            save_dir=str(workdir),
            offline=wb.mode == "offline",
            log_model=False,
        )

    def _instantiate_trainer(self, config: dict, callbacks: list):
        workdir = Path(self._cfg.workdir)
        if config.get("logger") in (None, True):
            config["logger"] = self._logger(workdir)
        resolved = self._cfg.as_dict()
        callbacks = [
            *callbacks,
            ModelCheckpoint(dirpath=str(workdir / "checkpoints"), save_last=True, save_top_k=0, save_on_train_epoch_end=True),
            ExportWeights(str(workdir / WEIGHTS_NAME)),
            ValidationReport(str(workdir / VAL_METRICS_NAME)),
            StreamEpoch(),
            Throughput(),
            RunInfo(resolved),
        ]
        if config.get("enable_progress_bar") is False:
            callbacks.append(ProgressLines())
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        logger = self.trainer.logger
        if self.trainer.is_global_zero and isinstance(logger, WandbLogger) and self._cfg.wandb.mode == "offline":
            run_dir = Path(logger.experiment.dir).parent
            print(f"fsdtrain: W&B offline run in {run_dir}; upload it with: wandb sync {run_dir}", flush=True)
