"""``fsdtrain report RUN_DIR... --out report.html``: one self-contained HTML page for reviewers.

The page holds everything inline (SVG charts, PNG pictures as base64, CSS; no script, no network),
so it opens from a disk or a mail attachment where W&B cannot be reached. Sections: the runs side
by side (what differs in their configs), lineage, training curves, evaluation tables (every
predictor and metric of docs/report-format.md), pictures. It reads only the runs' own files
(fsdtrain/review/runs.py), never the shards.

Camera frames follow the W&B media rule (fsdtrain/review/pictures.py) for the page's destination
zone: ``--dest-zone``; by default the site zone (``--site.zone`` / ``$FSDTRAIN_SITE_ZONE``) when
given, else the zone the runs ran at (their files are there, so the page is made there too).
"""

from __future__ import annotations

import datetime
import html
import logging
import os
import tempfile
from pathlib import Path

from fsdtrain.errors import ConfigError
from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.eval.report import PREDICTORS
from fsdtrain.residency import GLOBAL_ZONE, SITE_ZONE_ENV, validate_zone
from fsdtrain.review.curves import run_charts
from fsdtrain.review.lineage import lineage
from fsdtrain.review.pictures import Picture, data_uri, eval_pictures, wandb_pictures
from fsdtrain.review.runs import Run, read_run

__all__ = ["destination_zone", "config_differences", "render_page", "write_page"]

log = logging.getLogger(__name__)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1a1a1a;max-width:1500px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.note{color:#555}.warn{background:#fff4d6;padding:6px 10px;border-left:4px solid #e0a800}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td.t,th.t{text-align:left}td.best{font-weight:bold;background:#eaf6ea}
.charts{display:flex;flex-wrap:wrap;gap:10px}.chart{border:1px solid #eee;background:#fff}
.chart-title{font-weight:bold;font-size:13px}.tick,.legend{font-size:10px}.axis{font-size:11px;fill:#555}
.grid{stroke:#eee}.frame{fill:none;stroke:#bbb}
.lineage{display:flex;flex-wrap:wrap;align-items:flex-start;gap:6px}.card{border:1px solid #ccc;border-radius:6px;padding:8px;max-width:340px}
.card.off{border-style:dashed;color:#555}.card b{font-size:14px}.card td{border:0;padding:1px 4px;text-align:left;font-size:12px;word-break:break-all}
.arrow{font-size:26px;align-self:center;color:#888}
figure{display:inline-block;margin:4px;vertical-align:top}figcaption{font-size:11px;color:#555;max-width:420px}
"""


def destination_zone(runs: list[Run], dest_zone: str | None, site_zone: str | None) -> str:
    """The zone the page is for: ``dest_zone``; else ``site_zone`` (or ``$FSDTRAIN_SITE_ZONE``); else the one
    zone other than ``global`` the runs ran at (``global`` when none did). Runs of two such zones
    cannot have their files on one site: that needs ``--dest-zone``."""
    if dest_zone:
        return validate_zone(dest_zone, "--dest-zone")
    configured = site_zone or os.environ.get(SITE_ZONE_ENV)
    if configured:
        return validate_zone(configured, "site zone")
    zones = sorted({r.site_zone for r in runs if r.site_zone and r.site_zone != GLOBAL_ZONE})
    if len(zones) > 1:
        raise ConfigError(
            f"the runs ran at sites of zones {', '.join(zones)}; say which zone the report is for with --dest-zone"
        )
    return zones[0] if zones else GLOBAL_ZONE


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: value}


def config_differences(runs: list[Run]) -> tuple[list[Run], list[tuple[str, list[object]]]]:
    """(runs that recorded a config, [(dotted key, value per run)] for every key whose values differ);
    ``workdir`` and the paths Lightning derives from it always differ and are left out."""
    with_config = [r for r in runs if r.config is not None]
    flat = [_flatten(r.config) for r in with_config]
    rows = []
    for key in sorted(set().union(*flat)) if flat else []:
        values = [f.get(key) for f in flat]  # a key a run lacks reads as null, as an unset config value
        if key in ("workdir", "trainer.default_root_dir") or len({repr(v) for v in values}) == 1:
            continue
        rows.append((key, values))
    return with_config, rows


def _e(text: object) -> str:
    return html.escape(str(text))


def _cell(value: object) -> str:
    return "–" if value is None else _e(value if not isinstance(value, float) else f"{value:.6g}")


def _metric_table(report: dict, title: str, table_id: str) -> str:
    """Every country (then ``overall``) and predictor with every metric; each cell carries
    ``data-key="<country>/<predictor>/<metric>"`` and ``data-value`` (the number as the file holds it)
    and shows it to 4 decimals (``report.json``'s own precision: its numbers show unchanged)."""
    head = "".join(f"<th>{_e(k)}</th>" for k in ("clips", "windows", *METRIC_KEYS))
    rows = []
    for country, entry in [*report["per_country"].items(), ("overall", report["overall"])]:
        present = [p for p in PREDICTORS if entry.get(p)]
        best = {
            k: min((entry[p][k] for p in present if entry[p].get(k) is not None), default=None)
            for k in METRIC_KEYS
        }
        for p in present:
            cells = [
                f'<td class="t">{_e(country)}</td><td class="t">{_e(p)}</td><td>{entry["clips"]}</td><td>{entry["windows"]}</td>'
            ]
            for k in METRIC_KEYS:
                v = entry[p].get(k)
                cls = ' class="best"' if v is not None and v == best[k] and len(present) > 1 else ""
                # report.json holds 4 decimals: its numbers show unchanged
                shown = "null" if v is None else _e(repr(round(v, 4)))
                cells.append(
                    f'<td{cls} data-key="{_e(country)}/{_e(p)}/{k}" data-value="{"null" if v is None else repr(v)}">{shown}</td>'
                )
            rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<h3>{_e(title)}</h3><table id=\"{_e(table_id)}\" class=\"metrics\"><tr><th class=\"t\">country</th><th class=\"t\">predictor</th>{head}</tr>"
        + "".join(rows) + "</table>"
    )  # fmt: skip


def _summary(runs: list[Run]) -> str:
    head = [
        "run",
        "job type",
        "site zone",
        "global step",
        "last train loss",
        "best val L2 3 s",
        "git SHA",
        "W&B",
    ]
    rows = []
    for r in runs:
        loss, l2 = r.series("train/loss"), r.series("val/l2_3s")
        meta = r.meta
        wandb = ", ".join(f"{w.project}/{w.run_id}" for w in r.wandb)
        cells = [r.name, r.job_type, r.site_zone or "", meta.global_step if meta and meta.global_step is not None else "",
                 f"{loss[-1][1]:.4f}" if loss else "", f"{min(v for _, v in l2):.4f}" if l2 else "", (meta.git_sha or "")[:12] if meta else "", wandb]  # fmt: skip
        rows.append("<tr>" + "".join(f'<td class="t">{_e(c)}</td>' for c in cells) + "</tr>")
    return (
        "<table><tr>"
        + "".join(f'<th class="t">{h}</th>' for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _differences(runs: list[Run]) -> str:
    with_config, rows = config_differences(runs)
    if len(with_config) < 2:
        return ""
    if not rows:
        return '<p class="note">The configs of these runs are the same (workdir aside).</p>'
    head = "".join(f'<th class="t">{_e(r.name)}</th>' for r in with_config)
    body = "".join(
        f'<tr><td class="t">{_e(k)}</td>' + "".join(f'<td class="t">{_cell(v)}</td>' for v in vs) + "</tr>"
        for k, vs in rows
    )
    return f'<h3>Config values that differ</h3><table id="config-diff"><tr><th class="t">key</th>{head}</tr>{body}</table>'


def _lineage(runs: list[Run]) -> str:
    parts = []
    for i, n in enumerate(lineage(runs)):
        if i and n.parent == i - 1:
            parts.append('<span class="arrow">&rarr;</span>')
        elif n.parent is not None:
            parts.append(
                f'<span class="arrow">&rarr;</span><span class="note">(from step {n.parent + 1})</span>'
            )
        facts = "".join(f'<tr><td class="t">{_e(k)}</td><td class="t">{_e(v)}</td></tr>' for k, v in n.facts)
        note = "" if n.on_page else '<br><span class="note">recorded by its child; not on this page</span>'
        parts.append(
            f'<div class="card{"" if n.on_page else " off"}"><b>{i + 1}. {_e(n.name)}</b> ({_e(n.job_type)}){note}<table>{facts}</table></div>'
        )
    return '<div class="lineage">' + "".join(parts) + "</div>"


def _figures(pictures: list[Picture]) -> str:
    return "".join(
        f'<figure><img src="{data_uri(p.png)}" alt="{_e(p.caption)}" data-camera="{str(p.camera).lower()}">'
        f"<figcaption>{_e(p.caption)}<br>{_e(p.source)}</figcaption></figure>"
        for p in pictures
    )


def render_page(runs: list[Run], dest_zone: str) -> str:
    """The HTML page for ``runs`` made for ``dest_zone`` (camera frames only where that zone allows them)."""
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>fsdtrain report: {_e(", ".join(r.name for r in runs))}</title>'
    ]
    out.append(f"<style>{_STYLE}</style></head><body>")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.append(f"<h1>fsdtrain report</h1><p class=\"note\">{len(runs)} run(s), made {now} for zone <b id=\"dest-zone\">{_e(dest_zone)}</b>: "
               f"camera frames only of windows whose zone is <code>global</code> or <code>{_e(dest_zone)}</code> (docs/residency.md).</p>")  # fmt: skip
    pictures: dict[str, list[Picture]] = {}
    cut = left_out = 0
    for r in runs:
        pics, n = eval_pictures(r, dest_zone)
        cut += n
        drawn = {p.window for p in pics}
        for w in r.wandb:
            more, m = wandb_pictures(w, dest_zone)
            # an eval run logs the windows of its --plots to W&B too: each window once
            pics += [p for p in more if not p.window or p.window not in drawn]
            left_out += m
        pictures[r.name] = pics
    if dest_zone != GLOBAL_ZONE and any(p.camera for ps in pictures.values() for p in ps):
        out.append(
            f'<p class="warn">This page holds camera frames for zone <b>{_e(dest_zone)}</b>: keep it inside that zone.</p>'
        )
    if cut or left_out:
        out.append(f'<p class="note">Not for zone {_e(dest_zone)}: {cut} eval picture(s) shown as the bird\'s-eye plot only, '
                   f"{left_out} W&B camera image(s) left out.</p>")  # fmt: skip
    out.append("<h2>Runs</h2>" + _summary(runs) + _differences(runs))
    out.append("<h2>Lineage</h2>" + _lineage(runs))
    for r in runs:
        charts = run_charts(r)
        if charts:
            out.append(
                f'<h2>Training curves: {_e(r.name)}</h2><div class="charts">'
                + "".join(svg for _, svg in charts)
                + "</div>"
            )
    tables = [
        _metric_table(
            r.report,
            f"{r.name}: report.json ({r.report.get('checkpoint') or 'baselines'})",
            f"report-{r.name}",
        )
        for r in runs
        if r.report is not None
    ]
    for r in runs:
        if r.val_metrics is not None:
            step = r.val_metrics.get("global_step")
            tables.append(
                _metric_table(
                    r.val_metrics,
                    f"{r.name}: last validation (val_metrics.json, step {step})",
                    f"val-{r.name}",
                )
            )
    if tables:
        out.append("<h2>Evaluation</h2><p class=\"note\">Metres (miss rate: a fraction); L2 at N s (UniAD) and "
                   "averaged up to N s (ST-P3/VAD); docs/report-format.md. Bold: the lowest of a country's predictors.</p>" + "".join(tables))  # fmt: skip
    for name, pics in pictures.items():
        if pics:
            out.append(f"<h2>Pictures: {_e(name)}</h2>{_figures(pics)}")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_page(
    run_dirs: list[str], out: str | os.PathLike, *, dest_zone: str | None = None, site_zone: str | None = None
) -> Path:
    """Reads ``run_dirs`` and writes the page to ``out`` atomically (a failed report never leaves a
    half page, nor replaces an old one); returns the path written."""
    if not run_dirs:
        raise ConfigError(
            "report needs at least one run folder: fsdtrain report RUN_DIR... --out report.html"
        )
    runs = [read_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for (
        r
    ) in runs:  # names label the page's sections and tables: two folders of one name get their parent's too
        if names.count(r.path.name) > 1:
            r.label = f"{r.path.parent.name}/{r.path.name}"
    declared = site_zone or os.environ.get(SITE_ZONE_ENV)
    if declared:  # a declared site may hold only runs whose weights learned from zones it may hold
        for r in runs:
            if r.meta is not None:
                r.meta.check_site(validate_zone(declared, "site zone"), "report")
    zone = destination_zone(runs, dest_zone, site_zone)
    page = render_page(runs, zone)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info(
        "report of %d run(s) for zone %s written to %s (%d KiB)", len(runs), zone, path, len(page) // 1024
    )
    return path
