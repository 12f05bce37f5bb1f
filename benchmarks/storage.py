"""Bytes per clip in our shards vs the same frames as JPEG q90 files (docs/contributing.md, ``storage.py``).

The anchors store every camera frame as its own JPEG file. This builds a few 10 s synthetic clips
of CN, US and DE with the 6-camera rig (at 160x96, the default, and at 224x128), then compares, per
clip:

- ``ours``: bytes of our tar shards (H.264 videos, ``meta.json``, ``calib.json``, ``ego.npy``, tar
  headers and padding); index files and the manifest are reported apart;
- ``jpeg``: the same frames, decoded from our videos, saved one JPEG per camera frame at quality 90
  (PIL, 4:2:0), summed file sizes; also rounded up to 4 KiB blocks, as they would sit on a disk.

The figure is ``ratio`` = ours / jpeg at the default size and the writer's default keyframe interval
(GOP 10 frames, 1 s; goal: <= 0.25); ``ratio_224x128`` is the same at the larger size. Each further
GOP of ``--gops`` (default: 20) is measured too, as ``ratio_gop<N>`` and ``ratio_224x128_gop<N>``:
a longer GOP makes smaller files and costlier random access. The last line printed is one JSON object.

    python benchmarks/storage.py [--clips 2] [--quality 90] [--gops 10,20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import tempfile
import time

from machine import cpu_name
from PIL import Image

from fsdtrain.format.video import decode_video
from fsdtrain.store import objects
from fsdtrain.synth.fleet import ClipSpec, synth_fleet

COUNTRIES = ["CN", "US", "DE"]
SIZES = [(160, 96), (224, 128)]
FPS, SECONDS = 10.0, 10.0
_DISK_BLOCK = 4096


def _jpeg_bytes(frames, quality: int) -> tuple[int, int]:
    """Summed sizes of ``frames`` ([F, H, W, 3] uint8) as JPEG files, and the same in 4 KiB blocks."""
    total = on_disk = 0
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        size = buf.tell()
        total += size
        on_disk += -(-size // _DISK_BLOCK) * _DISK_BLOCK
    return total, on_disk


def _measure(root: str, width: int, height: int, gop: int, clips: int, quality: int) -> dict:
    """Writes ``clips`` clips per country at ``width`` x ``height`` and compares the two layouts."""
    t0 = time.perf_counter()
    manifests = synth_fleet(
        f"file://{root}", COUNTRIES, clips, clips_per_shard=clips, split="bench",
        clip=ClipSpec(width=width, height=height, fps=FPS, seconds=SECONDS, gop=gop),
    )  # fmt: skip
    synth_s = time.perf_counter() - t0
    n_clips = sum(m.samples for m in manifests)
    ours = sum(m.bytes for m in manifests)
    video = jpeg = jpeg_disk = frames_total = 0
    extra = 0  # index files and manifests
    t0 = time.perf_counter()
    for m in manifests:
        for key in objects.list_keys(m.url):
            if not key.endswith(".tar"):
                extra += len(objects.read_bytes(key))
        for shard in m.shards:
            with tarfile.open(fileobj=io.BytesIO(objects.read_bytes(m.shard_url(shard))), mode="r:") as tar:
                for info in tar:
                    if not info.name.endswith(".mp4"):
                        continue
                    data = tar.extractfile(info).read()
                    video += len(data)
                    frames = decode_video(data, frames=m.frames, where=info.name)  # [F, H, W, 3]
                    frames_total += len(frames)
                    size, disk = _jpeg_bytes(frames, quality)
                    jpeg += size
                    jpeg_disk += disk
    jpeg_s = time.perf_counter() - t0
    return {
        "clips": n_clips,
        "camera_frames": frames_total,
        "ours_bytes_per_clip": ours // n_clips,
        "video_bytes_per_clip": video // n_clips,
        "index_and_manifest_bytes_per_clip": extra // n_clips,
        "jpeg_bytes_per_clip": jpeg // n_clips,
        "jpeg_on_disk_bytes_per_clip": jpeg_disk // n_clips,
        "ratio": round(ours / jpeg, 4),
        "ratio_with_index": round((ours + extra) / jpeg, 4),
        "ratio_vs_jpeg_on_disk": round(ours / jpeg_disk, 4),
        "synth_s": round(synth_s, 2),
        "decode_and_jpeg_s": round(jpeg_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2, help="clips per country and size (3 countries, 10 s, 6 cameras each)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the comparison layout")
    parser.add_argument("--gops", default="10,20", help="keyframe intervals in frames; the first is the headline figure")
    args = parser.parse_args()
    gops = [int(g) for g in args.gops.split(",") if g.strip()]

    runs = {}
    with tempfile.TemporaryDirectory(prefix="storage_bench_") as tmp:
        for gop in gops:
            for width, height in SIZES:
                name = f"{width}x{height}_gop{gop}"
                r = _measure(os.path.join(tmp, name), width, height, gop, args.clips, args.quality)
                runs[name] = r
                print(
                    f"{width}x{height} GOP {gop}: ours {r['ours_bytes_per_clip'] / 1e3:.1f} KB/clip, JPEG q{args.quality} "
                    f"{r['jpeg_bytes_per_clip'] / 1e3:.1f} KB/clip -> ratio {r['ratio']:.3f} "
                    f"({r['clips']} clips, {r['camera_frames']} camera frames)",
                    flush=True,
                )
    (w0, h0), (w1, h1) = SIZES
    head = runs[f"{w0}x{h0}_gop{gops[0]}"]
    result = {
        "ratio": head["ratio"],
        "ratio_224x128": runs[f"{w1}x{h1}_gop{gops[0]}"]["ratio"],
        **{f"ratio_gop{g}": runs[f"{w0}x{h0}_gop{g}"]["ratio"] for g in gops[1:]},
        **{f"ratio_224x128_gop{g}": runs[f"{w1}x{h1}_gop{g}"]["ratio"] for g in gops[1:]},
        "gop": gops[0],
        "ours_bytes_per_clip": head["ours_bytes_per_clip"],
        "jpeg_bytes_per_clip": head["jpeg_bytes_per_clip"],
        "jpeg_quality": args.quality,
        "cameras": 6,
        "fps": FPS,
        "clip_seconds": SECONDS,
        "runs": runs,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
