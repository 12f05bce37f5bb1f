import torch

from fsdtrain.eval.evaluate import _real_windows


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
