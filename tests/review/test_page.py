"""``fsdtrain report`` on real runs (tests/review/conftest.py), opened in a real headless browser
(Debian's chromium, installed by ``make browser``): every chart and picture renders, the table's
numbers are report.json's, lineage links pretrain -> fine-tune -> eval, and a page of a CN run for a
``global`` destination holds no camera frame."""

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from fsdtrain.cli import main
from fsdtrain.eval.metrics import METRIC_KEYS
from fsdtrain.review.pictures import TITLE_PX

# Runs in the browser after the page loaded: what it rendered, written into the DOM that --dump-dom prints.
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width,
                                               camera: i.dataset.camera, alt: i.alt}));
  const charts = [...document.querySelectorAll("svg.chart")].map(s => ({title: s.dataset.chart, series: +s.dataset.series,
      lines: s.querySelectorAll("polyline").length, w: s.getBoundingClientRect().width,
      drawn: [...s.querySelectorAll("polyline")].map(p => p.getBBox().width + p.getBBox().height)}));
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify({imgs, charts});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: run `make browser` (apt-get install -y chromium)"
    return exe


def rendered(page: Path, tmp_path: Path) -> tuple[str, dict]:
    """(the DOM after load, what the probe found) of ``page`` opened from a file in headless chromium."""
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8"
    )
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the page did not finish loading in chromium: " + proc.stdout[-500:]
    return proc.stdout, json.loads(html.unescape(found.group(1)))


class Cells(HTMLParser):
    """``data-key`` -> shown text of every table cell, per table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, str]] = {}
        self._table: str | None = None
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table, {})
        if tag == "td" and "data-key" in a:
            self._key = a["data-key"]

    def handle_data(self, data):
        if self._key is not None:
            self.tables[self._table][self._key] = data.strip()
            self._key = None


def report(*args: str) -> None:
    assert main(["report", *args]) == 0


@pytest.mark.slow
def test_the_report_renders_every_chart_and_picture_with_report_json_numbers(review_runs, tmp_path):
    out = tmp_path / "report.html"
    report(str(review_runs["pre"]), str(review_runs["cn"]), str(review_runs["eval"]), "--out", str(out))
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), (
        "the page must not load anything from the network"
    )
    dom, probe = rendered(out, tmp_path)

    # every chart drew its lines: loss, val L2 overall and per country with both baselines, speed
    charts = {c["title"]: c for c in probe["charts"]}
    assert all(
        c["w"] > 0 and c["lines"] == c["series"] and all(d > 0 for d in c["drawn"]) for c in probe["charts"]
    )
    titles = [c["title"] for c in probe["charts"]]
    for country in ("US", "DE", "CN"):
        assert charts[f"val L2 at 3 s, {country}"]["series"] == 3  # model, constant velocity, ego MLP
    assert (
        titles.count("loss") == 2
        and titles.count("windows/s per rank") == 2
        and titles.count("data-wait fraction") == 2
    )
    assert titles.count("val L2 at 3 s, all countries") == 2
    assert titles.count("learning rate") == 2 and titles.count("gradient norm") == 2

    # every picture decoded; the eval pictures of both countries and both training runs' validation pictures
    imgs = probe["imgs"]
    assert imgs and all(i["w"] > 0 and i["h"] > 0 and i["shown"] > 0 for i in imgs)
    plots = sorted((review_runs["eval"] / "plots").glob("*.png"))
    assert len(plots) == 4
    for plot in plots:
        country, rest = plot.stem.split("-", 1)
        assert any(
            i["alt"].startswith(f"{country} {rest.rsplit('-', 1)[0]} frame {int(rest.rsplit('-', 1)[1])}")
            for i in imgs
        )
    assert sum(i["alt"].startswith("val/") for i in imgs) >= 8  # 4 US (pretrain) + 4 CN (fine-tune) windows
    # made where the CN run ran (zone cn): CN camera frames may be in it, and it says so
    assert re.search(r'id="dest-zone">cn<', dom) and "holds camera frames for zone" in dom
    assert any(i["camera"] == "true" and i["alt"].startswith("CN") for i in imgs)

    # the evaluation table shows report.json's numbers, every one of them
    cells = Cells()
    cells.feed(dom)
    table = cells.tables["report-eval"]
    expected = json.loads((review_runs["eval"] / "report.json").read_text())
    want = {}
    for country, entry in [*expected["per_country"].items(), ("overall", expected["overall"])]:
        for predictor, metrics in entry.items():
            if isinstance(metrics, dict):
                want |= {f"{country}/{predictor}/{k}": metrics[k] for k in METRIC_KEYS}
    assert "CN/global_head/l2_3s" in want and "CN/ctra/l2_avg_3s" in want
    assert set(table) == set(want)
    for key, value in want.items():
        assert (table[key] == "null") if value is None else float(table[key]) == value, key

    # lineage: pretrain -> fine-tune -> eval, with manifest digests, zones and the git SHA
    cards = re.findall(r'<div class="card">(.*?)</table></div>', dom, re.S)
    assert [re.search(r"<b>\d+\. (\w+)</b>", c).group(1) for c in cards] == ["pre", "cn", "eval"]
    assert "manifest file://" in cards[0] and "git SHA" in cards[0] and "CN: cn" in cards[1]
    assert dom.count('class="arrow"') == 2
    # two training runs side by side: what differs in their configs
    diff = re.search(r'<table id="config-diff">(.*?)</table>', dom, re.S).group(1)
    assert "model.init_from" in diff and "model.optim.lr" in diff and "data.train" in diff


def _embedded_images(page: Path) -> list[tuple[str, Image.Image]]:
    text = page.read_text(encoding="utf-8")
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', text)
    return [(html.unescape(alt), Image.open(io.BytesIO(base64.b64decode(data)))) for data, alt in found]


def _has_camera_panel(img: Image.Image) -> bool:
    """An eval/W&B figure is a title over a 3:4 bird's-eye panel, and the camera panel to its right when there is one."""
    return img.width > (img.height - TITLE_PX) * 3 // 4


@pytest.mark.slow
def test_a_cn_run_reported_for_a_global_destination_holds_no_camera_frame(review_runs, tmp_path):
    cn, ev = str(review_runs["cn"]), str(review_runs["eval"])
    at_cn = tmp_path / "cn.html"
    report(cn, ev, "--out", str(at_cn))  # where the runs are (zone cn): CN camera frames allowed
    assert any(
        _has_camera_panel(img)
        for alt, img in _embedded_images(at_cn)
        if alt.startswith(("CN", "val/camera: CN"))
    )

    for_global = tmp_path / "global.html"
    report(cn, ev, "--out", str(for_global), "--dest-zone", "global")
    images = _embedded_images(for_global)
    cn_images = [(alt, img) for alt, img in images if " CN " in f" {alt} " or alt.startswith("CN")]
    assert len(cn_images) >= 6  # the 2 eval pictures and 4 validation windows of CN, bird's-eye only
    assert not any(_has_camera_panel(img) for _, img in cn_images)
    assert all(
        not _has_camera_panel(img) or alt.startswith("US") for alt, img in images
    )  # US (zone global) may go anywhere
    assert "camera not for zone global" in for_global.read_text()

    cn_alone = tmp_path / "cn-alone.html"
    report(cn, "--out", str(cn_alone), "--dest-zone", "global")
    assert _embedded_images(cn_alone) and not any(
        _has_camera_panel(img) for _, img in _embedded_images(cn_alone)
    )


@pytest.mark.slow
def test_a_damaged_wandb_run_file_is_a_one_line_error(review_runs, tmp_path, capsys):
    run = tmp_path / "cn"
    shutil.copytree(review_runs["cn"], run, ignore=shutil.ignore_patterns("checkpoints"))
    (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    data = bytearray(wandb_file.read_bytes())
    data[200] ^= 0xFF
    wandb_file.write_bytes(bytes(data))
    out = tmp_path / "page.html"
    out.write_text("an older page")
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith(f"fsdtrain: error: {wandb_file}: record at byte ")
        and "damaged" in err[0]
    )
    assert out.read_text() == "an older page"  # a failed report replaces nothing
