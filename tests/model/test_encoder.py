import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from fsdtrain.errors import ConfigError
from fsdtrain.model.encoder import ImageEncoder


def random_timm_state(name: str = "test_resnet", seed: int = 0) -> dict[str, torch.Tensor]:
    """The full (classifier) timm model's state dict with every tensor randomized, so a load is visible."""
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    return {
        k: (torch.randint(0, 100, v.shape) if v.dtype == torch.long else torch.randn(v.shape))
        for k, v in state.items()
    }


def images(M=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (M, 3, 32, 48), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "torch-checkpoint"])
def test_weights_file_is_loaded(tmp_path, fmt):
    state = random_timm_state()
    if fmt == "safetensors":
        path = tmp_path / "enc.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "enc.pth"
        torch.save({"state_dict": state, "epoch": 3} if fmt == "torch-checkpoint" else state, path)
    enc = ImageEncoder("test_resnet", d_model=8, grid=(1, 2), weights=str(path))
    loaded = enc.backbone.state_dict()
    assert len(loaded) == len(state) - 2  # everything but the classifier (fc.weight, fc.bias)
    for k, v in loaded.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


def test_prefixed_names_are_matched(tmp_path):
    """DDP-style ``module.`` names load into resnet; plain names load into a ViT, whose feature
    extractor names its parameters ``model.``."""
    state = random_timm_state()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    enc = ImageEncoder("test_resnet", d_model=8, grid=(1, 1), weights=str(tmp_path / "ddp.pt"))
    torch.testing.assert_close(enc.backbone.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
    vit = random_timm_state("test_vit")
    save_file(vit, str(tmp_path / "vit.safetensors"))
    enc = ImageEncoder("test_vit", d_model=8, grid=(1, 1), weights=str(tmp_path / "vit.safetensors"))
    torch.testing.assert_close(enc.backbone.state_dict()["model.pos_embed"], vit["pos_embed"])


def test_bad_weights_files_are_config_errors(tmp_path):
    make = lambda p: ImageEncoder("test_resnet", d_model=8, grid=(1, 1), weights=str(p))  # noqa: E731
    with pytest.raises(ConfigError, match="no file"):
        make(tmp_path / "absent.safetensors")
    save_file({"foo.weight": torch.zeros(2), "bar": torch.ones(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="none of the encoder's parameter names"):
        make(tmp_path / "other.safetensors")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none of the encoder's parameter names"):
        make(tmp_path / "other.pt")
    state = random_timm_state()
    state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ConfigError, match="conv1.0.weight.*another architecture"):
        make(tmp_path / "shape.safetensors")
    state = random_timm_state()
    del state["layer1.0.conv1.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigError, match="lacks 1 .*layer1.0.conv1.weight"):
        make(tmp_path / "partial.safetensors")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled_module.pt")  # a pickled object, not weights
    with pytest.raises(ConfigError, match="not a weights-only torch file"):
        make(tmp_path / "pickled_module.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a valid safetensors"):
        make(tmp_path / "junk.safetensors")


def bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


@pytest.mark.parametrize(
    "name", ["test_resnet", "test_efficientnet"]
)  # BatchNorm2d and timm's BatchNormAct2d
def test_freeze_bn_keeps_statistics_and_affine_fixed_in_train_mode(name):
    torch.manual_seed(0)
    frozen = ImageEncoder(name, d_model=8, grid=(1, 2), freeze_bn=True).train()
    before = bn_stats(frozen)
    assert before, "the encoder has BatchNorm layers"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    # the affine weight/bias of every frozen BN are buffers now: not parameters, never trained
    params = {n for n, _ in frozen.named_parameters()}
    assert not any(
        k.replace("running_mean", "weight") in params for k in before if k.endswith("running_mean")
    )
    frozen(images()).square().mean().backward()
    for k, v in bn_stats(frozen).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    # the same forward without freeze_bn does move the statistics (so the check above means something)
    torch.manual_seed(0)
    plain = ImageEncoder(name, d_model=8, grid=(1, 2)).train()
    plain(images())
    assert any(not torch.equal(v, before[k]) for k, v in bn_stats(plain).items())


def test_freeze_bn_freezes_the_loaded_statistics(tmp_path):
    state = random_timm_state()
    state = {k: v.abs() + 0.1 if "running_var" in k else v for k, v in state.items()}
    save_file(state, str(tmp_path / "enc.safetensors"))
    enc = ImageEncoder(
        "test_resnet", d_model=8, grid=(1, 1), weights=str(tmp_path / "enc.safetensors"), freeze_bn=True
    )
    enc.train()(images())
    for k, v in enc.backbone.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("grid", [(1, 1), (2, 3)])
def test_tokens_are_pooled_to_the_grid(grid):
    enc = ImageEncoder("test_resnet", d_model=8, grid=grid)
    assert enc.tokens_per_image == grid[0] * grid[1]
    assert enc(images()).shape == (4, grid[0] * grid[1], 8)


def test_feature_level_picks_a_finer_map_and_drops_later_stages():
    last = ImageEncoder("test_resnet", d_model=8, grid=(6, 10))
    finer = ImageEncoder("test_resnet", d_model=8, grid=(6, 10), feature_level=-2)
    x = torch.randint(0, 256, (2, 3, 96, 160), dtype=torch.uint8)
    assert last.backbone(x.float())[-1].shape[-2:] == (3, 5)  # stride 32
    assert finer.backbone(x.float())[-1].shape[-2:] == (6, 10)  # stride 16: no pooling needed for a 6x10 grid
    assert finer(x).shape == (2, 60, 8)
    assert not any(name.startswith("layer4") for name, _ in finer.backbone.named_parameters())
    assert sum(p.numel() for p in finer.parameters()) < sum(p.numel() for p in last.parameters())


def test_feature_level_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_level -9 is not a feature map of test_resnet"):
        ImageEncoder("test_resnet", d_model=8, grid=(1, 1), feature_level=-9)
