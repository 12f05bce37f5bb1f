"""The pictures of a review page, and which of them may hold camera pixels for the page's destination.

Two sources, both written by the runs themselves: ``fsdtrain eval --plots`` PNGs (bird's-eye plot
beside the front camera, fsdtrain/eval/viz.py, named ``<country>-<clip>-<frame>.png``) and the images a
training run logged to W&B after its last validation (``val/birds_eye``: ego coordinates only;
``val/camera``: with the front camera; captions ``<country> <clip> frame <n>``).

Residency is the W&B media rule (docs/residency.md, fsdtrain/train/wandb_log.py): a picture with camera
pixels of a window goes into a page only when the page's destination zone is the window's zone or the
window's zone is ``global``; the window's zone is the residency policy's zone of its country
(:func:`~fsdtrain.residency.zone_of_country`). Where the rule says no, an eval picture keeps only its
bird's-eye panel (cut off the camera panel: the panel layout is viz.py's, checked by
tests/review/test_pictures.py against ``window_figure``) and a W&B camera image is left out; a picture
whose country cannot be told is left out whenever it holds camera pixels.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fsdtrain.errors import ConfigError
from fsdtrain.residency import GLOBAL_ZONE, zone_of_country
from fsdtrain.review.runs import Run
from fsdtrain.review.wandb_files import WandbRun

__all__ = ["Picture", "camera_allowed", "birds_eye_part", "eval_pictures", "wandb_pictures", "data_uri"]

TITLE_PX = 18  # viz.py: the title line over a figure's panels
_MAX_SIDE = (
    8192  # pixels: eval and W&B pictures are a few hundred; refuse a decompression bomb before decoding
)
_PLOT = re.compile(r"^([A-Z]{2})-(.+)-(\d{6})\.png$")
_CAPTION = re.compile(r"^([A-Z]{2}) ")


@dataclass(frozen=True)
class Picture:
    """One picture as it goes into the page.

    Args:
        png: PNG bytes.
        caption: what it shows (country, clip, frame).
        camera: whether it holds camera pixels.
        source: file it came from (shown to the reviewer).
        window: the window it draws (``<country> <clip> frame <n>``; '' when unknown).
    """

    png: bytes
    caption: str
    camera: bool
    source: str
    window: str = ""


def camera_allowed(country: str | None, dest_zone: str) -> bool:
    """Whether camera pixels of a window of ``country`` may go to a page for ``dest_zone``."""
    if country is None:
        return False
    zone = zone_of_country(country)
    return zone == GLOBAL_ZONE or zone == dest_zone


def _open_png(path: Path) -> Image.Image:
    """The decoded image of a PNG file; one-line error for anything else (size checked before decoding)."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise ConfigError(f"{path}: is {img.format}, not PNG")
            if max(img.size) > _MAX_SIDE:
                raise ConfigError(
                    f"{path}: {img.width}x{img.height} pixels is larger than a run's pictures ({_MAX_SIDE} max)"
                )
            img.load()
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a readable PNG ({type(exc).__name__}); was it written by fsdtrain eval --plots or W&B?"
        ) from None


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def birds_eye_part(img: Image.Image) -> Image.Image:
    """The bird's-eye panel of a ``window_figure`` (title line included): its left part, 3:4 of the panel
    height wide; the camera panel to its right is cut off."""
    panel_h = img.height - TITLE_PX
    width = panel_h * 3 // 4
    if panel_h <= 0 or width > img.width:
        raise ValueError(
            f"a {img.width}x{img.height} picture is not an eval figure (title over a 3:4 bird's-eye panel)"
        )
    return img.crop((0, 0, width, img.height))


def eval_pictures(run: Run, dest_zone: str) -> tuple[list[Picture], int]:
    """-> (pictures of ``run``'s ``plots/``, how many had their camera panel cut off for ``dest_zone``)."""
    out, cut = [], 0
    for path in run.pictures:
        m = _PLOT.match(path.name)
        if m is None:  # not named by eval (no country: its zone is unknown), so it could hold any camera
            raise ConfigError(
                f"{path}: not an eval picture name (<country>-<clip>-<frame>.png); move other files out of {path.parent}"
            )
        country, clip, frame = m.group(1), m.group(2), int(m.group(3))
        img = _open_png(path)
        caption = f"{country} {clip} frame {frame}"
        if camera_allowed(country, dest_zone):
            out.append(Picture(_png(img), caption, camera=True, source=str(path), window=caption))
            continue
        try:
            part = birds_eye_part(img)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        out.append(
            Picture(
                _png(part),
                caption + " (bird's-eye only: camera not for zone " + dest_zone + ")",
                camera=False,
                source=str(path),
                window=caption,
            )
        )
        cut += 1
    return out, cut


def _images(run: WandbRun, key: str) -> list[tuple[Path, str]]:
    """(file, caption) of the last logged value of the image key ``key`` (the last validation)."""
    values = [row[key] for row in run.history if isinstance(row.get(key), dict)]
    if not values:
        return []
    value = values[-1]
    where = f"history {key}"
    names, captions = value.get("filenames"), value.get("captions", [])
    if value.get("_type") == "image-file":  # a single image
        names, captions = [value.get("path")], [value.get("caption", "")]
    if not isinstance(names, list) or not isinstance(captions, list):
        raise ConfigError(
            f"{run.path}: {where} is {value.get('_type')!r} without a list of filenames and captions"
        )
    captions = captions + [""] * (len(names) - len(captions))
    return [(run.media_file(n, where), str(c)) for n, c in zip(names, captions)]


def wandb_pictures(run: WandbRun, dest_zone: str) -> tuple[list[Picture], int]:
    """-> (the last validation's images of a W&B run that ``dest_zone`` allows, camera images left out).

    ``*birds_eye*`` keys hold ego coordinates only; every other image key may hold camera pixels and
    goes in only where its caption names a country whose camera frames ``dest_zone`` allows."""
    keys = sorted(
        k
        for k in run.keys()
        if any(
            isinstance(r.get(k), dict) and str(r[k].get("_type", "")).startswith("image") for r in run.history
        )
    )
    # a window's camera figure holds its bird's-eye panel too: one picture per window
    by_caption: dict[str, Picture] = {}
    left_out = 0
    for key in sorted(keys, key=lambda k: "birds_eye" in k):  # camera keys first
        ego_only = "birds_eye" in key
        for path, caption in _images(run, key):
            m = _CAPTION.match(caption)
            if not ego_only and not camera_allowed(m.group(1) if m else None, dest_zone):
                left_out += 1
                continue
            if caption not in by_caption or not caption:
                by_caption[caption or str(path)] = Picture(
                    _png(_open_png(path)),
                    f"{key}: {caption}",
                    camera=not ego_only,
                    source=str(path),
                    window=caption,
                )
    return list(by_caption.values()), left_out


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``: the picture inside the HTML file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
