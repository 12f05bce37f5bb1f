"""What the loader costs as the cluster grows: the streams order at 1x1 to 64x8 (ranks x workers), in
one process, beside fsdtrain 0.1's ``global`` order on the same data.

The real stream code (fsdtrain.data.stream.FleetStream) reads a real dataset on a real store
(file://, or the local SeaweedFS with ``--store s3``); every (rank, worker) of a simulated world is
iterated in turn in this process, as its loader worker would iterate it, with the stream shape the
data module fits to that world (docs/data-loading.md). Measured per configuration:

- ``bytes_per_dataset_byte``: bytes requested through the zone gate (every shard, index or range
  read; the audit log records each of them) over the dataset's shard bytes; split into
  ``clip_bytes_per_dataset_byte`` (range reads of clip members) and ``index_bytes_per_dataset_byte``
  (shard indexes: each worker reads those of the shards its streams touch);
- ``workers_per_clip``: loader workers that decode frames of a clip, mean over the clips decoded;
- ``decoded_per_used``: video frames decoded (from the keyframe before each needed frame) over the
  frames the yielded windows use;
- ``peak_bytes_per_worker``: the largest Python-heap peak of one worker's iteration (tracemalloc:
  clip bytes, decoded frames and the order it holds; FFmpeg's own buffers are not counted);
- ``held_clips_per_worker``: the most decoded clips one worker held at once, beside the stated
  bound (streams it owns x clips per stream group);
- ``clips_per_micro_batch``: distinct clips among the windows of a micro batch, mean.

And at 2x2, the same clips written as shards of 8 clips and as one shard: peak bytes and held clips
per worker for each (``peak_vs_shard_size_2x2``): training memory does not grow with shard size.

Goals (issue 15): bytes <= 1.05 and workers per clip = 1.00 at every configuration, decoded/used no
worse than at 1x1, clips per micro batch no fewer than the old order's. The old order is measured
by fsdtrain 0.1's own benchmark code (``--before-rev``, checked out in a temporary git worktree) on
the same dataset. The last line printed is one JSON object (``{"configs": [...], "before": [...], ...}``).

    python benchmarks/loader_scale.py [--clips 2048] [--before-rev d473b21] [--store s3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import weakref
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

from fsdtrain.data import stream as stream_mod  # noqa: E402
from fsdtrain.data.datamodule import load_manifests  # noqa: E402
from fsdtrain.data.stream import PREFETCH_CLIPS, FleetStream, Source, StreamSpec  # noqa: E402
from fsdtrain.format.video import frames_to_decode  # noqa: E402
from fsdtrain.format.windows import WindowSpec, window_frames  # noqa: E402
from fsdtrain.store.gate import ZoneGate  # noqa: E402
from fsdtrain.synth.fleet import ClipSpec, synth_fleet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ((1, 1), (2, 2), (8, 4), (16, 8), (64, 8))
WINDOW = WindowSpec(history=2, frame_stride=5, horizon_s=3.0, future_hz=2.0, window_stride=2)  # 8 windows per 5 s clip
CLIP = ClipSpec(width=64, height=48, seconds=5.0, rig="surround6")
CAMERAS = ["CAM_FRONT"]
BEFORE_REV = "d473b21"  # fsdtrain 0.1's last commit with the global order and this benchmark's "before" side


class CountingGate(ZoneGate):
    """The job's zone gate, counting the bytes of every read it lets through, by kind."""

    def __init__(self, site_zone: str | None = None) -> None:
        super().__init__(site_zone)
        self.bytes: dict[str, int] = defaultdict(int)

    def read(self, url, *, zone=None, byte_range=None, sha256=None, sample=None):  # every read of the gate comes here
        data = super().read(url, zone=zone, byte_range=byte_range, sha256=sha256, sample=sample)
        kind = "index" if url.endswith(".index.json") else "clip" if sample is not None else "shard" if url.endswith(".tar") else "other"
        self.bytes[kind] += len(data)
        return data


class Tally:
    """What one simulated worker decoded (clips, frames) and the most decoded clips it held at once."""

    def __init__(self) -> None:
        self.decoded_frames = 0
        self.clips: set[str] = set()
        self.live = self.peak_live = 0


@contextmanager
def as_worker(worker: int, workers: int, tally: Tally):
    """Runs the stream's ``__iter__`` as loader worker ``worker`` of ``workers``, counting its decodes and held clips."""
    real_info, real_decode, real_clip = stream_mod.get_worker_info, stream_mod.decode_video, stream_mod._Clip

    def decode(data: bytes, *, frames: int, where: str, keep=None, size=None):
        with av.open(io.BytesIO(data)) as container:
            keyframes = [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]
        tally.decoded_frames += int(frames_to_decode(keyframes, sorted(set(keep if keep is not None else range(frames)))).sum())
        tally.clips.add(where.rsplit("/", 1)[0])  # <shard url>:<key>/<camera>.mp4 -> the clip
        return real_decode(data, frames=frames, where=where, keep=keep, size=size)

    class CountedClip(real_clip):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            tally.live += 1
            tally.peak_live = max(tally.peak_live, tally.live)
            weakref.finalize(self, lambda: setattr(tally, "live", tally.live - 1))

    stream_mod.get_worker_info = lambda: SimpleNamespace(id=worker, num_workers=workers)
    stream_mod.decode_video, stream_mod._Clip = decode, CountedClip
    try:
        yield
    finally:
        stream_mod.get_worker_info, stream_mod.decode_video, stream_mod._Clip = real_info, real_decode, real_clip


def measure(urls: list[str], *, ranks: int, workers: int, micro: int, dataset_bytes: int) -> dict:
    gate = CountingGate("global")
    manifests = load_manifests(urls, gate)
    gate.bytes.clear()  # the manifests: read once per job, not per clip
    clip_workers: dict[str, int] = defaultdict(int)
    decoded = used = windows = peak = held = 0
    batches: dict[tuple[int, int, int], set[str]] = defaultdict(set)  # (rank, worker, micro batch) -> clips
    t0 = time.perf_counter()
    for rank in range(ranks):
        stream = FleetStream(Source.all(manifests), WINDOW, cameras=CAMERAS, batch_size=micro, gate=gate, reading=StreamSpec(order="streams"))
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
            held = max(held, tally.peak_live)
            for clip in tally.clips:
                clip_workers[clip] += 1
    shape = stream.shape
    return {
        "ranks": ranks, "workers": workers, "order": "streams", "streams": shape.streams, "turn": shape.turn, "owned": stream.owned(),
        "bytes_per_dataset_byte": round(sum(gate.bytes.values()) / dataset_bytes, 3),
        "clip_bytes_per_dataset_byte": round(gate.bytes["clip"] / dataset_bytes, 3),
        "index_bytes_per_dataset_byte": round(gate.bytes["index"] / dataset_bytes, 3),
        "workers_per_clip": round(sum(clip_workers.values()) / max(1, len(clip_workers)), 2),
        "decoded_per_used": round(decoded / max(1, used), 2),
        "peak_bytes_per_worker": peak,
        "held_clips_per_worker": held,
        "held_clips_bound": shape.streams // (ranks * workers) * max(4, shape.turn),
        "prefetched_clips_bound": PREFETCH_CLIPS,
        "clips_per_micro_batch": round(sum(len(c) for c in batches.values()) / max(1, len(batches)), 2),
        "windows": windows, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def measure_before(rev: str, url: str, configs: list[tuple[int, int]], *, micro: int, dataset_bytes: int) -> list[dict]:
    """fsdtrain 0.1's ``global`` order on the same dataset, measured by that revision's own code."""
    tmp = tempfile.mkdtemp(prefix="fsdtrain-before-")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", tmp, rev], check=True, capture_output=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import loader_scale as old; "
        "print(json.dumps(old.measure([sys.argv[2]], ranks=int(sys.argv[3]), workers=int(sys.argv[4]), order='global', "
        "micro=int(sys.argv[5]), dataset_bytes=int(sys.argv[6]))))"
    )
    out = []
    try:
        for ranks, workers in configs:
            env = {**os.environ, "PYTHONPATH": tmp}
            proc = subprocess.run(
                [sys.executable, "-c", code, f"{tmp}/benchmarks", url, str(ranks), str(workers), str(micro), str(dataset_bytes)],
                env=env, cwd=tmp, capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode:
                raise SystemExit(f"the {rev} order failed at {ranks}x{workers}:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append(r)
            print(line(r, "global (0.1)"), flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", tmp], check=False, capture_output=True)
    return out


def line(r: dict, label: str) -> str:
    held = f"  held clips {r['held_clips_per_worker']}/{r['held_clips_bound']}" if "held_clips_bound" in r else ""
    return (
        f"{label:>12} {r['ranks']:>3}x{r['workers']:<2} bytes/dataset {r['bytes_per_dataset_byte']:7.3f}  workers/clip {r['workers_per_clip']:5.2f}  "
        f"decoded/used {r['decoded_per_used']:5.2f}  peak/worker {r['peak_bytes_per_worker'] / 2**20:6.1f} MiB{held}  "
        f"clips/micro-batch {r['clips_per_micro_batch']:5.2f}  ({r['windows']} windows, {r['seconds']} s)"
    )


def goals(new: list[dict], before: list[dict]) -> dict[str, bool]:
    base = next((r["decoded_per_used"] for r in new if (r["ranks"], r["workers"]) == (1, 1)), None)
    old = {(r["ranks"], r["workers"]): r["clips_per_micro_batch"] for r in before}
    return {
        "bytes_per_dataset_byte <= 1.05": all(r["bytes_per_dataset_byte"] <= 1.05 for r in new),
        "workers_per_clip == 1.00": all(r["workers_per_clip"] == 1.0 for r in new),
        "decoded_per_used <= 1x1's": base is not None and all(r["decoded_per_used"] <= base for r in new),
        "clips_per_micro_batch >= global order's": all(r["clips_per_micro_batch"] >= old.get((r["ranks"], r["workers"]), 0) for r in new),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2048, help="clips in the dataset (5 s, 64x48, 6 cameras; the loader reads CAM_FRONT): 4 per loader worker at 64x8")
    parser.add_argument("--clips-per-shard", type=int, default=64, help="clips per shard")
    parser.add_argument("--micro", type=int, default=4, help="windows per micro batch per rank")
    parser.add_argument("--configs", default=",".join(f"{r}x{w}" for r, w in CONFIGS), help="RANKSxWORKERS,...")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision whose global order to measure beside (empty: skip)")
    parser.add_argument("--before-configs", default=None, help="RANKSxWORKERS,... for the old order (default: --configs)")
    parser.add_argument("--store", choices=["file", "s3"], default="file", help="file:// or the local SeaweedFS")
    parser.add_argument("--shard-check-clips", type=int, default=256, help="clips of the shard-size check (8 per shard vs all in one)")
    args = parser.parse_args()

    def parse(text: str) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in c.split("x")) for c in text.split(",") if c]

    configs = parse(args.configs)
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
            (manifest,) = synth_fleet(root, ["US"], args.clips, clips_per_shard=args.clips_per_shard, clip=CLIP, workers=min(2, os.cpu_count() or 1))
            print(f"dataset: {manifest.samples} clips in {len(manifest.shards)} shards, {manifest.bytes / 2**20:.1f} MiB ({time.perf_counter() - t0:.0f} s to write)", flush=True)
            results = []
            for ranks, workers in configs:
                r = measure([manifest.url], ranks=ranks, workers=workers, micro=args.micro, dataset_bytes=manifest.bytes)
                results.append(r)
                print(line(r, f"streams {r['streams']}/{r['turn']}"), flush=True)
            # memory does not depend on shard size: the same clips in small and in one big shard
            shard_sizes = {}
            for name, per_shard in (("small_shards", 8), ("one_shard", args.shard_check_clips)):
                (m,) = synth_fleet(f"{root}/{name}", ["US"], args.shard_check_clips, clips_per_shard=per_shard, clip=CLIP, workers=min(2, os.cpu_count() or 1))
                r = measure([m.url], ranks=2, workers=2, micro=args.micro, dataset_bytes=m.bytes)
                shard_sizes[name] = {"shard_bytes": max(s.bytes for s in m.shards), "peak_bytes_per_worker": r["peak_bytes_per_worker"], "held_clips_per_worker": r["held_clips_per_worker"]}
                print(f"2x2 on shards of {shard_sizes[name]['shard_bytes'] / 2**20:.1f} MiB: peak/worker {r['peak_bytes_per_worker'] / 2**20:.1f} MiB, held clips {r['held_clips_per_worker']}", flush=True)
            before = []
            if args.before_rev:
                before = measure_before(args.before_rev, manifest.url, parse(args.before_configs or args.configs), micro=args.micro, dataset_bytes=manifest.bytes)
        finally:
            if store is not None:
                store.stop()
    met = goals(results, before)
    for goal, ok in met.items():
        print(f"goal {goal}: {'met' if ok else 'NOT met'}")
    print(json.dumps({
        "configs": results, "before": before, "goals": met, "peak_vs_shard_size_2x2": shard_sizes, "store": args.store, "clips": args.clips, "clips_per_shard": args.clips_per_shard,
        "micro_batch": args.micro, "cameras_read": len(CAMERAS), "before_rev": args.before_rev, "machine": f"{cpu_name()}, {os.cpu_count()} cores",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
