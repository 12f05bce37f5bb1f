from dataclasses import asdict

import torch

from fsdtrain.eval.evaluate import _real_windows, load_predictors
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.model.driving import ModelConfig
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.files import save_weights
from fsdtrain.weights.metadata import WeightsMeta
from helpers.fleet import TINY_WINDOW


def test_stream_made_repeats_are_left_out_of_the_report():
    batch = {
        "valid": torch.tensor([True, False, True]),
        "future": torch.arange(3),
        "country": ["US", "DE", "CN"],
        "clip_id": ["a", "b", "c"],
    }
    real = _real_windows(batch)
    assert (
        real["future"].tolist() == [0, 2]
        and real["country"] == ["US", "CN"]
        and real["clip_id"] == ["a", "c"]
    )
    assert real["valid"].all()
    full = {**batch, "valid": torch.ones(3, dtype=torch.bool)}
    assert _real_windows(full) is full


def test_weights_load_without_the_runs_encoder_weights_file(tmp_path):
    # a run that started its encoder from a local file records that path; the weights file holds
    # every tensor, so another machine without that file still loads it, with the same values
    net = ModelConfig(encoder="test_resnet", d_model=32, depth=1, num_heads=2, grid=[1, 2], modes=2)
    module = DrivingModule(net=net, cameras=list(DEFAULT_CAMERAS), window=TINY_WINDOW)
    meta = {"net": {**asdict(net), "encoder_weights": str(tmp_path / "gone.safetensors")}, "cameras": list(DEFAULT_CAMERAS), "window": asdict(TINY_WINDOW)}
    save_weights(tmp_path / "model.safetensors", module.state_dict(), WeightsMeta.of(**meta))
    loaded, _, _ = load_predictors(str(tmp_path / "model.safetensors"))
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, module.net.state_dict()[name]), name
