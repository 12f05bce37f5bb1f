"""The synthetic fleet: seeded surround-camera driving clips with country-specific behaviour.

Like torchgeo's per-dataset generators, this is part of the product: tests, demos and benchmarks
build their data with it. Every clip is a pure function of ``(seed, split, country, index)``
(:func:`clip_seed`), so the same call gives byte-identical shards and one country's clips do not
depend on which other countries were asked for.

A clip is planned (:func:`plan_clip`: road, ego motion, other vehicles), rendered
(:class:`~fsdtrain.synth.render.Renderer`: a lookup of each camera's ground points in a top-down
raster of the road, plus a ray test against the vehicles' boxes) and encoded (:func:`make_clip`).
A :class:`Scenario` sets what varies between clips besides the country: day, night or rain, how
many other vehicles, and how often the ego changes lanes; the camera rig is chosen by name.

Country styles change what the right trajectory is, not only the look: driving side, lane width,
cruise speed, how hard curves are taken (max lateral acceleration, anticipation, braking) and the
ego's offset in its lane. CN drives slower, slows earlier and harder for curves, and keeps left
in its lane; a model that saw only US/DE is measurably wrong on CN.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fsdtrain.errors import ConfigError
from fsdtrain.format.manifest import Manifest, dataset_name, validate_split
from fsdtrain.format.schema import ClipMeta, clip_key, encode_npy
from fsdtrain.format.video import encode_video
from fsdtrain.format.writer import ShardSet, ShardWriter, publish_all
from fsdtrain.pools import fork_pool
from fsdtrain.store import objects
from fsdtrain.synth.render import Renderer
from fsdtrain.synth.rig import DEFAULT_RIG, calib_json, make_rig
from fsdtrain.synth.scene import STYLES, Scenario, clip_seed, country_style, plan_clip

__all__ = ["ClipSpec", "make_clip", "synth_fleet"]


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """What a synthetic clip looks like, whatever it shows: image size, rate, length, keyframes, cameras.

    Checked on construction (one line naming the bad value). :class:`~fsdtrain.synth.scene.Scenario`
    says what the clips show (weather, traffic, lane changes).
    """

    width: int = 160
    """Image width, pixels (even, >= 16)."""
    height: int = 96
    """Image height, pixels (even, >= 16)."""
    fps: float = 10.0
    """Frame rate."""
    seconds: float = 10.0
    """Clip length."""
    gop: int = 10
    """Keyframe interval of the videos, frames."""
    rig: str = DEFAULT_RIG
    """Camera rig name (:data:`~fsdtrain.synth.rig.RIGS`: ``surround6``, ``surround6_narrow``, ``surround8``)."""
    only: tuple[str, ...] | None = None
    """Cameras of the rig to render (default: all): a job that reads one camera need not pay for seven.
    Each camera's frames do not depend on which others are rendered."""

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ConfigError(f"image size {self.width}x{self.height}: width and height must be even and at least 16")
        if not self.fps > 0 or int(round(self.seconds * self.fps)) < 2:
            raise ConfigError(f"seconds={self.seconds} at fps={self.fps} gives fewer than 2 frames per clip; use a longer clip")
        if self.gop < 1:
            raise ConfigError(f"gop={self.gop} must be at least 1 frame")
        rig = [c.name for c in make_rig(self.rig)]  # an unknown rig fails here, with the known ones
        if self.only is not None:
            unknown = [c for c in self.only if c not in rig]
            if not self.only or unknown:
                raise ConfigError(f"cameras {list(self.only)}: rig {self.rig} has {', '.join(rig)}; name at least one of them")

    @property
    def cameras(self) -> list[str]:
        """Camera names rendered, in rig order."""
        return [c.name for c in _rig(self.rig, self.only)]

def _rig(rig: str, only: tuple[str, ...] | None) -> list:
    return [c for c in make_rig(rig) if only is None or c.name in only]


@lru_cache(maxsize=4)
def _renderer(rig: str, width: int, height: int, only: tuple[str, ...] | None = None) -> Renderer:
    """One renderer per process, rig, size and cameras: its per-camera lookup tables are reused for every clip."""
    return Renderer(_rig(rig, only), width, height)


def make_clip(
    country: str,
    *,
    seed: int,
    index: int,
    split: str = "train",
    clip: ClipSpec = ClipSpec(),  # noqa: B008 (frozen dataclass)
    scenario: Scenario | None = None,
) -> dict[str, bytes]:
    """Plans, renders and encodes clip ``index`` of a fleet; returns its webdataset sample (docs/data-format.md).

    The sample has ``__key__`` (``synth_<cc>_s<seed>_<split>_<index:06d>-000000``), ``meta.json``,
    ``calib.json``, ``ego.npy`` and one ``<camera>.mp4`` per camera of the rig (:data:`~fsdtrain.synth.rig.RIGS`).
    """
    style = country_style(country)
    width, height, fps, rig = clip.width, clip.height, clip.fps, clip.rig
    plan = plan_clip(style.code, seed=clip_seed(seed, split, style.code, index), fps=fps, seconds=clip.seconds, scenario=scenario)
    renderer = _renderer(rig, width, height, clip.only)
    frames = renderer.render(plan)  # [F, N_cam, H, W, 3]
    drive_id = f"synth_{style.code.lower()}_s{seed}_{split}_{index:06d}"
    key = clip_key(drive_id, 0)
    cameras = [c.name for c in renderer.rig]
    meta = ClipMeta(
        clip_id=key, drive_id=drive_id, country=style.code, zone=style.zone, timestamp_us=plan.timestamp_us,
        fps=float(fps), frames=len(plan.ego), cameras=cameras, tags={**plan.tags, "rig": rig, "seed": seed, "index": index},
    )
    sample = {
        "__key__": key,
        "meta.json": meta.to_json(),
        "calib.json": json.dumps(calib_json(renderer.rig, width, height), sort_keys=True).encode(),
        "ego.npy": encode_npy(plan.ego.astype(np.float64)),
    }
    for c, name in enumerate(cameras):
        sample[f"{name}.mp4"] = encode_video(np.ascontiguousarray(frames[:, c]), fps, gop=clip.gop)
    return sample


def _make_clip_kw(kwargs: dict) -> dict[str, bytes]:
    """Pool entry point: :func:`make_clip` with keyword arguments (``imap`` passes one object)."""
    return make_clip(**kwargs)


def synth_fleet(
    out: str,
    countries: list[str],
    clips: int,
    *,
    clips_per_shard: int = 8,
    split: str = "train",
    seed: int = 0,
    clip: ClipSpec = ClipSpec(),  # noqa: B008 (frozen dataclass)
    scenario: Scenario = Scenario(),  # noqa: B008 (frozen dataclass)
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    replace: bool = False,
) -> list[Manifest]:
    """Writes ``clips`` synthetic clips per country to ``<out>/<split>/<country>/`` (shards + manifest).

    Every country's shards are written before any manifest is saved, so a run that fails publishes
    nothing and leaves what ``out`` held as it was (:class:`~fsdtrain.format.writer.ShardWriter`).

    Args:
        out: dataset URL (``s3://bucket/prefix/NAME`` or ``file:///dir/NAME``); ``NAME`` is the dataset name.
        countries: country codes, see :data:`STYLES`.
        clips: clips per country.
        clips_per_shard: clips per tar shard.
        split: split name (``[A-Za-z0-9_-]``); it enters every clip's seed, so splits never share clips.
        seed: fleet seed; the same arguments give byte-identical shards.
        clip: image size, frame rate, length, keyframe interval and camera rig of every clip.
        scenario: what the clips show: conditions (default all day), other vehicles, lane changes.
        workers: processes rendering clips in parallel (a fork pool, so Linux/macOS); the output does not depend on it.
        progress: called with a one-line message after each clip.
        replace: replace the datasets already in these ``<split>/<country>`` directories (each
            switches to the new version once all are written) instead of refusing them.

    Returns:
        One manifest per country, in the order given.

    Raises:
        ConfigError: a bad argument, or a ``<split>/<country>`` directory already holds a dataset
            and ``replace`` is not given (checked before any clip is rendered).
        StoreError: ``out`` cannot be written (unreachable, denied, disk full).
    """
    if clips < 1 or clips_per_shard < 1 or workers < 1:
        raise ConfigError(f"clips={clips}, clips_per_shard={clips_per_shard} and workers={workers} must all be at least 1")
    validate_split(split)
    if not countries:
        raise ConfigError(f"no countries given; known: {', '.join(sorted(STYLES))}")
    styles = [country_style(c) for c in countries]
    if len({s.code for s in styles}) != len(styles):
        raise ConfigError(f"countries {countries} list a country twice")
    cameras = clip.cameras
    dataset = dataset_name(out)
    with contextlib.ExitStack() as stack:  # a writer left open when this block raises removes what it wrote
        writers: list[ShardWriter] = []
        for style in styles:  # every directory is checked (refused unless replace) before any clip is rendered
            shard_set = ShardSet(dataset=dataset, split=split, country=style.code, zone=style.zone, cameras=cameras, fps=clip.fps)
            writer = ShardWriter(objects.join_url(out, split, style.code), shard_set, clips_per_shard=clips_per_shard, replace=replace)
            writers.append(stack.enter_context(writer))
        pool = stack.enter_context(fork_pool(workers)) if workers > 1 else None
        for style, writer in zip(styles, writers):
            common = dict(seed=seed, split=split, clip=clip, scenario=scenario)
            tasks = [dict(country=style.code, index=i, **common) for i in range(clips)]
            samples: Iterator[dict[str, bytes]] = pool.imap(_make_clip_kw, tasks) if pool is not None else map(_make_clip_kw, tasks)
            for sample in _report(samples, style.code, clips, progress):
                writer.write(sample)
        return publish_all(writers)


def _report(samples: Iterator[dict[str, bytes]], country: str, total: int, progress: Callable[[str], None] | None):
    for i, sample in enumerate(samples):
        if progress is not None:
            progress(f"{country}: clip {i + 1}/{total} {sample['__key__']}")
        yield sample
