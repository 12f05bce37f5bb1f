"""``FleetDataModule`` streams: validation pads ranks instead of dropping windows, and needs a
clip per rank to pad with; the training order's shape and its settings."""

import logging
from types import SimpleNamespace

import pytest

from fsdtrain.data.datamodule import FleetDataModule
from fsdtrain.errors import ConfigError
from helpers.fleet import TINY_WINDOW


def val_module(urls, *, rank, world, workers):
    dm = FleetDataModule(val=urls, window=TINY_WINDOW, batch_size=3, num_workers=workers)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
    return dm


def test_validation_needs_a_clip_per_rank_but_not_per_worker(tiny_fleet):
    one_shard = [tiny_fleet["US"]["val"]]
    with pytest.raises(ConfigError, match=r"data.val has 1 clip\(s\), fewer than the 2 ranks"):
        val_module(one_shard, rank=0, world=2, workers=1).setup("validate")
    two_shards = [tiny_fleet["US"]["val"], tiny_fleet["DE"]["val"]]
    for rank in range(2):  # one clip per rank: one of its 2 workers gets none and yields nothing
        dm = val_module(two_shards, rank=rank, world=2, workers=2)
        dm.setup("validate")
        assert dm.val_stream.pad and len(dm.val_stream) == 9  # 8 windows + 1 repeat: 3 full batches


def test_the_old_orders_are_refused_in_one_line_and_their_settings_warn(caplog):
    for old in ("global", "sharded"):
        with pytest.raises(ConfigError, match=f"data.order: {old} was replaced by `streams`"):
            FleetDataModule(order=old)
    FleetDataModule(block_shards=4, shuffle_buffer=64)
    assert caplog.messages == [
        "data.block_shards is no longer used (the streams order replaced it; docs/data-loading.md): remove it",
        "data.shuffle_buffer is no longer used (the streams order replaced it; docs/data-loading.md): remove it",
    ]


def test_training_streams_fit_the_run_and_an_explicit_count_is_checked(tiny_fleet):
    train = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]  # 4 clips of 8 windows
    for streams, shape in ((None, (2, 3)), (2, (2, 3))):
        dm = FleetDataModule(train=train, window=TINY_WINDOW, batch_size=3, num_workers=0, streams=streams)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=2)
        dm.setup("fit")
        s = dm.train_stream
        assert (s.shape.streams, s.shape.turn) == shape and s.owned()
        assert len(s) == len(s.stream_order()) // 6 * 3  # equal full batches on both ranks
    for streams, error in ((4, "data.streams=4 does not fit micro batch 3 x 2 ranks x 1 loader workers = 6 stream slots"),
                           (6, "data.streams=6 is more than the 4 clips the epoch uses")):  # fmt: skip
        dm = FleetDataModule(train=train, window=TINY_WINDOW, batch_size=3, num_workers=0, streams=streams)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=2)
        with pytest.raises(ConfigError, match=error):
            dm.setup("fit")


def test_country_weights_set_each_countrys_share_of_the_training_windows(tiny_fleet, caplog):
    train = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]

    def stream(**kwargs):
        dm = FleetDataModule(train=train, window=TINY_WINDOW, batch_size=2, num_workers=0, **kwargs)
        dm.setup("fit")
        return dm.train_stream

    even = stream()
    assert even.weights is None and len(even) == 32  # 2 countries x 2 clips x 8 windows
    doubled = stream(country_weights={"DE": 2.0}, weights=[1.0, 0.5])
    assert doubled.weights == [1.0, 1.0]
    us_only = stream(country_weights={"DE": 0.0})
    assert us_only.weights == [1.0, 0.0] and len(us_only) == 16
    assert {w["country"] for w in us_only} == {"US"}
    caplog.clear()
    # a shared config's weight for a country this run does not train on: said once (a warning on stderr), unused
    assert stream(country_weights={"CN": 3.0, "DE": 2.0}).weights == [1.0, 2.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # (the order's shape is logged at INFO)
    assert warnings == ["data.country_weights: CN not in data.train (countries DE, US); unused"]


def test_validation_on_more_ranks_than_shards_reads_every_window_once(tmp_path):
    from fsdtrain.synth.fleet import synth_fleet
    from helpers.fleet import TINY_CLIP

    (m,) = synth_fleet(f"file://{tmp_path}/d", ["US"], 3, clips_per_shard=3, split="val", clip=TINY_CLIP)  # one shard
    real, batches = [], []
    for rank in range(3):
        dm = val_module([m.url], rank=rank, world=3, workers=1)
        dm.setup("validate")
        rank_batches = list(dm.val_dataloader())
        batches.append(len(rank_batches))
        real += [f"{c}@{int(f)}" for b in rank_batches for c, f, v in zip(b["clip_id"], b["frame"], b["valid"]) if v]
    assert batches == [3, 3, 3] and len(real) == len(set(real)) == 3 * TINY_WINDOW.count(50, 10.0)


def test_a_resume_takes_the_checkpoints_shape_even_where_data_streams_does_not_fit_the_new_layout(tiny_fleet):
    train = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]  # 4 clips
    dm = FleetDataModule(train=train, window=TINY_WINDOW, batch_size=2, num_workers=3, streams=4)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    with pytest.raises(ConfigError, match="data.streams=4 does not fit micro batch 2 x 1 ranks x 3 loader workers"):
        dm.setup("fit")  # a new run: said at once
    dm.resuming = True  # `fit --ckpt_path`: the shape comes from the checkpoint (saved at 2 ranks x 2 workers)
    dm.setup("fit")
    dm.load_state_dict({"order": "streams", "streams": 4, "turn": 2, "seed": 0, "epoch": 0, "windows_done": 8,
                        "windows_per_micro_batch": 2, "datasets": dm._datasets()})  # fmt: skip
    s = dm.train_stream
    assert (s.shape.streams, s.shape.turn, s.start_batch) == (4, 2, 4) and not s.owned()
    assert len(s) == len(s.stream_order()) // 2 * 2 == 32
