import numpy as np
from torch.utils.data import DataLoader

from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.order import EpochOrder, batch_positions
from fsdtrain.data.stream import FleetStream, Source, StreamSpec
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.store.gate import ZoneGate
from helpers.fleet import TINY_WINDOW

GLOBAL_GATE = ZoneGate("global")

SHARDS = [(2, np.arange(0, 30, 5)), (1, np.arange(0, 20, 5)), (3, np.arange(0, 15, 5)), (2, np.arange(5))]


def test_order_is_a_permutation_that_mixes_shards():
    order = EpochOrder(SHARDS, seed=0, epoch=0, block_shards=2)
    refs = [order[p] for p in range(len(order))]
    assert len(order) == sum(n * len(c) for n, c in SHARDS) == len(set(refs))
    assert [order[p] for p in range(len(order))] == [EpochOrder(SHARDS, seed=0, epoch=0, block_shards=2)[p] for p in range(len(order))]
    assert refs != [EpochOrder(SHARDS, seed=0, epoch=1, block_shards=2)[p] for p in range(len(order))]
    first_block = {r.shard for r in refs[: order.block_sizes[0]]}
    assert len(first_block) == 2  # one block = windows of two shards, interleaved


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


def stream_steps(urls, *, world, B, workers, start_batch=0):
    """Window ids per optimizer step, as the ranks' DataLoaders would yield them."""
    steps: dict[int, set] = {}
    for rank in range(world):
        s = FleetStream(Source.all(load_manifests(urls, GLOBAL_GATE)), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
                        batch_size=B, reading=StreamSpec(shuffle=True, balance="drop", order="global", block_shards=2))  # fmt: skip
        s.set_distributed(rank, world, workers)
        s.start_batch = start_batch
        for i, batch in enumerate(DataLoader(s, batch_size=B, num_workers=workers)):
            steps.setdefault(start_batch + i, set()).update(f"{c}@{int(f)}" for c, f in zip(batch["clip_id"], batch["frame"]))
    return steps


def test_global_stream_is_the_same_on_2_ranks_2_workers_and_on_1_rank(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]
    two = stream_steps(urls, world=2, B=2, workers=2)
    one = stream_steps(urls, world=1, B=4, workers=0)
    assert two == one and len(two) == 4 * 8 // 4
    assert len(set().union(*two.values())) == 32  # every window once
    resumed = stream_steps(urls, world=1, B=4, workers=1, start_batch=5)
    assert resumed == {k: v for k, v in two.items() if k >= 5}


def test_weights_repeat_or_subsample_each_shard():
    order = EpochOrder(SHARDS, seed=0, epoch=0, block_shards=2, weights=[2.0, 0.5, 1.0, 0.0])
    refs = [order[p] for p in range(len(order))]
    per_shard = {s: [r for r in refs if r.shard == s] for s in range(4)}
    assert len(per_shard[0]) == 2 * 12 and len(set(per_shard[0])) == 12  # every window twice
    assert len(per_shard[1]) == 2 and len(set(per_shard[1])) == 2  # half of 4, no repeats
    assert len(per_shard[2]) == 9 and per_shard[3] == []
    other = EpochOrder(SHARDS, seed=0, epoch=1, block_shards=2, weights=[2.0, 0.5, 1.0, 0.0])
    halves = [{r for r in (o[p] for p in range(len(o))) if r.shard == 1} for o in (order, other)]
    assert len(halves[0]) == len(halves[1]) == 2


def test_stream_mixing_weights_change_country_shares(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]
    s = FleetStream(Source.all(load_manifests(urls, GLOBAL_GATE), [1.0, 0.5]), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
                    batch_size=4, reading=StreamSpec(shuffle=True, balance="drop", order="global"))  # fmt: skip
    countries = [c for b in DataLoader(s, batch_size=4) for c in b["country"]]
    assert countries.count("US") == 16 and countries.count("DE") == 8
