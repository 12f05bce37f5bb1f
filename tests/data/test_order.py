from collections import Counter, defaultdict

import numpy as np
import pytest
from torch.utils.data import DataLoader

from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.order import ClipWindow, StreamOrder, StreamShape, batch_positions
from fsdtrain.data.stream import FleetStream, Source, StreamSpec
from fsdtrain.errors import ConfigError
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.store.gate import ZoneGate
from helpers.fleet import TINY_WINDOW

GLOBAL_GATE = ZoneGate("global")

# (clips per shard, current frames of each clip's windows, weight) per source
SOURCES = [([3, 4], np.arange(0, 30, 5), 1.0), ([5], np.arange(0, 20, 5), 1.0), ([2, 3, 4], np.arange(0, 15, 5), 1.0)]


def windows(order):
    return [order[p] for p in range(len(order))]


def test_every_clip_lies_in_one_stream_and_streams_are_balanced():
    order = StreamOrder(SOURCES, StreamShape(4, 2), seed=0, epoch=0)
    refs = windows(order)
    total = sum(sum(n) * len(c) for n, c, _ in SOURCES)  # 89 windows
    assert len(refs) == 4 * (total // 4 // 2 * 2) == 88  # every stream T / L windows, in whole turns
    assert len(refs) - len(set(refs)) <= 4 * max(len(c) for _, c, _ in SOURCES)  # top-ups: at most a clip per stream
    stream_of = defaultdict(set)
    for p, w in enumerate(refs):
        stream_of[(w.source, w.clip)].add((p // 2) % 4)
    assert all(len(s) == 1 for s in stream_of.values())
    loads = [sum(times * len(SOURCES[s][1]) for s, _, times in clips) for clips in order.stream_clips]
    assert max(loads) - min(loads) <= max(len(c) for _, c, _ in SOURCES)  # runs of equal windows, +- one clip
    assert sum(loads) == total
    for s, clips in enumerate(order.stream_clips):  # a short stream repeats windows of its own last group
        mine = [w for p, w in enumerate(refs) if (p // 2) % 4 == s]
        repeated = {w for w in mine if mine.count(w) > 1}
        assert repeated <= {ClipWindow(src, c, int(f)) for src, c, _ in clips[-4:] for f in SOURCES[src][1]}
    lengths = {len(StreamOrder(SOURCES, StreamShape(4, 2), seed=0, epoch=e)) for e in range(6)}
    mixed = [(n, c, 1.5) for n, c, _ in SOURCES]
    lengths_mixed = {len(StreamOrder(mixed, StreamShape(3, 1), seed=0, epoch=e)) for e in range(6)}
    assert lengths == {88} and len(lengths_mixed) == 1  # the epoch's length depends on the data and the shape only
    def shard(s, c):
        return s, int(np.searchsorted(np.cumsum(SOURCES[s][0]), c, side="right"))

    shards_per_stream = [len({shard(s, c) for s, c, _ in clips}) for clips in order.stream_clips]
    assert max(shards_per_stream) <= 3  # a stream reads a run of whole shards (6 clips of 21), not clips from everywhere
    assert refs == windows(StreamOrder(SOURCES, StreamShape(4, 2), seed=0, epoch=0))
    assert refs != windows(StreamOrder(SOURCES, StreamShape(4, 2), seed=0, epoch=1))
    assert refs != windows(StreamOrder(SOURCES, StreamShape(4, 2), seed=1, epoch=0))


def test_a_micro_batch_mixes_clips():
    order = StreamOrder(SOURCES, StreamShape(8, 1), seed=0, epoch=0)
    refs = windows(order)
    per_batch = [len({(w.source, w.clip) for w in refs[i : i + 8]}) for i in range(0, len(refs), 8)]
    assert min(per_batch) == 8  # one window from each of 8 streams: 8 clips
    order = StreamOrder(SOURCES, StreamShape(2, 4), seed=0, epoch=0)  # turns of 4 windows from one stream
    refs = windows(order)
    distinct = [len({(w.source, w.clip) for w in refs[i : i + 4]}) for i in range(0, len(refs), 4)]
    assert np.mean(distinct) > 3.3, distinct  # rounds deal one window per clip: fewer only where a group's clips run out


def test_every_step_covers_the_same_positions_at_any_world_size():
    total, G = 61, 12
    for world in (1, 2, 3, 4, 6):
        B = G // world
        for workers in (1, 2, 3):
            steps = {}
            for rank in range(world):
                for worker in range(workers):
                    for i, positions in enumerate(batch_positions(total, micro_batch=B, world_size=world, rank=rank, workers=workers, worker=worker)):
                        step = i * workers + worker
                        steps.setdefault(step, set()).update(positions)
            assert sorted(steps) == list(range(total // G))  # equal batch counts, tail dropped
            for step, positions in steps.items():
                assert positions == set(range(step * G, (step + 1) * G))


def owners(shape, *, world, B, workers, total):
    """Stream -> the (rank, worker) pairs whose micro-batches hold one of its positions."""
    out = defaultdict(set)
    for rank in range(world):
        for worker in range(workers):
            for positions in batch_positions(total, micro_batch=B, world_size=world, rank=rank, workers=workers, worker=worker):
                for p in positions:
                    out[(p // shape.turn) % shape.streams].add((rank, worker))
    return out


@pytest.mark.parametrize("shape", [StreamShape(8, 1), StreamShape(4, 2), StreamShape(24, 1), StreamShape(6, 2)])
def test_owned_is_exactly_when_every_stream_has_one_worker(shape):
    for world in (1, 2, 3, 4):
        for B in (1, 2, 4):
            for workers in (1, 2, 3):
                found = owners(shape, world=world, B=B, workers=workers, total=shape.streams * shape.turn * 6)
                one_each = all(len(o) == 1 for o in found.values())
                assert shape.owned(micro_batch=B, world_size=world, workers=workers) == one_each, (world, B, workers)


def test_fitted_shape_takes_one_stream_per_window_slot_when_the_data_allows():
    assert StreamShape.fit(1000, micro_batch=4, world_size=2, workers=2) == StreamShape(16, 1)
    assert StreamShape.fit(40, micro_batch=4, world_size=2, workers=2) == StreamShape(8, 2)  # 4 clips per stream at least
    assert StreamShape.fit(9, micro_batch=4, world_size=2, workers=2) == StreamShape(4, 4)  # one stream per worker
    with pytest.raises(ConfigError, match="3 clips cannot keep 2 ranks x 2 loader workers busy"):
        StreamShape.fit(3, micro_batch=4, world_size=2, workers=2)


def test_weights_repeat_or_subsample_whole_clips():
    weighted = [([4], np.arange(0, 30, 5), 2.0), ([2, 4], np.arange(0, 20, 5), 0.5), ([3], np.arange(0, 15, 5), 0.0)]
    order = StreamOrder(weighted, StreamShape(1, 1), seed=0, epoch=0)
    uses = Counter((w.source, w.clip, w.current) for w in windows(order))
    assert {n for (s, _, _), n in uses.items() if s == 0} == {2} and len([k for k in uses if k[0] == 0]) == 4 * 6
    halves = [{c for s, c, _ in (k for k in uses) if s == 1}]
    assert len(halves[0]) == 3 and all(n == 1 for (s, _, _), n in uses.items() if s == 1)  # 3 of 6 clips, each whole
    assert not [k for k in uses if k[0] == 2]
    other = Counter((w.source, w.clip) for w in windows(StreamOrder(weighted, StreamShape(1, 1), seed=0, epoch=1)))
    assert {c for s, c in other if s == 1} == set(range(6)) - halves[0]  # the other half next epoch


def stream_steps(urls, *, world, B, workers, start_batch=0, shape=None):
    """Window ids per optimizer step, as the ranks' DataLoaders would yield them."""
    steps: dict[int, set] = {}
    for rank in range(world):
        s = FleetStream(Source.all(load_manifests(urls, GLOBAL_GATE)), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
                        batch_size=B, reading=StreamSpec(order="streams"))  # fmt: skip
        s.set_distributed(rank, world, workers)
        if shape is not None:
            s.shape = shape  # a checkpoint's
        s.start_batch = start_batch
        for i, batch in enumerate(DataLoader(s, batch_size=B, num_workers=workers)):
            steps.setdefault(start_batch + i, set()).update(f"{c}@{int(f)}" for c, f in zip(batch["clip_id"], batch["frame"]))
    return steps


def test_stream_order_is_the_same_on_2_ranks_2_workers_and_on_1_rank(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]
    two = stream_steps(urls, world=2, B=2, workers=2)  # 4 clips: one stream per worker, turns of 2
    one = stream_steps(urls, world=1, B=4, workers=0, shape=StreamShape(4, 2))
    assert two == one and len(two) == 4 * 8 // 4
    assert len(set().union(*two.values())) == 32  # every window once
    resumed = stream_steps(urls, world=1, B=4, workers=1, start_batch=5, shape=StreamShape(4, 2))
    assert resumed == {k: v for k, v in two.items() if k >= 5}
    # and the other way: a 1 x 1 run's order (one stream) continued on 2 ranks x 2 workers
    alone = stream_steps(urls, world=1, B=4, workers=1)
    grown = stream_steps(urls, world=2, B=2, workers=2, start_batch=3, shape=StreamShape(1, 4))
    assert grown == {k: v for k, v in alone.items() if k >= 3}


def test_stream_mixing_weights_change_country_shares(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]
    s = FleetStream(Source.all(load_manifests(urls, GLOBAL_GATE), [1.0, 0.5]), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
                    batch_size=4, reading=StreamSpec(order="streams"))  # fmt: skip
    countries = [c for b in DataLoader(s, batch_size=4) for c in b["country"]]
    assert countries.count("US") == 16 and countries.count("DE") == 8


def test_order_of_datasets_at_8_and_10_fps_is_a_function_of_manifests_and_window():
    from fsdtrain.format.windows import WindowSpec

    window = WindowSpec(history=2, history_spacing_s=0.5, stride_s=0.25)
    manifests = {"ten": (100, 10.0), "eight": (80, 8.0)}  # (frames, fps): two datasets of 10 s clips
    sources = [([3, 2], window.current_frames(frames, fps), 1.0) for frames, fps in manifests.values()]
    assert [len(s[1]) for s in sources] == [26, 26]  # the same windows per 10 s clip at both rates
    np.testing.assert_allclose(sources[0][1] / 10.0, sources[1][1] / 8.0, atol=0.05)  # the same times, to the nearest frame
    a, b = (StreamOrder(sources, StreamShape(2, 1), seed=3, epoch=1) for _ in range(2))
    assert len(a) == 2 * 5 * 26 and [a[p] for p in range(len(a))] == [b[p] for p in range(len(b))]
