"""Small synthetic fleets for tests, built with the product's own seeded generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsdtrain.data.synth import synth_fleet
from fsdtrain.data.windows import WindowSpec

# 5 s clips at 10 Hz, 64x48 pixels: 8 windows per clip with this spec, fast to render and decode
TINY_WINDOW = WindowSpec(history=2, frame_stride=5, horizon_s=3.0, future_hz=2.0, window_stride=2)
TINY_SIZE = {"width": 64, "height": 48, "seconds": 5.0}
COUNTRIES = ("US", "DE", "CN")


def build_tiny_fleet(root: str | Path, *, train_clips: int = 2, val_clips: int = 1) -> dict[str, dict[str, str]]:
    """Writes US, DE and CN train/val splits under ``root``; returns URLs by country and split."""
    out = Path(root) / "tiny"
    urls: dict[str, dict[str, str]] = {}
    for country in COUNTRIES:
        synth_fleet(str(out), [country], train_clips, clips_per_shard=1, split="train", seed=0, **TINY_SIZE)
        synth_fleet(str(out), [country], val_clips, clips_per_shard=1, split="val", seed=1, **TINY_SIZE)
        urls[country] = {split: f"file://{out}/{split}/{country}" for split in ("train", "val")}
    return urls


@pytest.fixture(scope="session")
def tiny_fleet(tmp_path_factory) -> dict[str, dict[str, str]]:
    """US, DE and CN tiny train (2 clips) and val (1 clip) splits on file://, built once per session."""
    return build_tiny_fleet(tmp_path_factory.mktemp("fleet"))
