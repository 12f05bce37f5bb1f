import numpy as np
import pytest
from torch.utils.data import DataLoader

from fsdtrain.data.augment import Augment
from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.stream import FleetStream, Source, StreamSpec
from fsdtrain.errors import ConfigError
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.store.gate import ZoneGate
from helpers.fleet import TINY_WINDOW

GLOBAL_GATE = ZoneGate("global")


def images(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, (6, 2, 3, 12, 16), dtype=np.uint8)  # [N_cam, T, 3, H, W]


def test_same_window_same_draws_other_window_or_epoch_other_draws():
    aug = Augment(color_jitter=0.4, camera_dropout=0.3)
    x = images()
    a = aug(x, aug.rng(7, 0, "clip-a", 15))
    np.testing.assert_array_equal(a, aug(x, aug.rng(7, 0, "clip-a", 15)))
    assert not np.array_equal(a, aug(x, aug.rng(7, 0, "clip-a", 17)))
    assert not np.array_equal(a, aug(x, aug.rng(7, 1, "clip-a", 15)))
    assert a.shape == x.shape and a.dtype == np.uint8


def test_color_jitter_keeps_one_set_of_factors_per_camera():
    aug = Augment(color_jitter=0.5)
    flat = np.full((3, 2, 3, 4, 4), 100, dtype=np.uint8)
    out = aug(flat, np.random.default_rng(0))
    for cam in range(3):  # a flat grey camera stays flat (contrast and saturation keep it), brightness scales it
        assert len(np.unique(out[cam])) == 1
    assert len({int(out[c, 0, 0, 0, 0]) for c in range(3)}) > 1
    assert np.all(np.abs(out.astype(int) - 100) <= 50 + 1)


def test_camera_dropout_blacks_out_whole_cameras_but_never_all():
    aug = Augment(camera_dropout=0.9)
    x = images()
    for seed in range(50):
        out = aug(x, np.random.default_rng(seed))
        dark = [c for c in range(6) if not out[c].any()]
        kept = [c for c in range(6) if c not in dark]
        assert kept and all(np.array_equal(out[c], x[c]) for c in kept)


def test_off_by_default_and_validated():
    x = images()
    assert Augment()(x, np.random.default_rng(0)) is x
    with pytest.raises(ConfigError, match="camera_dropout"):
        Augment(camera_dropout=1.0)


def _windows(urls, *, world, workers, augment):
    out = {}
    for rank in range(world):
        s = FleetStream(Source.all(load_manifests(urls, GLOBAL_GATE)), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
                        batch_size=2, reading=StreamSpec(order="streams", seed=3),
                        augment=augment)  # fmt: skip
        s.set_distributed(rank, world, workers)
        for batch in DataLoader(s, batch_size=2, num_workers=workers):
            for i, (c, f) in enumerate(zip(batch["clip_id"], batch["frame"])):
                out[f"{c}@{int(f)}"] = batch["images"][i].numpy()
    return out


def test_augmented_windows_do_not_depend_on_ranks_or_workers(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]]  # 4 clips: one per worker of 2 ranks x 2 workers
    aug = Augment(color_jitter=0.3, camera_dropout=0.3)
    two = _windows(urls, world=2, workers=2, augment=aug)
    one = _windows(urls, world=1, workers=0, augment=aug)
    plain = _windows(urls, world=1, workers=0, augment=None)
    assert two.keys() == one.keys() == plain.keys() and len(one) == 32
    for key in one:
        np.testing.assert_array_equal(two[key], one[key])
    assert sum(not np.array_equal(one[k], plain[k]) for k in one) == len(one)
