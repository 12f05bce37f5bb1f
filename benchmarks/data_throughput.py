"""Loader throughput vs a raw PyAV decode of exactly the frames the windows need (docs/contributing.md).

Builds a small synthetic fleet (US, 160x96 unless ``--size``, 6 cameras) on file:// and copies it into a local
SeaweedFS store, then measures, in one run and with the same number of processes (one loader
worker / one decode process):

- ``loader_windows_per_s``: ``FleetStream`` through the data module's loader (``RingLoader``: read,
  checksum, validate, decode the needed frames, cut windows, collate into the worker's ring of
  reused shared buffers), file:// and s3://;
- ``raw_windows_per_s``: the same shards read from disk, untarred, and only the frames those windows
  need decoded with PyAV (from the keyframe before each), decoder and scaler in the calling thread
  as in a loader worker — the floor any loader must pay;
- ``ratio`` = loader / raw on file://; ``cpu_ratio``: the same from CPU seconds instead of wall time, the
  raw process's CPU per window / the loader worker's (all its threads, start to exit), which other
  load on a shared machine moves less than it moves wall time; ``warm_ratio`` the same for a second pass in the same
  processes (persistent loader workers whose clip arrays are kept from the first pass: what every
  clip after a worker's first ones finds) against a second raw pass timed alone;
  ``in_process_ratio``: loader / raw with the stream iterated in this process, no worker (what the
  hand-off of batches from the worker costs); ``s3_vs_file`` = loader on s3 / loader on file, and
  ``decoded_per_used``: frames decoded per frame the windows use (P-frames force decoding from the
  keyframe before each needed frame); ``shuffle_gap_vs_random``: how far apart in store order consecutive windows of
  a batch are, relative to a full random shuffle (1.0); ``workers_2_vs_1``: loader windows/s with 2
  workers / with 1 (each worker decodes its own clips; 2 cores here, the training process idle);
  ``ring_vs_plain``: the loader / the same stream through a plain DataLoader, which collates every
  batch into fresh shared memory (fsdtrain/data/batch_ring.py); ``table_vs_demuxer``: the loader /
  the same loader with every video demuxed by FFmpeg instead of read from its MP4 sample tables
  (fsdtrain/format/mp4.py); ``normal_vs_huge_pages``: the loader / the same loader with its clip
  arrays in transparent huge pages, as numpy allocates large arrays (fsdtrain/data/clip_buffers.py);
  ``ahead_vs_on_touch``: the loader / the same loader with no clip array populated ahead in a thread
  (each new array's pages placed as the decoder first writes them); ``signed_vs_client``: the loader
  on s3:// / the same with every GET made through a boto3 client call instead of signed by hand
  (fsdtrain/store/signed_get.py); ``plain_vs_session``: the loader on s3:// / the same with every signed
  GET sent through botocore's HTTP session (urllib3) instead of over fsdtrain's plain-HTTP
  connections, which receive a body in one call (fsdtrain/store/plain_http.py), and
  ``worker_cpu_plain_vs_session`` the loader worker's CPU seconds per pass of the two;
  ``inherited_vs_own_client``: the loader on s3:// / the same with every worker making its own boto3
  client and presigning its bucket's URL at its start, instead of taking its parent's (fsdtrain/store/objects.py
  ``_Client``). ``store_cpu_s_per_s3_pass``: CPU seconds the local SeaweedFS
  spent serving one s3:// pass (``s3_pass_s`` long): the store shares this machine's cores with the
  loader, where a cluster's store runs on machines of its own; ``worker_cpu_s3_vs_file``: the loader
  worker's CPU seconds per pass (all its threads) on s3:// / on file://, what reading from a store
  costs the loader itself. ``cached_vs_uncached_store`` and ``cached_store_cpu_vs_uncached``: the
  s3:// loader, and the store's CPU per pass, with the local store as fsdtrain starts it / with a
  second store started without its read cache (``READ_CACHE_MB = 0``, fsdtrain/store/local/seaweed.py).

The loader reads in the training order (``order: streams``, one stream per window of the micro batch
here): each clip's metadata and cameras by range reads through the shard index, the next clips
fetched in a thread while the current ones decode.

Every side runs once per round, in alternating order, for ``--rounds`` rounds; each ratio is the
median of its per-round values with min, max and a 95 % confidence interval for the median, and
``undecided`` while the goal lies inside that interval (benchmarks/rounds.py: five rounds give min to
max, at 94 %; more rounds narrow it). ``--sides raw,loader,s3`` runs only the sides the two goals
need, so that many rounds fit in minutes.

``--size HxW`` sets the frame size of the synthetic clips (default 96x160; the realistic
configs/pretrain_global.yaml input is 256x448). ``--clips-per-shard`` (default 3) sets how many clips
share a shard, hence one index read: every worker that touches a shard reads its index once, so with
3-clip shards a quarter of the s3:// requests are index reads, where ingest's 256-MiB shards hold
hundreds of clips.

    python benchmarks/data_throughput.py [--clips 12] [--clips-per-shard 3] [--rounds 3] [--size 96x160] [--sides raw,loader,s3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import resource
import statistics
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from machine import describe
from rounds import alternate, ratio_summary
from torch.utils.data import DataLoader

from fsdtrain.data import clip_buffers
from fsdtrain.data import stream as stream_module
from fsdtrain.data.batch_ring import RingLoader
from fsdtrain.data.clip_buffers import ClipBuffers
from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.stream import FleetStream, Source, StreamSpec, init_loader_worker
from fsdtrain.errors import ConfigError
from fsdtrain.format import video
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.format.windows import WindowSpec, window_frames
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate
from fsdtrain.store.local import seaweed
from fsdtrain.store.local.seaweed import LocalStore
from fsdtrain.store.signed_get import SignedGets
from fsdtrain.synth.fleet import ClipSpec, synth_fleet

GLOBAL_GATE = ZoneGate("global")

SPEC = WindowSpec(history=2, frame_stride=5, horizon_s=3.0, future_hz=2.0, window_stride=5)


def loader_rate(
    url: str, *, workers: int = 1, loader: type[DataLoader] = RingLoader, passes: int = 1
) -> tuple[float, int, list[list[str]]]:
    """Windows/s, windows, and each batch's window ids (``clip@frame``), through ``loader``; with
    ``passes`` > 1 the same workers iterate the epoch that many times and the last pass is timed."""
    stream = FleetStream(
        Source.all(load_manifests([url], GLOBAL_GATE)), SPEC, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS), batch_size=8,
        reading=StreamSpec(order="streams"),
    )  # fmt: skip
    stream.set_distributed(0, 1, workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker (the DataLoader sets it there), so in-process compares like with like
    try:
        batches_of = loader(
            stream, batch_size=8, num_workers=workers, worker_init_fn=init_loader_worker if workers else None,
            persistent_workers=passes > 1,
        )  # fmt: skip
        for _ in range(passes - 1):
            for _batch in batches_of:
                pass
        t0, n, batches = time.perf_counter(), 0, []
        for batch in batches_of:
            n += batch["future"].shape[0]
            batches.append([f"{c}@{int(f)}" for c, f in zip(batch["clip_id"], batch["frame"].tolist())])
            last = time.perf_counter()
        # from starting the workers to the last window delivered: joining the finished workers is not
        # delivering windows (the raw pass's clock likewise runs from its process start to its result)
        return n / (last - t0), n, batches
    finally:
        torch.set_num_threads(threads)


def shuffle_gap(batches: list[list[str]], store_order: list[str]) -> float:
    """Mean distance, in store order, between consecutive windows of a batch, as a fraction of the
    distance expected under a uniform random permutation (n/3): 1.0 = as mixed as a full shuffle."""
    index = {w: i for i, w in enumerate(store_order)}
    gaps = [abs(index[a] - index[b]) for batch in batches for a, b in zip(batch, batch[1:])]
    return (sum(gaps) / len(gaps)) / (len(store_order) / 3)


def _raw_decode(paths: list[str], passes: int = 1) -> tuple[int, int, int, float, list[str]]:
    """:func:`_raw_pass` ``passes`` times in this process: the last one's figures."""
    for _ in range(passes - 1):
        _raw_pass(paths)
    return _raw_pass(paths)


def _raw_pass(paths: list[str]) -> tuple[int, int, int, float, list[str]]:
    """Windows, frames decoded, frames used, seconds and the windows in store order, for a plain
    PyAV pass over the shards."""
    t0 = time.perf_counter()
    windows = decoded = used = 0
    order: list[str] = []
    for path in paths:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = sorted({name.split(".", 1)[0] for name in members})
        for key in keys:
            meta = json.loads(members[f"{key}.meta.json"])
            currents = SPEC.current_frames(meta["frames"], meta["fps"])
            needed = sorted({int(f) for c in currents for f in window_frames(SPEC, int(c))})
            windows += len(currents)
            order += [f"{meta['clip_id']}@{int(c)}" for c in currents]
            for cam in DEFAULT_CAMERAS:
                rgb = VideoReformatter()  # one scaler per video, not one per frame (what to_ndarray(format=...) does); in this thread (threads=1 below): PyAV's default splits each frame over scaler threads, 1.6-3x slower here
                with av.open(io.BytesIO(members[f"{key}.{cam}.mp4"])) as container:
                    stream = container.streams.video[0]
                    stream.codec_context.thread_count = 1  # decoded in this thread, as the loader does
                    packets = [p for p in container.demux(stream) if p.size]
                    # from the keyframe at or before each needed frame up to it (no B-frames)
                    todo = set()
                    for f in needed:
                        k = f
                        while not packets[k].is_keyframe:
                            k -= 1
                        todo.update(range(k, f + 1))
                    for i in sorted(todo):
                        for frame in stream.codec_context.decode(packets[i]):
                            decoded += 1
                            if frame.pts == packets[i].pts and i in needed:
                                rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                                used += 1
    return windows, decoded, used, time.perf_counter() - t0, order


def swapped(owner: object, name: str, value: object):
    """``run -> run()`` with ``owner.name`` set to ``value`` meanwhile (loader workers are forked
    inside ``run``, so they see the switch too; benchmark only)."""

    def side(run):
        saved = getattr(owner, name)
        setattr(owner, name, value)
        try:
            return run()
        finally:
            setattr(owner, name, saved)

    return side


def kept_pool(run):
    """``run()`` with one clip-array pool per loader worker process, kept from pass to pass (the
    loader makes a new one per pass): a later pass through persistent workers finds every array it
    needs already mapped, as the clips after a worker's first ones do."""
    pools: dict[int, ClipBuffers] = {}
    return swapped(stream_module, "ClipBuffers", lambda: pools.setdefault(os.getpid(), ClipBuffers()))(run)


# every video demuxed by FFmpeg, as before fsdtrain read MP4 sample tables itself
demuxed = swapped(video, "sample_table", lambda data: None)
# clip arrays allocated by numpy, which asks for transparent huge pages on arrays of 4 MiB and more
huge_pages = swapped(clip_buffers, "_unhuge", lambda nbytes: np.empty(nbytes, dtype=np.uint8))
# no clip array prepared ahead: every new array's pages placed as the decoder first writes them
on_touch = swapped(stream_module, "ClipBuffers", lambda: ClipBuffers(ahead=False))
# every S3 GET through the boto3 client's call path (each worker makes its own client after the fork)
client_gets = swapped(objects, "SignedGets", lambda *args, **kwargs: None)
# every signed GET through botocore's HTTP session (urllib3: the body in a receive call per 64 KB at most)
session_gets = swapped(SignedGets, "_plain_http", lambda self, url: (None, "", ""))
# every loader worker making its own boto3 client and presigning its buckets' URLs anew at its start
own_client = swapped(objects, "SignedGets", lambda *args, known=None, **kwargs: SignedGets(*args, **kwargs))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) that process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's ended children so far: a loader's workers once it has joined them."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


GOALS = {"ratio": 0.9, "s3_vs_file": 0.95}  # docs/contributing.md
RATIOS = {  # each ratio's sides (numerator, denominator), per round
    "ratio": ("loader", "raw"),
    "warm_ratio": ("warm_loader", "warm_raw"),
    "in_process_ratio": ("in_process", "raw"),
    "s3_vs_file": ("s3", "loader"),
    "workers_2_vs_1": ("two_workers", "loader"),
    "ring_vs_plain": ("loader", "plain_collate"),
    "table_vs_demuxer": ("loader", "demuxer"),
    "normal_vs_huge_pages": ("loader", "huge_pages"),
    "ahead_vs_on_touch": ("loader", "on_touch"),
    "signed_vs_client": ("s3", "client_gets"),
    "plain_vs_session": ("s3", "session_gets"),
    "inherited_vs_own_client": ("s3", "own_client"),
    "cached_vs_uncached_store": ("s3", "uncached_store"),
}
SIDES = [
    "raw", "loader", "warm_raw", "warm_loader", "in_process", "two_workers", "plain_collate", "s3", "uncached_store", "demuxer",
    "huge_pages", "on_touch", "client_gets", "session_gets", "own_client",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument(
        "--clips-per-shard", type=int, default=3,
        help="clips per shard (3: every loader worker reads a shard index per 3 clips; ingest writes 256-MiB shards, hundreds of clips)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every side, alternating (benchmarks/rounds.py)")
    parser.add_argument("--size", default="96x160", help="frame size HxW of the synthetic clips (even, >= 16)")
    parser.add_argument(
        "--sides", default=",".join(SIDES),
        help="the sides to run, comma-separated (raw and loader always); e.g. raw,loader,s3 for the two goals in more rounds",
    )  # fmt: skip
    args = parser.parse_args()
    for flag, value in (("--clips", args.clips), ("--clips-per-shard", args.clips_per_shard), ("--rounds", args.rounds)):
        if value < 1:
            parser.error(f"{flag} {value}: want at least 1")
    chosen = [name for name in SIDES if name in {"raw", "loader", *args.sides.split(",")}]
    unknown = set(args.sides.split(",")) - set(SIDES)
    if unknown:
        parser.error(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}")
    if "uncached_store" in chosen and "s3" not in chosen:
        parser.error("--sides: uncached_store is compared with s3; add s3")
    try:
        height, width = (int(v) for v in args.size.split("x"))
        clip = ClipSpec(width=width, height=height)
    except (ValueError, ConfigError) as exc:
        parser.error(f"--size {args.size!r}: want HxW, both even and >= 16, e.g. 256x448 ({exc})")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench"
        (manifest,) = synth_fleet(str(root), ["US"], args.clips, clips_per_shard=args.clips_per_shard, clip=clip, workers=min(2, os.cpu_count() or 1))
        url = f"file://{root}/train/US"
        paths = [str(root / "train" / "US" / s.name) for s in manifest.shards]
        raw: dict = {}
        loader: dict = {}
        cpu_per_window: dict[str, list[float]] = defaultdict(list)  # CPU seconds of the decoding process per window

        def raw_side() -> float:
            # timed as the loader is: from starting its process to having the result (not its exit)
            t0, cpu_before = time.perf_counter(), children_cpu_s()
            with mp.get_context("fork").Pool(1) as pool:  # one process, like one loader worker
                windows, decoded, used, _, store_order = pool.apply(_raw_decode, (paths,))
                seconds = time.perf_counter() - t0
            cpu_per_window["raw"].append((children_cpu_s() - cpu_before) / windows)  # the pool joined its process
            raw.update(windows=windows, decoded=decoded, used=used, store_order=store_order)
            return windows / seconds

        def warm_raw_side() -> float:  # a second pass in one process, its own time only
            with mp.get_context("fork").Pool(1) as pool:
                windows, _, _, seconds, _ = pool.apply(_raw_decode, (paths, 2))
            return windows / seconds

        def file_side() -> float:
            before = children_cpu_s()
            rate, n, batches = loader_rate(url)
            worker_cpu["file"].append(children_cpu_s() - before)
            cpu_per_window["loader"].append(worker_cpu["file"][-1] / n)
            assert n <= raw.get("windows", n), f"loader read {n} windows, raw pass {raw['windows']}"
            loader.update(n=n, batches=batches)
            return rate

        store_cpu: dict[str, list[float]] = defaultdict(list)  # per s3:// side: the store's CPU seconds per pass
        worker_cpu: dict[str, list[float]] = defaultdict(list)  # per side: the loader worker's

        def s3_side(side: str = "s3", served_by: str = "cached") -> float:
            store = stores[served_by]
            store.apply_env()
            before, workers_before = process_cpu_s(store.pid), children_cpu_s()
            rate = loader_rate("s3://bench/train/US")[0]
            store_cpu[side].append(process_cpu_s(store.pid) - before)
            worker_cpu[side].append(children_cpu_s() - workers_before)
            return rate

        with contextlib.ExitStack() as stack:
            # the local store as fsdtrain starts it, and the same store without its read cache
            stores = {"cached": stack.enter_context(LocalStore(Path(tmp) / "store"))}
            if "uncached_store" in chosen:
                stores["uncached"] = swapped(seaweed, "READ_CACHE_MB", 0)(lambda: stack.enter_context(LocalStore(Path(tmp) / "uncached")))
            for store in stores.values():
                store.apply_env()
                objects.ensure_bucket("s3://bench")
                for f in sorted((root / "train" / "US").iterdir()):
                    objects.write_bytes(f"s3://bench/train/US/{f.name}", f.read_bytes())
            sides = {
                "raw": raw_side,
                "loader": file_side,
                "warm_raw": warm_raw_side,
                "warm_loader": lambda: kept_pool(lambda: loader_rate(url, passes=2)[0]),
                "in_process": lambda: loader_rate(url, workers=0)[0],  # the same work without the worker hand-off
                "two_workers": lambda: loader_rate(url, workers=2)[0],
                "plain_collate": lambda: loader_rate(url, loader=DataLoader)[0],  # fresh shared memory per batch
                "s3": s3_side,
                "uncached_store": lambda: s3_side("uncached_store", served_by="uncached"),
                "demuxer": lambda: demuxed(lambda: loader_rate(url)[0]),
                "huge_pages": lambda: huge_pages(lambda: loader_rate(url)[0]),
                "on_touch": lambda: on_touch(lambda: loader_rate(url)[0]),
                "client_gets": lambda: client_gets(lambda: s3_side("client_gets")),
                "session_gets": lambda: session_gets(lambda: s3_side("session_gets")),
                "own_client": lambda: own_client(lambda: s3_side("own_client")),
            }
            rates = alternate({name: sides[name] for name in chosen}, args.rounds, log=lambda line: print(line, flush=True))
    median = {name: statistics.median(v) for name, v in rates.items()}
    ratios = {  # name: (numerator side, denominator side) per round, for the sides that ran
        name: ratio_summary(rates[num], rates[den], goal=GOALS.get(name))
        for name, (num, den) in RATIOS.items() if num in rates and den in rates
    }  # fmt: skip
    if "s3" in rates:
        ratios.update(
            store_cpu_s_per_s3_pass=round(statistics.median(store_cpu["s3"]), 3),
            worker_cpu_s3_vs_file=ratio_summary(worker_cpu["s3"], worker_cpu["file"]),
            loader_s3_windows_per_s=round(median["s3"], 1),
            s3_pass_s=round(loader["n"] / median["s3"], 3),
        )
    if "s3" in rates and "session_gets" in rates:
        ratios["worker_cpu_plain_vs_session"] = ratio_summary(worker_cpu["s3"], worker_cpu["session_gets"])
    if "s3" in rates and "uncached_store" in rates:
        ratios["cached_store_cpu_vs_uncached"] = ratio_summary(store_cpu["s3"], store_cpu["uncached_store"])
    result = {
        **ratios,
        "cpu_ratio": ratio_summary(cpu_per_window["raw"], cpu_per_window["loader"]),
        "decoded_per_used": round(raw["decoded"] / raw["used"], 3),
        "shuffle_gap_vs_random": round(shuffle_gap(loader["batches"], raw["store_order"]), 3),
        "loader_windows_per_s": round(median["loader"], 1),
        "raw_windows_per_s": round(median["raw"], 1),
        **({"loader_2_workers_windows_per_s": round(median["two_workers"], 1)} if "two_workers" in rates else {}),
        "windows": raw["windows"],
        "loader_windows": loader["n"],
        "clips": args.clips,
        "clips_per_shard": args.clips_per_shard,
        "size": f"{width}x{height}x6cam",
        "window": {"history": SPEC.history, "frame_stride": SPEC.frame_stride, "window_stride": SPEC.window_stride},
        **describe(load_before=load_before),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
