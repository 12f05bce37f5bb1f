"""Synthetic camera frames rendered (+ encoded) per second per core (DESIGN.md §10, ``synth_speed.py``).

Builds a few 10 s clips of CN, US and DE at 160x96 with the 6-camera rig into a temp dir and
measures, in one process (so one core):

- ``render_only_frames_per_s``: planning + rendering camera frames, no video encoding;
- ``frames_per_s``: the whole ``synth_fleet`` path: plan, render, H.264 encode, tar, write shards.

With ``--workers N`` (default: 2 where there are 2 cores) it also times ``synth_fleet(workers=N)``
and reports the aggregate figure. The last line printed is one JSON object.

    python benchmarks/synth_speed.py [--clips 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from fsdtrain.data.render import Renderer
from fsdtrain.data.rig import default_rig
from fsdtrain.data.synth import clip_seed, plan_clip, synth_fleet

COUNTRIES = ["CN", "US", "DE"]
WIDTH, HEIGHT, FPS, SECONDS = 160, 96, 10.0, 10.0


def _render_only(clips: int) -> tuple[float, float, int]:
    """Seconds to build a renderer, seconds to plan + render ``clips`` clips per country, frames rendered."""
    t0 = time.perf_counter()
    renderer = Renderer(default_rig(), WIDTH, HEIGHT)
    setup = time.perf_counter() - t0
    frames = 0
    t0 = time.perf_counter()
    for country in COUNTRIES:
        for i in range(clips):
            plan = plan_clip(country, seed=clip_seed(0, "bench", country, i), fps=FPS, seconds=SECONDS)
            out = renderer.render(plan)  # [F, N_cam, H, W, 3]
            frames += out.shape[0] * out.shape[1]
    return setup, time.perf_counter() - t0, frames


def _fleet(root: str, clips: int, workers: int) -> tuple[float, int, int]:
    """Wall seconds for ``synth_fleet``, camera frames written, bytes written."""
    t0 = time.perf_counter()
    manifests = synth_fleet(
        f"file://{root}", COUNTRIES, clips, clips_per_shard=clips, split="bench", width=WIDTH, height=HEIGHT,
        fps=FPS, seconds=SECONDS, workers=workers,
    )
    wall = time.perf_counter() - t0
    frames = sum(m.samples * m.frames * len(m.cameras) for m in manifests)
    return wall, frames, sum(m.bytes for m in manifests)


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to platform below
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2, help="clips per country (3 countries, 10 s, 6 cameras each)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for the parallel run")
    args = parser.parse_args()

    setup_s, render_s, render_frames = _render_only(args.clips)
    print(f"render only: {render_frames} camera frames in {render_s:.2f} s (renderer setup {setup_s:.2f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="synth_speed_") as tmp:
        fleet_s, fleet_frames, fleet_bytes = _fleet(os.path.join(tmp, "one"), args.clips, workers=1)
        print(f"render + encode + write, 1 process: {fleet_frames} camera frames in {fleet_s:.2f} s", flush=True)
        result = {
            "frames_per_s": round(fleet_frames / fleet_s, 1),
            "render_only_frames_per_s": round(render_frames / render_s, 1),
            "width": WIDTH,
            "height": HEIGHT,
            "cameras": len(default_rig()),
            "fps": FPS,
            "clip_seconds": SECONDS,
            "clips": args.clips * len(COUNTRIES),
            "bytes_per_clip": fleet_bytes // (args.clips * len(COUNTRIES)),
            "renderer_setup_s": round(setup_s, 3),
            "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        }
        if args.workers > 1:
            par_s, par_frames, _ = _fleet(os.path.join(tmp, "par"), args.clips, workers=args.workers)
            print(f"render + encode + write, {args.workers} processes: {par_frames} camera frames in {par_s:.2f} s", flush=True)
            result[f"frames_per_s_{args.workers}_workers"] = round(par_frames / par_s, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
