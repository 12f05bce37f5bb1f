"""What the loader costs as the cluster grows: today's orders at 1x1 to 64x8 (ranks x workers), in one process.

The real stream code (fsdtrain.data.stream.FleetStream) reads a real dataset on a real store
(file://, or the local SeaweedFS with ``--store s3``); every (rank, worker) of a simulated world is
iterated in turn in this process, as its loader worker would iterate it. Measured per configuration:

- ``bytes_per_dataset_byte``: bytes requested through the zone gate (every shard or range read, as
  the audit log records them) over the dataset's shard bytes: 1.0 means every byte fetched once;
- ``workers_per_clip``: loader workers that decode frames of a clip, mean over the clips decoded;
- ``decoded_per_used``: video frames decoded (from the keyframe before each needed frame) over the
  frames the yielded windows use;
- ``peak_bytes_per_worker``: the largest Python-heap peak of one worker's iteration (tracemalloc:
  shard bytes, parsed samples and decoded frames it holds; FFmpeg's own buffers are not counted);
- ``clips_per_micro_batch``: distinct clips among the windows of a micro batch, mean.

This is the "before" side of the cluster-scale loader: the same script is to run the new order
beside these figures. The last line printed is one JSON object (``{"configs": [...], ...}``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

from fsdtrain.data import stream as stream_mod  # noqa: E402
from fsdtrain.data.datamodule import load_manifests  # noqa: E402
from fsdtrain.data.stream import FleetStream, Source, StreamSpec  # noqa: E402
from fsdtrain.format.video import frames_to_decode  # noqa: E402
from fsdtrain.format.windows import WindowSpec, window_frames  # noqa: E402
from fsdtrain.store.gate import ZoneGate  # noqa: E402
from fsdtrain.synth.fleet import ClipSpec, synth_fleet  # noqa: E402

CONFIGS = ((1, 1), (2, 2), (8, 4), (16, 8), (64, 8))
WINDOW = WindowSpec(history=2, frame_stride=5, horizon_s=3.0, future_hz=2.0, window_stride=2)  # 8 windows per 5 s clip
CLIP = ClipSpec(width=64, height=48, seconds=5.0, rig="surround6")
CAMERAS = ["CAM_FRONT"]


class CountingGate(ZoneGate):
    """The job's zone gate, counting the bytes of every read it lets through."""

    def __init__(self, site_zone: str | None = None) -> None:
        super().__init__(site_zone)
        self.bytes = 0

    def read(self, url, *, zone=None, byte_range=None):
        data = super().read(url, zone=zone, byte_range=byte_range)
        self.bytes += len(data)
        return data

    def read_shard(self, url, *, zone, sha256):
        data = super().read_shard(url, zone=zone, sha256=sha256)
        self.bytes += len(data)
        return data


class Tally:
    """What one simulated worker decoded: clips and frames."""

    def __init__(self) -> None:
        self.decoded_frames = 0
        self.clips: set[str] = set()


@contextmanager
def as_worker(worker: int, workers: int, tally: Tally):
    """Runs the stream's ``__iter__`` as loader worker ``worker`` of ``workers``, counting its decodes."""
    real_info, real_decode = stream_mod.get_worker_info, stream_mod.decode_video

    def decode(data: bytes, *, frames: int, where: str, keep=None, size=None):
        with av.open(io.BytesIO(data)) as container:
            keyframes = [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]
        tally.decoded_frames += int(frames_to_decode(keyframes, sorted(set(keep if keep is not None else range(frames)))).sum())
        tally.clips.add(where.rsplit("/", 1)[0])  # <shard url>:<key>/<camera>.mp4 -> the clip
        return real_decode(data, frames=frames, where=where, keep=keep, size=size)

    stream_mod.get_worker_info = lambda: SimpleNamespace(id=worker, num_workers=workers)
    stream_mod.decode_video = decode
    try:
        yield
    finally:
        stream_mod.get_worker_info, stream_mod.decode_video = real_info, real_decode


def measure(urls: list[str], *, ranks: int, workers: int, order: str, micro: int, dataset_bytes: int) -> dict:
    gate = CountingGate("global")
    manifests = load_manifests(urls, gate)
    reading = StreamSpec(order=order, shuffle=True, balance="drop", block_shards=4)
    clip_workers: dict[str, int] = defaultdict(int)
    decoded = used = windows = peak = 0
    batches: dict[tuple[int, int], set[str]] = defaultdict(set)  # (rank, micro batch) -> clips
    t0 = time.perf_counter()
    for rank in range(ranks):
        stream = FleetStream(Source.all(manifests), WINDOW, cameras=CAMERAS, batch_size=micro, gate=gate, reading=reading)
        stream.set_distributed(rank, ranks, workers)
        for worker in range(workers):
            tally = Tally()
            tracemalloc.start()
            with as_worker(worker, workers, tally):
                for i, window in enumerate(stream):
                    windows += 1
                    used += len(window_frames(WINDOW, window["frame"])) * len(CAMERAS)
                    batches[(rank, worker, i // micro)].add(window["clip_id"])
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            decoded += tally.decoded_frames
            for clip in tally.clips:
                clip_workers[clip] += 1
    return {
        "ranks": ranks, "workers": workers, "order": order,
        "bytes_per_dataset_byte": round(gate.bytes / dataset_bytes, 3),
        "workers_per_clip": round(sum(clip_workers.values()) / max(1, len(clip_workers)), 2),
        "decoded_per_used": round(decoded / max(1, used), 2),
        "peak_bytes_per_worker": peak,
        "clips_per_micro_batch": round(sum(len(c) for c in batches.values()) / max(1, len(batches)), 2),
        "windows": windows, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=8, help="shards in the dataset")
    parser.add_argument("--clips-per-shard", type=int, default=40, help="clips per shard (5 s, 64x48, 6 cameras; the loader reads CAM_FRONT)")
    parser.add_argument("--micro", type=int, default=4, help="windows per micro batch per rank")
    parser.add_argument("--configs", default=",".join(f"{r}x{w}" for r, w in CONFIGS), help="RANKSxWORKERS,...")
    parser.add_argument("--orders", default="global,sharded", help="today's orders to measure")
    parser.add_argument("--store", choices=["file", "s3"], default="file", help="file:// or the local SeaweedFS")
    args = parser.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = None
        if args.store == "s3":
            from fsdtrain.store.local.seaweed import LocalStore

            store = LocalStore(Path(tmp) / "store", zones={"global": "fleet-global"})
            store.start()
            os.environ.update(store.env())
            root = "s3://fleet-global/scale"
        else:
            root = f"file://{tmp}/scale"
        try:
            t0 = time.perf_counter()
            (manifest,) = synth_fleet(root, ["US"], args.shards * args.clips_per_shard, clips_per_shard=args.clips_per_shard, clip=CLIP, workers=min(2, os.cpu_count() or 1))
            print(f"dataset: {manifest.samples} clips in {len(manifest.shards)} shards, {manifest.bytes / 2**20:.1f} MiB ({time.perf_counter() - t0:.0f} s to write)", flush=True)
            results = []
            for order in args.orders.split(","):
                for ranks, workers in configs:
                    if order == "sharded" and ranks > len(manifest.shards):
                        print(f"{order:>7} {ranks:>3}x{workers:<2} not measured: each rank reads whole shards and {len(manifest.shards)} shards cannot feed {ranks} ranks", flush=True)
                        continue
                    r = measure([manifest.url], ranks=ranks, workers=workers, order=order, micro=args.micro, dataset_bytes=manifest.bytes)
                    results.append(r)
                    print(
                        f"{order:>7} {ranks:>3}x{workers:<2} bytes/dataset {r['bytes_per_dataset_byte']:7.2f}  workers/clip {r['workers_per_clip']:5.2f}  "
                        f"decoded/used {r['decoded_per_used']:5.2f}  peak/worker {r['peak_bytes_per_worker'] / 2**20:6.1f} MiB  "
                        f"clips/micro-batch {r['clips_per_micro_batch']:5.2f}  ({r['windows']} windows, {r['seconds']} s)",
                        flush=True,
                    )
        finally:
            if store is not None:
                store.stop()
    print(json.dumps({
        "configs": [], "before": results, "store": args.store, "shards": args.shards, "clips_per_shard": args.clips_per_shard,
        "micro_batch": args.micro, "cameras_read": len(CAMERAS), "machine": f"{cpu_name()}, {os.cpu_count()} cores",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
