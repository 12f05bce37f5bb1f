"""``FleetDataModule`` streams: validation pads ranks instead of dropping windows, and needs a
shard per rank to pad with."""

from types import SimpleNamespace

import pytest

from fsdtrain.data.datamodule import FleetDataModule
from fsdtrain.errors import ConfigError
from helpers.fleet import TINY_WINDOW


def val_module(urls, *, rank, world, workers):
    dm = FleetDataModule(val=urls, window=TINY_WINDOW, batch_size=3, num_workers=workers)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
    return dm


def test_validation_needs_a_shard_per_rank_but_not_per_worker(tiny_fleet):
    one_shard = [tiny_fleet["US"]["val"]]
    with pytest.raises(ConfigError, match=r"data.val has 1 shard\(s\), fewer than the 2 ranks"):
        val_module(one_shard, rank=0, world=2, workers=1).setup("validate")
    two_shards = [tiny_fleet["US"]["val"], tiny_fleet["DE"]["val"]]
    for rank in range(2):  # one shard per rank: one of its 2 workers gets none and yields nothing
        dm = val_module(two_shards, rank=rank, world=2, workers=2)
        dm.setup("validate")
        assert dm.val_stream.pad and len(dm.val_stream) == 9  # 8 windows + 1 repeat: 3 full batches


def test_sharded_training_stream_still_drops_tail_windows(tiny_fleet):
    train = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["val"]]  # 3 shards of 8 windows over 2 ranks
    for rank in range(2):
        dm = FleetDataModule(train=train, window=TINY_WINDOW, batch_size=3, num_workers=0, order="sharded")
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        dm.setup("fit")
        assert not dm.train_stream.pad and len(dm.train_stream) == 6  # the 1-shard rank's 2 full batches


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
    assert caplog.messages == ["data.country_weights: CN not in data.train (countries DE, US); unused"]
