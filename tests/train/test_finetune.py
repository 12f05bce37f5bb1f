import pytest
import torch

from fsdtrain.data.windows import WindowSpec
from fsdtrain.errors import ConfigError
from fsdtrain.model.driving import ModelConfig
from fsdtrain.train.export import load_weights, read_metadata, save_weights
from fsdtrain.train.finetune import FinetuneConfig, apply_freeze, head_of
from fsdtrain.train.module import DrivingModule

NET = {"encoder": "test_resnet", "d_model": 32, "depth": 1, "num_heads": 2, "grid": [1, 2], "modes": 2}
CAMS = ["CAM_FRONT", "CAM_BACK"]


def module(**kwargs) -> DrivingModule:
    torch.manual_seed(0)
    return DrivingModule(net=ModelConfig(**NET, heads=kwargs.pop("heads", ["global"])), cameras=CAMS, window=WindowSpec(), **kwargs)


def test_new_country_head_starts_as_a_copy_of_global(tmp_path):
    pre = module()
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), {"zones": ["global"]})
    ft = module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    assert ft.net.heads.names == ["global", "CN"] and ft.baseline.heads.names == ["global", "CN"]
    state = ft.state_dict()
    for k, v in pre.state_dict().items():
        torch.testing.assert_close(state[k], v)
        if ".heads.heads.global." in k:
            torch.testing.assert_close(state[k.replace(".global.", ".CN.")], v)


def test_freeze_leaves_only_the_country_head_trainable(tmp_path):
    pre = module()
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), {})
    ft = module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    trainable = {n for n, p in ft.named_parameters() if p.requires_grad}
    assert trainable and all(head_of(n) == "CN" for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"net", "baseline"}
    assert ft.backbone_frozen


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_weights(tmp_path / "w.safetensors", module().state_dict(), {})
    with pytest.raises(ConfigError, match="shape"):
        DrivingModule(net=ModelConfig(**{**NET, "d_model": 64}), cameras=CAMS, init_from=str(tmp_path / "w.safetensors"))


def test_freeze_with_unknown_head_fails():
    with pytest.raises(ConfigError, match="match no head"):
        apply_freeze(torch.nn.Linear(2, 2), ["CN"])


def test_weights_file_round_trip_and_errors(tmp_path):
    state = {"a": torch.arange(4.0), "b.c": torch.ones(2, 2)}
    save_weights(tmp_path / "m.safetensors", state, {"zones": ["cn"], "heads": ["global", "CN"]})
    loaded, meta = load_weights(tmp_path / "m.safetensors")
    assert meta["zones"] == ["cn"] and torch.equal(loaded["a"], state["a"])
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ConfigError, match="directory"):
        read_metadata(tmp_path)
    with pytest.raises(ConfigError, match="no weights file"):
        read_metadata(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="not a safetensors"):
        read_metadata(tmp_path / "junk.safetensors")
