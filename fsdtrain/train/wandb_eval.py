"""The W&B run of ``fsdtrain eval`` (job type ``eval``): the report's table, pictures and lineage.

``fsdtrain eval`` computes its report without W&B (fsdtrain/eval/); this module, above it, logs that
report as one W&B run with the same settings and rules as the training runs (fsdtrain/train/wandb_log.py):

- run config: ``eval`` (weights, head-only file, data), ``lineage`` (the weights' model artifact,
  ``<project>/model-<run id>:weights`` from their metadata, the head file's, and the artifact the weights
  themselves started from), ``git_sha``, ``site_zone`` and ``wandb_target``;
- ``eval/metrics_table``: one row per country and predictor (model, constant velocity, CTRA, ego MLP,
  global head) plus ``overall``, every metric of the report (both L2 conventions, minADE/minFDE, miss rate);
- the run summary: ``eval/<country>/<predictor>/<metric>`` for each number of the table, so the run table
  compares eval runs;
- ``eval/birds_eye`` for the windows ``eval`` draws (the first ``--plots-per-country`` of each country) and
  ``eval/camera`` for those whose camera frames the destination zone may hold (:class:`WandbTarget`);
- an ``evaluation`` artifact ``eval-<run id>`` holding ``report.json``, its metadata naming the weights
  and their artifact.

Online, the run declares the weights' artifact (and the head file's) its input with ``use_artifact``, so
W&B draws pretrain -> fine-tune -> eval. W&B refuses ``use_artifact`` offline: there the same names are in
the run config (``lineage``) and in the evaluation artifact's metadata.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.eval.report import PREDICTORS
from fsdtrain.residency import resolve_site_zone
from fsdtrain.train.wandb_log import (
    TABLE_COLUMNS,
    WandbSettings,
    WandbTarget,
    metric_table,
    resolve_settings,
    stage_artifacts_in,
    upload_line,
    validation_images,
)
from fsdtrain.weights.files import git_sha, read_metadata
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["EVAL_ARTIFACT_TYPE", "EvalWandb", "parse_tags", "summary_values"]

log = logging.getLogger(__name__)

EVAL_ARTIFACT_TYPE = "evaluation"


def parse_tags(text: str | None) -> list[str] | None:
    """``--wandb.tags`` of ``fsdtrain eval``: ``a,b`` or ``[a,b]`` (as ``fit`` writes it) -> ``["a", "b"]``."""
    if text is None:
        return None
    tags = [t.strip().strip("'\"") for t in text.strip().removeprefix("[").removesuffix("]").split(",")]
    return [t for t in tags if t] or None


def summary_values(report: dict) -> dict[str, float]:
    """``eval/<country>/<predictor>/<metric>`` -> value for every number of the report (``overall`` too)."""
    out = {}
    for country, entry in [*report["per_country"].items(), ("overall", report["overall"])]:
        for predictor in PREDICTORS:
            for key in METRIC_KEYS:
                value = (entry.get(predictor) or {}).get(key)
                if value is not None:
                    out[f"eval/{country}/{predictor}/{key}"] = value
    return out


@dataclass(frozen=True)
class EvalWandb:
    """The W&B settings of one ``fsdtrain eval``, resolved (and checked) before the evaluation starts."""

    settings: WandbSettings
    target: WandbTarget
    site_zone: str
    group: str | None = None
    name: str | None = None
    tags: list[str] | None = None
    notes: str | None = None

    @classmethod
    def resolve(
        cls, *, mode: str | None = None, project: str | None = None, entity: str | None = None, dir: str | None = None,
        group: str | None = None, name: str | None = None, tags: list[str] | None = None, notes: str | None = None,
        base_url: str | None = None, zone: str | None = None, site_zone: str | None = None, report: str | None = None,
    ) -> EvalWandb:  # fmt: skip
        """From the ``--wandb.*`` flags (:func:`~fsdtrain.train.wandb_log.resolve_settings`: flag >
        ``WANDB_*`` > default). The run's ``wandb/`` folder defaults to the folder of ``report`` (the
        ``--out`` JSON), else the current folder. Raises ConfigError for a bad mode or zone."""
        default_dir = Path(report).parent if report else Path.cwd()
        settings = resolve_settings(mode=mode, project=project, entity=entity, dir=dir, default_dir=default_dir)
        site = resolve_site_zone(site_zone)
        target = WandbTarget.resolve(mode=settings.mode, base_url=base_url, zone=zone, site_zone=site)
        return cls(settings=settings, target=target, site_zone=site, group=group, name=name, tags=tags, notes=notes)

    @property
    def enabled(self) -> bool:
        return self.settings.mode != "disabled"

    def log(
        self, report: dict, *, weights: str | None, head: str | None = None, samples: list[dict] | None = None
    ) -> str | None:
        """Logs ``report`` (with the windows ``samples`` drawn, :func:`~fsdtrain.eval.evaluate.evaluate`) as one
        W&B run; returns the upload line of an offline run (:func:`~fsdtrain.train.wandb_log.upload_line`)."""
        import wandb

        metas = {"weights": read_metadata(weights) if weights else None, "head": read_metadata(head) if head else None}
        lineage = _lineage(weights, head, metas["weights"], metas["head"])
        self.settings.wandb_dir.mkdir(parents=True, exist_ok=True)
        stage_artifacts_in(self.settings)
        config = {
            "eval": {"weights": lineage["weights"], "head": lineage["head"], "data": list(report["data"])},
            "lineage": lineage,
            "git_sha": git_sha(),
            "site_zone": self.site_zone,
            "wandb_target": self.target.as_config(),
        }
        server = {"base_url": self.target.base_url} if self.target.base_url else {}
        run = wandb.init(
            mode=self.settings.mode, project=self.settings.project, entity=self.settings.entity, dir=str(self.settings.root),
            job_type="eval", group=self.group, name=self.name, tags=self.tags, notes=self.notes, config=config,
            settings=wandb.Settings(console="off", **server),  # the console holds only the table, logged as one
        )  # fmt: skip
        try:
            if self.target.mode == "online":
                _use_inputs(run, [lineage["weights_artifact"], lineage["head_artifact"]])
            cameras = metas["weights"].cameras if metas["weights"] is not None else []
            bev, camera = validation_images(samples or [], self.target, cameras=cameras)
            values: dict = {"eval/metrics_table": wandb.Table(columns=list(TABLE_COLUMNS), data=metric_table(report))}
            if bev:
                values["eval/birds_eye"] = [wandb.Image(img, caption=c) for img, c in bev]
            if camera:
                values["eval/camera"] = [wandb.Image(img, caption=c) for img, c in camera]
            run.log(values)
            run.summary.update(summary_values(report))
            info = {**lineage, "data": list(report["data"]), "site_zone": self.site_zone}
            artifact = wandb.Artifact(f"eval-{run.id}", type=EVAL_ARTIFACT_TYPE, metadata=info)
            with artifact.new_file("report.json", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            run.log_artifact(artifact, aliases=["latest"])
            zones = {str(s["window"]["zone"]) for s in samples or [] if self.target.allows_camera(str(s["window"]["zone"]))}
            run_dir = Path(run.dir).parent
            if self.target.mode == "online":
                log.info("W&B eval run: %s", run.url)
        finally:
            run.finish()
        return upload_line(run_dir, self.target, zones)


def _lineage(weights: str | None, head: str | None, meta: WeightsMeta | None, head_meta: WeightsMeta | None) -> dict:
    """What the evaluated weights came from: the files, their W&B model artifacts, and the artifact the
    weights started from (their own ``parent``)."""
    parent = meta.parent if meta is not None else None
    return {
        "weights": str(Path(weights).resolve()) if weights else None,
        "head": str(Path(head).resolve()) if head else None,
        "weights_artifact": meta.artifact if meta is not None else None,
        "head_artifact": head_meta.artifact if head_meta is not None else None,
        "weights_parent_artifact": parent.artifact if parent is not None else None,
        "weights_git_sha": meta.git_sha if meta is not None else None,
    }


def _use_inputs(run, artifacts: list[str | None]) -> None:
    """Declares the weights' artifacts the run's inputs (online only, see the module doc)."""
    from wandb.errors import CommError

    for name in [a for a in artifacts if a]:
        try:
            run.use_artifact(name, type="model")
        except (CommError, ValueError) as exc:  # the training run logged offline and is not synced, or to another server
            log.warning("W&B lineage: cannot use artifact %s (%s); sync the training run first", name, str(exc).splitlines()[0])
