"""W&B for reviewers: what a run sends to Weights & Biases beyond the scalars Lightning logs.

- run config: where the W&B files go (mode, base URL, zone), the site zone, and lineage (the weights
  a run started from and their model artifact); :class:`~fsdtrain.train.callbacks.RunInfo` adds
  the resolved config, git SHA, manifest digests and zones;
- after every validation: a per-country metric table, bird's-eye plots of a few validation
  windows, and the same windows with the front camera only where residency allows it (below);
- every checkpoint save becomes a version of the run's ``model`` artifact, in offline mode too
  (Lightning's own ``log_model`` refuses offline runs), with the ``latest`` and ``best`` aliases;
  the version written at the end of fit holds the exported weights (alias ``weights``); a run
  that starts from weights whose metadata names such an artifact uses it (lineage global -> CN).

Settings come from one function, :func:`resolve_settings`: an explicit value (flag or config file) wins over
W&B's environment variable (``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_DIR``), which wins over
fsdtrain's default (offline, project ``fsdtrain``, no entity, the run's work directory). Artifact files are
staged under the run's own W&B folder (:func:`stage_artifacts_in`), so a copied work directory holds
everything ``wandb sync`` needs. Every validation metric gets a ``define_metric`` summary of its best value
(:func:`summary_goal`), so run tables compare runs by their best, not their last, validation.

Residency of camera frames (docs/residency.md): a figure with camera pixels of a window is logged only
when the W&B destination is inside the window's zone (or the window's zone is ``global``). The
destination's zone is, in offline mode, the site zone (the files stay on the site's disk); online,
``wandb.zone`` when a self-hosted ``wandb.base_url`` is declared to be in that zone, otherwise
``global`` (the public W&B cloud, or a server nobody declared). Bird's-eye plots hold ego
coordinates only and are always logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from fsdtrain.errors import ConfigError
from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.eval.report import PREDICTORS
from fsdtrain.eval.viz import window_at, window_figure
from fsdtrain.residency import GLOBAL_ZONE, validate_zone
from fsdtrain.train.lightning_internals import last_checkpoint_saved

__all__ = [
    "BEST_METRIC",
    "DEFAULT_PROJECT",
    "TABLE_COLUMNS",
    "WEIGHTS_ALIAS",
    "WANDB_MODES",
    "WandbSettings",
    "resolve_settings",
    "stage_artifacts_in",
    "summary_goal",
    "upload_line",
    "WandbTarget",
    "metric_table",
    "validation_images",
    "FleetWandbLogger",
    "WandbReview",
    "sync_line",
]

log = logging.getLogger(__name__)

BEST_METRIC = "val/l2_3s"
"""The ``best`` alias goes to the checkpoint with the lowest value of this metric."""
WEIGHTS_ALIAS = "weights"
"""Alias of the model artifact version that holds the weights exported at the end of fit."""
TABLE_COLUMNS = ("country", "predictor", "clips", "windows", *METRIC_KEYS)
DEFAULT_PROJECT = "fsdtrain"
"""W&B project when neither ``--wandb.project`` nor ``$WANDB_PROJECT`` names one."""
WANDB_MODES = ("offline", "online", "disabled")
_MODE_SYNONYMS = {"dryrun": "offline", "run": "online"}  # older spellings W&B itself still accepts in WANDB_MODE
_HIGHER_IS_BETTER: frozenset[str] = frozenset()  # metric names whose best is the largest; every val/* metric today is an error or a loss


@dataclass(frozen=True)
class WandbSettings:
    """W&B settings of one run after :func:`resolve_settings`; ``sources`` says where each came from."""

    mode: str
    """``offline``, ``online`` or ``disabled``."""
    project: str
    entity: str | None
    """Team or user; None lets W&B use the logged-in user's default."""
    root: Path
    """Folder that holds ``wandb/`` (the run files and their staged artifact files)."""
    sources: Mapping[str, str]
    """Setting -> ``flag``, ``env`` (the variable's name) or ``default``."""

    @property
    def wandb_dir(self) -> Path:
        """``<root>/wandb``: W&B's own folder (``offline-run-*``, ``latest-run``, staged artifact files)."""
        return self.root / "wandb"


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def resolve_settings(
    *, mode: str | None, project: str | None, entity: str | None, dir: str | None, default_dir: str | os.PathLike,
    env: Mapping[str, str] | None = None,
) -> WandbSettings:  # fmt: skip
    """The one precedence for W&B settings: explicit value (flag or config) > environment > default.

    Args:
        mode, project, entity, dir: the ``--wandb.*`` values; None or empty: not given.
        default_dir: folder for ``wandb/`` when neither ``dir`` nor ``$WANDB_DIR`` names one (a training
            run's work directory; ``fsdtrain eval``: the report's folder).
        env: the environment (default ``os.environ``): ``WANDB_MODE``, ``WANDB_PROJECT``,
            ``WANDB_ENTITY``, ``WANDB_DIR``.

    Raises:
        ConfigError: a mode (flag or ``WANDB_MODE``) that is not offline, online or disabled.
    """
    env = os.environ if env is None else env
    sources: dict[str, str] = {}

    def pick(key: str, given: str | None, var: str, default):
        if given is not None and str(given).strip():
            sources[key] = "flag"
            return str(given).strip()
        if _env(env, var) is not None:
            sources[key] = var
            return _env(env, var)
        sources[key] = "default"
        return default

    chosen = pick("mode", mode, "WANDB_MODE", "offline")
    chosen = _MODE_SYNONYMS.get(chosen, chosen) if sources["mode"] == "WANDB_MODE" else chosen
    if chosen not in WANDB_MODES:
        where = "--wandb.mode" if sources["mode"] == "flag" else "WANDB_MODE"
        raise ConfigError(f"{where} must be one of {', '.join(WANDB_MODES)}, got {chosen!r}")
    return WandbSettings(
        mode=chosen,
        project=pick("project", project, "WANDB_PROJECT", DEFAULT_PROJECT),
        entity=pick("entity", entity, "WANDB_ENTITY", None),
        root=Path(pick("dir", dir, "WANDB_DIR", os.fspath(default_dir))).expanduser().absolute(),
        sources=sources,
    )


def stage_artifacts_in(settings: WandbSettings) -> Path:
    """Points W&B's artifact staging (``$WANDB_DATA_DIR/artifacts/staging``, by default under the user's
    home) at ``<root>/wandb/data`` and returns that folder.

    An offline run's artifact files (the exported weights, ``checkpoint.json``, the eval report) wait
    there until ``wandb sync`` uploads them; inside the run's own folder, a copied work directory holds
    all of them. W&B reads this folder from the environment only, so it is set there, for this process
    (and the ranks it starts). The user cache (``$WANDB_CACHE_DIR``) holds nothing an offline run needs.
    """
    data = settings.wandb_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DATA_DIR"] = str(data)
    return data


def summary_goal(key: str) -> str | None:
    """``min`` or ``max``: what a run table shows for a logged scalar ``key`` (its best value over the
    run, :meth:`FleetWandbLogger.log_metrics`); None for keys whose last value is the right summary.

    Every validation metric (``val/*``: errors in metres, miss rate, loss) is lower-is-better, except
    the names in ``_HIGHER_IS_BETTER``."""
    if not key.startswith("val/"):
        return None
    return "max" if key.rsplit("/", 1)[-1] in _HIGHER_IS_BETTER else "min"


@dataclass(frozen=True)
class WandbTarget:
    """Where a run's W&B files go and the residency zone of that place."""

    mode: str
    """``offline``, ``online`` or ``disabled``."""
    base_url: str | None
    """Self-hosted server, or None for the public W&B cloud."""
    zone: str
    """Zone the logged files end up in: the site zone offline, the declared server zone online, else ``global``."""
    server_zone: str
    """Zone of the server the files are (or will be, with ``wandb sync``) uploaded to."""

    @classmethod
    def resolve(cls, *, mode: str, base_url: str | None, zone: str | None, site_zone: str) -> WandbTarget:
        """Args: the ``wandb.*`` settings and the job's (resolved) site zone.

        Raises ConfigError for a ``wandb.zone`` that is not a zone name, or that is not ``global``
        while no ``wandb.base_url`` says which server sits in it.
        """
        if zone:
            validate_zone(zone, "wandb.zone")
            if zone != GLOBAL_ZONE and not base_url:
                raise ConfigError(
                    f"wandb.zone {zone!r} needs wandb.base_url: the public W&B cloud counts as zone 'global'; "
                    f"give the URL of the W&B server inside zone {zone!r}"
                )
        server_zone = zone if base_url and zone else GLOBAL_ZONE
        return cls(mode=mode, base_url=base_url or None, zone=site_zone if mode == "offline" else server_zone, server_zone=server_zone)

    def allows_camera(self, window_zone: str) -> bool:
        """Whether camera pixels of a window of ``window_zone`` may be logged to this target."""
        return window_zone == GLOBAL_ZONE or window_zone == self.zone

    def as_config(self) -> dict:
        return {"mode": self.mode, "base_url": self.base_url, "zone": self.zone, "server_zone": self.server_zone}


def metric_table(report: dict) -> list[list]:
    """Rows of :data:`TABLE_COLUMNS` from a report dict (docs/report-format.md): per country and predictor,
    then ``overall``; a metric the report lacks (beyond the horizon) is None."""
    rows = []
    for country, entry in [*report["per_country"].items(), ("overall", report["overall"])]:
        for predictor in PREDICTORS:
            metrics = entry.get(predictor)
            if metrics:
                rows.append([country, predictor, entry.get("clips"), entry.get("windows"), *(metrics.get(k) for k in METRIC_KEYS)])
    return rows


def validation_images(samples: list[dict], target: WandbTarget, *, cameras: list[str]) -> tuple[list, list]:
    """-> (bird's-eye images of every sample, camera figures of the samples ``target`` allows), as
    ``(PIL image, caption)`` pairs. A sample: ``window`` (:func:`~fsdtrain.eval.viz.window_at`),
    ``traj`` [K, S, 3], ``logits`` [K]."""
    bev, camera = [], []
    for s in samples:
        w = s["window"]
        caption = f"{w['country']} {w['clip_id']} frame {w['frame']}"
        bev.append((window_figure(w, s["traj"], s["logits"], cameras=cameras, with_camera=False), caption))
        if target.allows_camera(str(w["zone"])):
            camera.append((window_figure(w, s["traj"], s["logits"], cameras=cameras, with_camera=True), caption))
    return bev, camera


def _pick(countries: list[str], valid: list[bool], n: int) -> list[int]:
    """Up to ``n`` valid windows of a batch, taking countries in turn (first window of each, then the second...)."""
    by_country: dict[str, list[int]] = {}
    for i, (c, ok) in enumerate(zip(countries, valid)):
        if ok:
            by_country.setdefault(c, []).append(i)
    picked, rank = [], 0
    while len(picked) < n and any(rank < len(v) for v in by_country.values()):
        picked += [v[rank] for _, v in sorted(by_country.items()) if rank < len(v)]
        rank += 1
    return sorted(picked[:n])


class FleetWandbLogger(WandbLogger):
    """WandbLogger whose checkpoint saves become model artifact versions (through :class:`WandbReview`),
    offline too. ``log_model`` is always off: Lightning's own artifact logging refuses offline runs."""

    def __init__(self, **kwargs) -> None:
        super().__init__(log_model=False, **kwargs)
        self.review: WandbReview | None = None
        self._summaries: set[str] = set()  # keys given a define_metric summary

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Logs as WandbLogger does, after giving each new validation scalar its ``define_metric``
        (:func:`summary_goal`): W&B applies a summary only to names defined one by one (a ``val/*``
        glob is not summarised), and only from the definition on, so it comes before the first value."""
        run = self.experiment
        for key, value in metrics.items():
            goal = summary_goal(key) if isinstance(value, int | float | torch.Tensor) and key not in self._summaries else None
            if goal is not None:
                run.define_metric(key, step_metric="trainer/global_step", step_sync=True, summary=goal)
                self._summaries.add(key)
        super().log_metrics(metrics, step)

    @property
    def model_artifact(self) -> str | None:
        """``<project>/model-<run id>:weights``, the artifact version that holds this run's exported
        weights (recorded in the weights metadata for lineage); None on ranks other than 0."""
        if rank_zero_only.rank != 0:
            return None
        run = self.experiment
        return f"{run.project}/model-{run.id}:{WEIGHTS_ALIAS}"

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self.review is not None and rank_zero_only.rank == 0:
            self.review.checkpoint_saved(checkpoint_callback)


class WandbReview(pl.Callback):
    """Rank 0 logs the reviewer's view of a run to a :class:`FleetWandbLogger` (module doc).

    Add it after :class:`~fsdtrain.train.callbacks.ExportWeights`: its ``on_fit_end`` logs the file
    that one writes.

    Args:
        target: where the W&B files go (decides which camera frames may be logged).
        site_zone: the job's site zone (run config).
        weights: path of the weights file written at the end of fit.
        images: validation windows drawn after each validation (0: none).
    """

    def __init__(self, target: WandbTarget, *, site_zone: str, weights: str, images: int = 4) -> None:
        if images < 0:
            raise ConfigError(f"wandb.images={images} must be >= 0")
        self.target, self.site_zone, self.weights, self.images = target, site_zone, Path(weights), images
        self.camera_zones: set[str] = set()  # zones whose camera frames this run logged
        self._trainer: pl.Trainer | None = None
        self._samples: list[dict] = []
        self._best: float | None = None
        self._parent: str | None = None

    @staticmethod
    def _run(trainer: pl.Trainer):
        logger = trainer.logger
        return logger.experiment if isinstance(logger, FleetWandbLogger) else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if isinstance(trainer.logger, FleetWandbLogger):
            trainer.logger.review = self
        run = self._run(trainer) if trainer.is_global_zero else None
        if run is None:
            return
        parent = getattr(pl_module, "parent_metadata", None)  # WeightsMeta of init_from
        self._parent = parent.artifact if parent is not None else None
        lineage = {"init_from": getattr(pl_module, "init_from", None), "parent_artifact": self._parent}
        run.config.update({"site_zone": self.site_zone, "wandb_target": self.target.as_config(), "lineage": lineage}, allow_val_change=True)
        if self._parent and self.target.mode == "online":
            self._use_parent(run)

    def _use_parent(self, run) -> None:
        """Declares the starting weights' artifact an input of this run (online only: W&B refuses
        ``use_artifact`` offline, so offline runs record it in ``lineage`` of the run config)."""
        from wandb.errors import CommError

        try:
            run.use_artifact(self._parent, type="model")
        except (CommError, ValueError) as exc:  # the parent run logged offline and is not synced, or to another server
            log.warning("W&B lineage: cannot use artifact %s (%s); sync the parent run first", self._parent, str(exc).splitlines()[0])

    # --- validation media ------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx or self._samples or not self.images or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not isinstance(outputs, dict) or "traj" not in outputs:
            return
        keep = _pick(list(batch["country"]), [bool(v) for v in batch["valid"]], self.images)
        for i in keep:
            window = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in window_at(batch, i).items()}
            self._samples.append({"window": window, "traj": outputs["traj"][i].float().cpu(), "logits": outputs["logits"][i].float().cpu()})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = getattr(pl_module, "val_report", None)
        if trainer.sanity_checking or not trainer.is_global_zero or report is None or self._run(trainer) is None:
            return
        import wandb

        values: dict = {"val/metrics_table": wandb.Table(columns=list(TABLE_COLUMNS), data=metric_table(report))}
        bev, camera = validation_images(self._samples, self.target, cameras=pl_module.cameras)
        if bev:
            values["val/birds_eye"] = [wandb.Image(img, caption=c) for img, c in bev]
        if camera:
            values["val/camera"] = [wandb.Image(img, caption=c) for img, c in camera]
            self.camera_zones |= {str(s["window"]["zone"]) for s in self._samples if self.target.allows_camera(str(s["window"]["zone"]))}
        trainer.logger.log_metrics(values, step=trainer.global_step)
        self._samples = []

    # --- model artifacts -------------------------------------------------------------------------

    def checkpoint_saved(self, checkpoint_callback) -> None:
        """Called by :class:`FleetWandbLogger` on rank 0 after each ModelCheckpoint save."""
        path = last_checkpoint_saved(checkpoint_callback) or checkpoint_callback.last_model_path
        if self._trainer is not None and path and Path(path).exists():
            self._log_model(self._trainer, Path(path), weights=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.weights.is_file():
            self._log_model(trainer, self.weights, weights=True)

    def _log_model(self, trainer: pl.Trainer, path: Path, *, weights: bool) -> None:
        run = self._run(trainer)
        if run is None:
            return
        import wandb

        score = trainer.callback_metrics.get(BEST_METRIC)
        score = float(score) if score is not None and math.isfinite(float(score)) else None
        best = score is not None and (self._best is None or score <= self._best)
        if best:
            self._best = score
        info = {
            "kind": "weights" if weights else "checkpoint",
            "path": str(path.resolve()),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            BEST_METRIC: score,
            "parent_artifact": self._parent,
        }
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=info)
        with artifact.new_file("checkpoint.json", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        if weights:
            artifact.add_file(str(path), name=path.name)
        else:  # not uploaded: DeepSpeed checkpoints are large and `last.ckpt` is replaced by the next save
            artifact.add_reference(path.resolve().as_uri(), name="checkpoint", checksum=False)
        aliases = ["latest", WEIGHTS_ALIAS] if weights else ["latest", f"step-{trainer.global_step}"]
        run.log_artifact(artifact, aliases=aliases + (["best"] if best else []))


def upload_line(run_dir: Path, target: WandbTarget, camera_zones: set[str]) -> str | None:
    """The line that tells how to upload an offline run (None for other modes), with the self-hosted
    server when one is configured, and a second line, a warning, when the files hold camera frames of a
    zone the upload target is not declared in. Without the ``fsdtrain:`` prefix: the caller logs them."""
    if target.mode != "offline":
        return None
    env = f"WANDB_BASE_URL={target.base_url} " if target.base_url else ""
    line = f"W&B offline run in {run_dir}; upload it with: {env}wandb sync {run_dir}"
    foreign = sorted(z for z in camera_zones if z not in (GLOBAL_ZONE, target.server_zone))
    if foreign:
        line += (
            f"\nit holds camera frames of zone {', '.join(foreign)}: upload it only to a W&B server inside that zone "
            f"(--wandb.base_url with --wandb.zone {foreign[0]})"
        )
    return line


def sync_line(logger, review: WandbReview | None) -> str | None:
    """:func:`upload_line` of a training run (None unless it logs to a :class:`FleetWandbLogger` offline)."""
    if not isinstance(logger, FleetWandbLogger) or review is None or review.target.mode != "offline":
        return None
    return upload_line(Path(logger.experiment.dir).parent, review.target, review.camera_zones)
