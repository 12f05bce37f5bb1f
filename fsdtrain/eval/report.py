"""The evaluation report (docs/report-format.md): JSON written by ``fsdtrain eval`` and ``fsdtrain demo``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from fsdtrain.eval.metrics import MetricTable

__all__ = ["METRIC_VERSION", "PREDICTORS", "build_report", "format_table", "write_report"]

METRIC_VERSION = 1
# in report and table order; a predictor appears where it has windows (``fsdtrain eval --baselines``:
# the kinematic baselines alone)
PREDICTORS = ("model", "constant_velocity", "ctra", "ego_mlp", "global_head")
_COUNTRY_ONLY = ("global_head",)  # not in ``overall``: it runs on some countries' windows only
_TABLE_KEYS = ("ade", "fde", "l2_1s", "l2_2s", "l2_3s", "l2_avg_3s", "min_ade_k", "miss_rate")


def build_report(table: MetricTable, clips: dict[str, set], *, checkpoint: str, data: list[str], digits: int | None = 4) -> dict:
    """Report dict from per-sample metric rows; ``clips`` maps country -> clip ids (or keys) seen;
    ``checkpoint`` is ``""`` for a report without a model; metric values rounded to ``digits``
    decimals (None: full precision). Each predictor with rows appears, in :data:`PREDICTORS` order."""
    per_country = {}
    for country in table.countries():
        entry = {"clips": len(clips.get(country, ())), "windows": _windows(table, country)}
        for predictor in PREDICTORS:
            if table.count(country, predictor):
                entry[predictor] = table.summary(country, predictor, digits=digits)
        per_country[country] = entry
    overall = {"clips": sum(len(v) for v in clips.values()), "windows": _windows(table, None)}
    for predictor in PREDICTORS:
        if predictor not in _COUNTRY_ONLY and table.count(None, predictor):
            overall[predictor] = table.summary(None, predictor, digits=digits)
    return {"metric_version": METRIC_VERSION, "checkpoint": checkpoint, "data": list(data), "per_country": per_country, "overall": overall}


def _windows(table: MetricTable, country: str | None) -> int:
    """Windows of ``country`` (None: all), each once: every predictor but ``global_head`` sees every window."""
    return max((table.count(country, p) for p in PREDICTORS if p not in _COUNTRY_ONLY), default=0)


def _fmt(v: float | None) -> str:
    return "     -" if v is None else f"{v:6.3f}"


def format_table(report: dict) -> str:
    """A fixed-width table: one row per country and predictor, metres."""
    head = f"{'country':<8} {'predictor':<18} {'clips':>5} " + " ".join(f"{k:>9}" for k in _TABLE_KEYS)
    lines = [head, "-" * len(head)]
    rows = list(report["per_country"].items()) + [("overall", report["overall"])]
    for country, entry in rows:
        for predictor in PREDICTORS:
            if predictor in entry and entry[predictor]:
                m = entry[predictor]
                lines.append(f"{country:<8} {predictor:<18} {entry['clips']:>5} " + " ".join(f"{_fmt(m.get(k)):>9}" for k in _TABLE_KEYS))
    return "\n".join(lines)


def write_report(report: dict, path: str | os.PathLike) -> None:
    """Writes the JSON atomically: a crash never leaves a half report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
