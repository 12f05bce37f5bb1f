"""What one run left on disk, read and checked for a review page: never the shards, only the run's files.

A run folder is either a training workdir (``fsdtrain fit``/``finetune --workdir``: ``val_metrics.json``,
``model.safetensors``, ``config.yaml``, ``checkpoints/``, ``wandb/offline-run-*``, or
``metrics/version_*/metrics.csv`` when W&B is disabled) or an evaluation folder (``report.json``
from ``fsdtrain eval --out``, and the ``--plots`` pictures in ``plots/``). Every file is checked where
it is read: strict JSON (a key twice is refused), the report structure of docs/report-format.md, YAML
that parses to a mapping, CSV numbers; a bad file is a one-line :class:`~fsdtrain.errors.ConfigError`
naming the file and the field.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from fsdtrain.errors import ConfigError
from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.eval.report import METRIC_VERSION, PREDICTORS
from fsdtrain.format.schema import is_country, is_int, shown, strict_json
from fsdtrain.review.wandb_files import WandbRun, offline_runs, read_wandb_run
from fsdtrain.weights.checkpoint_files import META_NAME, last_checkpoint, sidecar
from fsdtrain.weights.files import read_metadata
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["RUN_FILES", "Run", "read_run", "read_report_json", "read_metrics_table"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
VAL_METRICS_NAME = "val_metrics.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
PLOTS_DIR = "plots"
RUN_FILES = (
    VAL_METRICS_NAME,
    REPORT_NAME,
    WEIGHTS_NAME,
    CONFIG_NAME,
    "checkpoints/",
    "wandb/offline-run-*/",
    "metrics/version_*/metrics.csv",
)
"""What makes a folder a run: at least one of these."""
_MAX_JSON = 64 << 20  # bytes: a report of every country and predictor is a few KiB
_TABLE_NEEDS = ("country", "predictor", "l2_3s")


@dataclass
class Run:
    """The files of one run folder, parsed and checked (None / empty where the run has no such file).

    Args:
        path: the run folder.
        val_metrics: ``val_metrics.json`` (the last validation of fit/finetune).
        report: ``report.json`` (``fsdtrain eval``).
        weights: metadata of ``model.safetensors`` (no tensor is read).
        checkpoint: metadata of the newest complete checkpoint (``fsdtrain.json``), when there are no weights.
        config: the resolved config (``config.yaml``).
        wandb: the W&B offline runs under ``wandb/``, oldest first.
        csv_metrics: ``metrics/version_*/metrics.csv`` (W&B disabled): key -> (step, value) pairs.
        pictures: PNG files in ``plots/`` (``fsdtrain eval --plots``).
        label: how the page names the run (default: the folder's name).
    """

    path: Path
    val_metrics: dict | None = None
    report: dict | None = None
    weights: WeightsMeta | None = None
    checkpoint: WeightsMeta | None = None
    config: dict | None = None
    wandb: list[WandbRun] = field(default_factory=list)
    csv_metrics: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    pictures: list[Path] = field(default_factory=list)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.path.name

    @property
    def meta(self) -> WeightsMeta | None:
        """The run's metadata: its weights', else its last checkpoint's."""
        return self.weights or self.checkpoint

    @property
    def job_type(self) -> str:
        """``pretrain``, ``finetune`` or ``eval`` (W&B job type; else from the files: a report is an
        evaluation, weights with a parent a fine-tune), or ``run``."""
        for w in reversed(self.wandb):
            if w.job_type:
                return w.job_type
        if self.report is not None and self.val_metrics is None:
            return "eval"
        if self.meta is not None:
            return "finetune" if self.meta.parent is not None else "pretrain"
        return "run"

    @property
    def site_zone(self) -> str | None:
        """The zone of the site the run ran at, as the run recorded it (None when it did not)."""
        if self.meta is not None and self.meta.site_zone:
            return self.meta.site_zone
        for w in reversed(self.wandb):
            zone = w.config.get("site_zone")
            if isinstance(zone, str) and zone:
                return zone
        return None

    def series(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of a logged scalar by step, from the W&B runs (a resumed run adds a folder), else
        the CSV log."""
        points = [p for w in self.wandb for p in w.scalars(key)] or self.csv_metrics.get(key, [])
        return sorted(points, key=lambda p: p[0])  # stable: a step repeated after a resume keeps its order

    def keys(self) -> set[str]:
        return set().union(*(w.keys() for w in self.wandb), self.csv_metrics)


def _read_json(path: Path) -> object:
    size = path.stat().st_size
    if size > _MAX_JSON:
        raise ConfigError(f"{path}: {size} bytes is too large for a metrics file")
    try:
        return strict_json(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: not valid JSON ({str(exc).splitlines()[0]}); was it written by fsdtrain?"
        ) from None


def _metrics(value: object, where: str, file: Path) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {where} is {shown(value)}, not an object of metrics")
    for key in METRIC_KEYS:
        v = value.get(key)
        if key not in value:
            raise ConfigError(f"{file}: {where} lacks metric {key!r} (docs/report-format.md)")
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
        ):
            raise ConfigError(f"{file}: {where}.{key} is {shown(v)}, not a non-negative number or null")
    return value


def _entry(value: object, where: str, file: Path, *, country: bool) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {where} is {shown(value)}, not an object")
    for key in ("clips", "windows"):
        if not is_int(value.get(key), 0):
            raise ConfigError(
                f"{file}: {where}.{key} is {shown(value.get(key))}, not a count (an integer >= 0)"
            )
    for predictor in PREDICTORS:
        if predictor in value and not (predictor == "global_head" and not country):
            _metrics(value[predictor], f"{where}.{predictor}", file)
    return value


def read_report_json(path: Path) -> dict:
    """``report.json`` or ``val_metrics.json`` (docs/report-format.md), its structure checked: the metric
    version, every country entry and every predictor's metrics; unknown fields are kept."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds {type(data).__name__}, not a report object (docs/report-format.md)")
    if data.get("metric_version") != METRIC_VERSION:
        raise ConfigError(
            f"{path}: metric_version is {shown(data.get('metric_version'))}; this fsdtrain reads version {METRIC_VERSION}"
        )
    if not isinstance(data.get("checkpoint", ""), str):
        raise ConfigError(f"{path}: checkpoint is {shown(data.get('checkpoint'))}, not a string")
    if not isinstance(data.get("data"), list) or not all(isinstance(u, str) for u in data["data"]):
        raise ConfigError(f"{path}: data is {shown(data.get('data'))}, not a list of URLs")
    countries = data.get("per_country")
    if not isinstance(countries, dict):
        raise ConfigError(f"{path}: per_country is {shown(countries)}, not an object")
    for country, entry in countries.items():
        if not is_country(country):
            raise ConfigError(f"{path}: per_country has key {shown(country)}, not a country code such as CN")
        _entry(entry, f"per_country.{country}", path, country=True)
    _entry(data.get("overall"), "overall", path, country=False)
    for key in ("epoch", "global_step"):
        if key in data and not is_int(data[key], 0):
            raise ConfigError(f"{path}: {key} is {shown(data[key])}, not an integer >= 0")
    return data


def read_metrics_table(path: Path) -> list[dict]:
    """A W&B ``val/metrics_table`` file (``*.table.json``) -> one dict per row, column -> value."""
    data = _read_json(path)
    columns, rows = (data.get("columns"), data.get("data")) if isinstance(data, dict) else (None, None)
    if (
        not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or not isinstance(rows, list)
    ):
        raise ConfigError(
            f"{path}: not a W&B table (needs 'columns', a list of names, and 'data', a list of rows)"
        )
    missing = [c for c in _TABLE_NEEDS if c not in columns]
    if missing:
        raise ConfigError(f"{path}: the table lacks column(s) {missing}; is it a val/metrics_table?")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ConfigError(f"{path}: data[{i}] is {shown(row)}, not a row of {len(columns)} values")
        out.append(dict(zip(columns, row)))
    return out


def _read_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not readable YAML ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds {type(data).__name__}, not a config mapping")
    return data


def _read_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning's CSVLogger file: a ``step`` column and one column per key, blank where not logged."""
    out: dict[str, list[tuple[float, float]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "step" not in reader.fieldnames:
                raise ConfigError(f"{path}: not a metrics CSV (no 'step' column in its header)")
            for line, row in enumerate(reader, start=2):
                for key, text in row.items():
                    if key in (None, "step") or text in (None, ""):
                        continue
                    try:
                        step, value = float(row["step"]), float(text)
                    except ValueError:
                        raise ConfigError(
                            f"{path}: line {line} column {key!r} is {shown(text)}, not a number"
                        ) from None
                    out.setdefault(key, []).append((step, value))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: unreadable ({type(exc).__name__})") from None
    return out


_PLOT_NAME = re.compile(r"^[A-Za-z0-9_-]+\.png$")


def read_run(path: str | Path) -> Run:
    """Reads the run folder ``path``; a folder holding none of :data:`RUN_FILES` is a one-line error."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(
            f"{path}: no such run folder; give a fit/finetune --workdir or the folder of an eval report.json"
        )
    run = Run(path=root.resolve())
    if (root / VAL_METRICS_NAME).is_file():
        run.val_metrics = read_report_json(root / VAL_METRICS_NAME)
    if (root / REPORT_NAME).is_file():
        run.report = read_report_json(root / REPORT_NAME)
    if (root / WEIGHTS_NAME).is_file():
        run.weights = read_metadata(root / WEIGHTS_NAME)
    else:
        ckpt = last_checkpoint(root / "checkpoints")
        meta = sidecar(ckpt, META_NAME) if ckpt is not None else None
        if meta is not None and meta.is_file():
            run.checkpoint = WeightsMeta.from_dict(_read_json(meta), str(meta))
    if (root / CONFIG_NAME).is_file():
        run.config = _read_config(root / CONFIG_NAME)
    run.wandb = [read_wandb_run(d) for d in offline_runs(root)]
    for w in run.wandb:
        if not w.finished:
            log.warning(
                "%s: the W&B run has no exit record: it is still running, or was stopped; read up to its last record",
                w.path,
            )
        if w.truncated:
            log.warning(
                "%s: the last %d bytes hold no whole record (the run was stopped while writing); read up to there",
                w.path,
                w.truncated,
            )
    for version in (
        sorted((root / "metrics").glob("version_*/metrics.csv")) if (root / "metrics").is_dir() else []
    ):
        for key, points in _read_csv(version).items():
            run.csv_metrics.setdefault(key, []).extend(points)
    plots = root / PLOTS_DIR
    if plots.is_dir():
        run.pictures = sorted(p for p in plots.iterdir() if p.is_file() and _PLOT_NAME.match(p.name))
    found = (run.val_metrics, run.report, run.meta, run.config) != (None,) * 4 or run.wandb or run.csv_metrics
    if not found:
        raise ConfigError(
            f"{path}: holds no run files ({', '.join(RUN_FILES)}); give a fit/finetune --workdir or the folder of an eval report.json"
        )
    return run
