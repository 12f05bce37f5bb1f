"""RGB conversion of decoded frames: one FFmpeg scaler per video (what ``decode_video`` does) against
PyAV's ``frame.to_ndarray(format="rgb24")``, which sets up a scaler for every frame; that scaler in
the calling thread (``threads=1``, what ``decode_video`` does) against PyAV's default, which splits
every frame over scaler threads of its own (one per core); and, for the
channels-first arrays the loader needs, FFmpeg's planar ``gbrp`` output copied plane by plane
against ``rgb24`` then a transposing copy (tried for the loader and not kept).

Every frame is freshly decoded and converted once, as in the loader (synthetic 160x96 clips,
H.264); only the conversion is timed, both sides alternating in several rounds in one run. Prints the median ratio and the min-max over rounds, and
checks that each pair gives the same pixels. The last line is one JSON object.

    python benchmarks/rgb_convert.py [--clips 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

from fsdtrain.synth.fleet import synth_fleet  # noqa: E402


def per_frame():
    return lambda f: f.to_ndarray(format="rgb24")


def one_scaler():
    rgb = VideoReformatter()
    return lambda f: rgb.reformat(f, format="rgb24").to_ndarray()


def one_scaler_one_thread():
    rgb = VideoReformatter()
    return lambda f: rgb.reformat(f, format="rgb24", threads=1).to_ndarray()


def rgb_then_transpose():
    rgb = VideoReformatter()
    return lambda f: np.ascontiguousarray(rgb.reformat(f, format="rgb24").to_ndarray().transpose(2, 0, 1))


def planar():
    rgb = VideoReformatter()

    def convert(f):
        g = rgb.reformat(f, format="gbrp")
        a = np.empty((3, g.height, g.width), dtype=np.uint8)
        for channel, plane in zip((1, 2, 0), g.planes):  # planes G, B, R, rows padded to line_size
            a[channel] = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: g.height, : g.width]
        return a

    return convert


def converted(make, videos: list[bytes]) -> tuple[float, list[np.ndarray]]:
    """Seconds spent converting, and the arrays: every frame freshly decoded and converted once, as
    ``decode_video`` does (``make`` gives one converter per video)."""
    spent, out = 0.0, []
    for data in videos:
        convert = make()
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                t0 = time.perf_counter()
                out.append(convert(frame))
                spent += time.perf_counter() - t0
    return spent, out


def compare(a, b, videos: list[bytes], rounds: int) -> dict:
    ratios, same, frames = [], True, 0
    for _ in range(rounds):  # alternate the sides so drift hits both
        ta, xa = converted(a, videos)
        tb, xb = converted(b, videos)
        ratios.append(tb / ta)
        same = same and all(np.array_equal(x, y) for x, y in zip(xa, xb))
        frames = len(xa)
    return {
        "ratio": round(statistics.median(ratios), 3), "spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "same_pixels": same, "ms_per_frame": [round(ta / frames * 1e3, 4), round(tb / frames * 1e3, 4)], "frames": frames,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="synthetic clips (6 cameras, 100 frames each)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (m,) = synth_fleet(f"file://{tmp}/d", ["US"], args.clips, clips_per_shard=args.clips, workers=min(2, os.cpu_count() or 1))
        videos = []
        for shard in m.shards:
            with tarfile.open(Path(tmp) / "d" / "train" / "US" / shard.name) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".mp4"):
                        videos.append(tar.extractfile(member).read())
    scaler = compare(per_frame, one_scaler, videos, args.rounds)
    threads = compare(one_scaler, one_scaler_one_thread, videos, args.rounds)
    layout = compare(rgb_then_transpose, planar, videos, args.rounds)
    print(f"one scaler per video / one per frame: {scaler['ratio']} (rounds {scaler['spread']}), same pixels {scaler['same_pixels']}")
    print(f"scaler in this thread / own threads:  {threads['ratio']} (rounds {threads['spread']}), same pixels {threads['same_pixels']}")
    print(f"planar gbrp / rgb24 + transpose:      {layout['ratio']} (rounds {layout['spread']}), same pixels {layout['same_pixels']}")
    print(json.dumps({
        "one_scaler_vs_per_frame": scaler, "one_thread_vs_scaler_threads": threads, "planar_vs_rgb_transpose": layout, "videos": len(videos),
        "size": "160x96", "machine": f"{cpu_name()}, {os.cpu_count()} cores",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
