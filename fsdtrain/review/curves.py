"""The training curves of one run, from what it logged (W&B offline history, else the CSV log):
loss, the validation L2 at 3 s overall and per country with the constant-velocity and ego-MLP
baselines as dashed reference lines, learning rate and gradient norm when logged, windows/s and
the data-wait fraction.

Per-country baselines come from the ``val/metrics_table`` each validation logged (one point per
validation); a run without those tables (W&B disabled) draws the baselines of its last validation
(``val_metrics.json``) as flat lines.
"""

from __future__ import annotations

import re

from fsdtrain.review.charts import Series, line_chart
from fsdtrain.review.runs import Run, read_metrics_table

__all__ = ["BASELINES", "Chart", "run_charts", "baseline_points"]

BASELINES = {"constant_velocity": ("constant velocity", "#7f7f7f"), "ego_mlp": ("ego MLP", "#d62728")}
"""Reference predictors drawn dashed beside the model: name -> (legend, colour)."""
_MODEL_COLOR = "#1f77b4"
_COUNTRY_KEY = re.compile(r"^val/([A-Z]{2})/l2_3s$")
_LR_KEY = re.compile(r"(^|/)(lr|learning_rate)($|[-_/])|^lr-")
_GRAD_KEY = re.compile(r"grad[_-]?norm|grad/norm")

Chart = tuple[str, str]
"""(title, SVG text)."""


def baseline_points(run: Run, country: str, metric: str = "l2_3s") -> dict[str, list[tuple[float, float]]]:
    """predictor -> (step, value) of ``metric`` of each baseline on ``country`` (``overall`` too), per
    validation from the logged tables; else the last validation's value at the first and last step of
    the model's curve (a flat reference line)."""
    out: dict[str, list[tuple[float, float]]] = {p: [] for p in BASELINES}
    key = "val/l2_3s" if country == "overall" else f"val/{country}/l2_3s"
    model_steps = [s for s, _ in run.series(key)]
    for w in run.wandb:
        for row in w.history:
            table = row.get("val/metrics_table")
            step = row.get("trainer/global_step", row.get("_step"))
            if not isinstance(table, dict) or not isinstance(step, (int, float)) or isinstance(step, bool):
                continue
            for r in read_metrics_table(w.media_file(table.get("path"), "history val/metrics_table")):
                value = r.get(metric)
                if (
                    r.get("country") == country
                    and r.get("predictor") in out
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    out[r["predictor"]].append((float(step), float(value)))
    for predictor, points in out.items():
        # Lightning logs a validation's scalars one step before the table logged at its end: one point
        # per validation either way, so the table's points take the model curve's steps
        if len(points) == len(model_steps):
            out[predictor] = [(s, v) for s, (_, v) in zip(model_steps, points)]
    if any(out.values()) or run.val_metrics is None:
        return out
    entry = (
        run.val_metrics["overall"]
        if country == "overall"
        else run.val_metrics["per_country"].get(country, {})
    )
    steps = model_steps or [float(run.val_metrics.get("global_step", 0))]
    for predictor in out:
        value = (entry.get(predictor) or {}).get(metric)
        if isinstance(value, (int, float)):
            out[predictor] = [(min(steps), float(value)), (max(steps), float(value))]
    return out


def _with_baselines(title: str, run: Run, model_key: str, country: str) -> Chart | None:
    series = [Series("model", tuple(run.series(model_key)), color=_MODEL_COLOR)]
    for predictor, points in baseline_points(run, country).items():
        legend, color = BASELINES[predictor]
        series.append(Series(legend, tuple(points), dashed=True, color=color))
    svg = line_chart(title, series, y_label="metres")
    return (title, svg) if svg and series[0].points else None


def _chart(title: str, run: Run, keys: list[str], y_label: str = "") -> Chart | None:
    svg = line_chart(title, [Series(k, tuple(run.series(k))) for k in keys], y_label=y_label)
    return (title, svg) if svg else None


def run_charts(run: Run) -> list[Chart]:
    """The charts of ``run`` that it has data for, in reading order."""
    keys = run.keys()
    charts = [
        _chart("loss", run, [k for k in ("train/loss", "train/ego_mlp", "val/loss") if k in keys]),
        _with_baselines("val L2 at 3 s, all countries", run, "val/l2_3s", "overall"),
    ]
    for country in sorted(m.group(1) for k in keys if (m := _COUNTRY_KEY.match(k))):
        charts.append(_with_baselines(f"val L2 at 3 s, {country}", run, f"val/{country}/l2_3s", country))
    charts += [
        _chart("learning rate", run, sorted(k for k in keys if _LR_KEY.search(k))),
        _chart("gradient norm", run, sorted(k for k in keys if _GRAD_KEY.search(k))),
        _chart("windows/s per rank", run, [k for k in ("perf/windows_per_s_per_rank",) if k in keys]),
        _chart(
            "data-wait fraction", run, [k for k in ("perf/data_wait_fraction",) if k in keys], "of step time"
        ),
    ]
    return [c for c in charts if c is not None]
