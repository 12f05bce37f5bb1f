"""Synthetic camera frames rendered (+ encoded) per second per core (docs/contributing.md, ``synth_speed.py``).

Goal (issue 3): at least 500 camera frames/s per core rendered + H.264-encoded at 224x128.

For each configuration (image size, rig, scenario) it builds a few 10 s clips of CN, US and DE
into a temp dir and measures, in one process (so one core):

- ``render_only_frames_per_s``: planning + rendering camera frames, no video encoding;
- ``frames_per_s``: the whole ``synth_fleet`` path: plan, render, H.264 encode, tar, write shards;
- ``frames_per_cpu_s`` and ``render_only_frames_per_cpu_s``: the same per second of this process's
  CPU time, which other processes on a shared machine change much less than wall time.

Configurations: ``160x96`` and ``224x128`` with the default 6-camera rig in daylight (the
defaults), ``224x128-mixed`` (day/night/rain 2:1:1, 0-8 vehicles, lane changes in 30 % of clips)
and ``224x128-surround8-mixed`` (the same with 8 cameras). With ``--workers N`` (default: 2
where there are 2 cores) it also times ``synth_fleet(workers=N)`` for the 224x128 default and
reports the aggregate figure. The load average before and after is printed too: other processes
on the machine make the figures smaller. The last line printed is one JSON object.

    python benchmarks/synth_speed.py [--clips 2] [--workers 2] [--only 224x128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from machine import cpu_name

from fsdtrain.synth.fleet import ClipSpec, synth_fleet
from fsdtrain.synth.render import Renderer
from fsdtrain.synth.rig import make_rig
from fsdtrain.synth.scene import Scenario, clip_seed, plan_clip

COUNTRIES = ["CN", "US", "DE"]
FPS, SECONDS = 10.0, 10.0
GOAL_FRAMES_PER_S, GOAL_CONFIG = 500.0, "224x128"
_MIXED = dict(conditions="day=2,night=1,rain=1", vehicles="0-8", lane_change=0.3)
CONFIGS: dict[str, dict] = {
    "160x96": dict(width=160, height=96, rig="surround6"),
    "224x128": dict(width=224, height=128, rig="surround6"),
    "224x128-mixed": dict(width=224, height=128, rig="surround6", **_MIXED),
    "224x128-surround8-mixed": dict(width=224, height=128, rig="surround8", **_MIXED),
}
"""Measured configurations: ``synth_fleet`` keyword arguments by name."""


def _render_only(config: dict, clips: int) -> tuple[float, float, float, int]:
    """Seconds to build a renderer, wall and CPU seconds to plan + render ``clips`` clips per country, frames rendered."""
    t0 = time.perf_counter()
    renderer = Renderer(make_rig(config["rig"]), config["width"], config["height"])
    setup = time.perf_counter() - t0
    scenario = Scenario(**{k: v for k, v in config.items() if k in ("conditions", "vehicles", "lane_change")})
    frames = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for country in COUNTRIES:
        for i in range(clips):
            plan = plan_clip(country, seed=clip_seed(0, "bench", country, i), fps=FPS, seconds=SECONDS, scenario=scenario)
            out = renderer.render(plan)  # [F, N_cam, H, W, 3]
            frames += out.shape[0] * out.shape[1]
    return setup, time.perf_counter() - t0, time.process_time() - c0, frames


def _fleet(root: str, config: dict, clips: int, workers: int) -> tuple[float, float, int, int]:
    """Wall and CPU seconds (this process only) for ``synth_fleet``, camera frames written, bytes written."""
    t0, c0 = time.perf_counter(), time.process_time()
    manifests = synth_fleet(
        f"file://{root}", COUNTRIES, clips, clips_per_shard=clips, split="bench", workers=workers,
        clip=ClipSpec(fps=FPS, seconds=SECONDS, **{k: v for k, v in config.items() if k in ("width", "height", "rig")}),
        scenario=Scenario(**{k: v for k, v in config.items() if k in ("conditions", "vehicles", "lane_change")}),
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    frames = sum(m.samples * m.frames * len(m.cameras) for m in manifests)
    return wall, cpu, frames, sum(m.bytes for m in manifests)


def _measure(name: str, config: dict, clips: int, tmp: str) -> dict:
    """One configuration's figures (see the module docstring)."""
    setup_s, render_s, render_cpu, render_frames = _render_only(config, clips)
    fleet_s, fleet_cpu, fleet_frames, fleet_bytes = _fleet(os.path.join(tmp, name), config, clips, workers=1)
    result = {
        "config": name,
        "frames_per_s": round(fleet_frames / fleet_s, 1),
        "frames_per_cpu_s": round(fleet_frames / fleet_cpu, 1),
        "render_only_frames_per_s": round(render_frames / render_s, 1),
        "render_only_frames_per_cpu_s": round(render_frames / render_cpu, 1),
        **config,
        "cameras": len(make_rig(config["rig"])),
        "bytes_per_clip": fleet_bytes // (clips * len(COUNTRIES)),
        "renderer_setup_s": round(setup_s, 3),
    }
    print(
        f"{name}: {result['frames_per_s']} camera frames/s rendered + encoded + written (1 process; "
        f"{result['frames_per_cpu_s']} per CPU second), {result['render_only_frames_per_s']} render only",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2, help="clips per country (3 countries, 10 s each)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for the parallel run")
    parser.add_argument("--only", default=None, help=f"comma-separated configurations (default all: {', '.join(CONFIGS)})")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="synth_speed_") as tmp:
        results = [_measure(name, CONFIGS[name], args.clips, tmp) for name in names]
        summary: dict = {}
        if args.workers > 1 and GOAL_CONFIG in names:
            par_s, _, par_frames, _ = _fleet(os.path.join(tmp, "par"), CONFIGS[GOAL_CONFIG], args.clips, workers=args.workers)
            summary[f"frames_per_s_{args.workers}_workers"] = round(par_frames / par_s, 1)
            print(f"{GOAL_CONFIG}, {args.workers} processes: {summary[f'frames_per_s_{args.workers}_workers']} camera frames/s", flush=True)
    goal = next((r["frames_per_s"] for r in results if r["config"] == GOAL_CONFIG), None)
    goal_cpu = next((r["frames_per_cpu_s"] for r in results if r["config"] == GOAL_CONFIG), None)
    print(
        json.dumps(
            {
                "frames_per_s_224x128": goal,
                "frames_per_cpu_s_224x128": goal_cpu,
                "goal_frames_per_s": GOAL_FRAMES_PER_S,
                "meets_goal": None if goal is None else goal >= GOAL_FRAMES_PER_S,
                **summary,
                "configs": results,
                "fps": FPS,
                "clip_seconds": SECONDS,
                "clips": args.clips * len(COUNTRIES),
                "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
            }
        )
    )


if __name__ == "__main__":
    main()
