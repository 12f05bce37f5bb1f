"""Head-only weights (fsdtrain/weights/head_only.py): the backbone hash, putting a head back on its
backbone, and the one-line refusal of another backbone. The head file a real 2-rank ZeRO fine-tune
writes, and its size, are tested in tests/train/test_finetune_zero.py."""

from dataclasses import asdict

import pytest
import torch

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.eval.evaluate import load_predictors
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import ModelConfig
from fsdtrain.model.heads import head_of
from fsdtrain.train.finetune import FinetuneConfig
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.files import load_weights, save_weights
from fsdtrain.weights.head_only import backbone_hash, load_with_head, save_head
from fsdtrain.weights.metadata import WeightsMeta

NET = {"encoder": "test_resnet", "d_model": 32, "depth": 1, "num_heads": 2, "grid": [1, 2], "modes": 2}
CAMS = ["CAM_FRONT", "CAM_BACK"]


def meta_of(module: DrivingModule, zones: dict) -> WeightsMeta:
    return WeightsMeta.of(net=asdict(module.net_config), cameras=CAMS, window=WindowSpec().to_dict(), heads=module.net.heads.names, zones=["cn", "global"], trained_on_zones=zones)


@pytest.fixture
def finetuned(tmp_path):
    """A pretrained weights file and a CN fine-tune of it whose CN head moved away from global."""
    torch.manual_seed(0)
    pre = DrivingModule(net=ModelConfig(**NET), cameras=CAMS)
    save_weights(tmp_path / "pre.safetensors", pre.state_dict(), meta_of(pre, {"backbone": ["global"], "global": ["global"]}))
    ft = DrivingModule(net=ModelConfig(**NET), cameras=CAMS, init_from=str(tmp_path / "pre.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    with torch.no_grad():
        for p in ft.net.heads.heads["CN"].parameters():
            p.add_(0.1)
    meta = meta_of(ft, {"backbone": ["global"], "global": ["global"], "CN": ["cn", "global"]})
    save_weights(tmp_path / "ft.safetensors", ft.state_dict(), meta)
    return tmp_path / "pre.safetensors", tmp_path / "ft.safetensors", ft


def test_backbone_hash_covers_every_tensor_outside_the_heads():
    state = {"net.encoder.w": torch.ones(2, 2), "net.heads.heads.CN.q": torch.zeros(3), "net.heads.heads.global.q": torch.zeros(3)}
    h = backbone_hash(state, without=["CN"])
    assert h == backbone_hash({**state, "net.heads.heads.CN.q": torch.ones(3)}, without=["CN"])  # the head itself does not count
    assert h != backbone_hash({**state, "net.heads.heads.global.q": torch.ones(3)}, without=["CN"])  # another head does
    assert h != backbone_hash({**state, "net.encoder.w": torch.ones(2, 2).double()}, without=["CN"])  # dtype
    assert h != backbone_hash({**state, "net.encoder.w": torch.ones(4)}, without=["CN"])  # shape
    nudged = torch.ones(2, 2)
    nudged[1, 1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert h != backbone_hash({**state, "net.encoder.w": nudged}, without=["CN"])  # one ulp


def test_a_head_file_on_its_backbone_is_the_fine_tuned_model(finetuned, tmp_path):
    pre, ft_file, ft = finetuned
    full, meta = load_weights(ft_file)
    written = save_head(tmp_path / "head-CN.safetensors", full, meta, ["CN"], backbone_source=str(pre))
    head_state, head_meta = load_weights(tmp_path / "head-CN.safetensors")
    assert set(head_state) == {k for k in full if head_of(k) == "CN"} and head_meta == written
    assert head_meta.backbone_source == str(pre) and head_meta.trained_on_zones["CN"] == ["cn", "global"]
    state, merged = load_with_head(pre, tmp_path / "head-CN.safetensors")
    assert state.keys() == full.keys() and all(torch.equal(state[k], full[k]) for k in full)
    assert merged.heads == ["global", "CN"] and "backbone_sha256" not in merged.to_dict() and merged.backbone_weights == str(pre)
    net, _, _ = load_predictors(str(pre), str(tmp_path / "head-CN.safetensors"))
    assert all(torch.equal(v, ft.net.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_head_on_another_backbone_is_refused_naming_the_one_it_needs(finetuned, tmp_path, capsys, tiny_fleet, monkeypatch):
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")  # the weights record cn data: only a cn site may use them
    pre, ft_file, _ = finetuned
    full, meta = load_weights(ft_file)
    head = tmp_path / "head-CN.safetensors"
    want = save_head(head, full, meta, ["CN"], backbone_source=str(pre)).backbone_sha256
    other_state, other_meta = load_weights(pre)
    other_state["net.encoder.proj.weight" if "net.encoder.proj.weight" in other_state else next(iter(other_state))] += 1e-3
    save_weights(tmp_path / "other.safetensors", other_state, other_meta)
    with pytest.raises(ConfigError, match=rf"{head} was trained on backbone sha256 {want[:16]} \({pre}\), but .*other.safetensors has backbone sha256 [0-9a-f]{{16}}; give the weights file the head was fine-tuned from"):
        load_with_head(tmp_path / "other.safetensors", head)
    with pytest.raises(ConfigError, match="is not a head-only weights file"):
        load_with_head(pre, ft_file)
    with pytest.raises(ConfigError, match="is a head-only file; give the backbone weights as --ckpt and it as --head"):
        load_predictors(str(head))
    # the CLI: one line
    assert main(["eval", "--ckpt", str(tmp_path / "other.safetensors"), "--head", str(head), "--data", tiny_fleet["US"]["val"]]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "was trained on backbone sha256" in err


def test_export_cuts_a_head_file_and_puts_it_back(finetuned, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    pre, ft_file, _ = finetuned
    head, back = tmp_path / "head-CN.safetensors", tmp_path / "back.safetensors"
    assert main(["export", "--ckpt", str(ft_file), "--out", str(head), "--heads", "CN", "--head-only"]) == 0
    assert f"(step None, head-only CN) to {head} for zone cn" in capsys.readouterr().out
    assert main(["export", "--ckpt", str(pre), "--head", str(head), "--out", str(back)]) == 0
    full, got = load_weights(ft_file)[0], load_weights(back)[0]
    assert got.keys() == full.keys() and all(torch.equal(got[k], full[k]) for k in full)
    assert main(["export", "--ckpt", str(head), "--out", str(back)]) == 2
    assert "is a head-only file; give --ckpt BACKBONE.safetensors --head" in capsys.readouterr().err
