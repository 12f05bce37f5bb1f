import pytest
import torch

from fsdtrain.errors import ConfigError
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import ModelConfig
from fsdtrain.model.heads import head_of
from fsdtrain.train.finetune import FinetuneConfig, apply_freeze, trained_on_zones
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.files import load_weights, read_metadata, save_weights
from fsdtrain.weights.metadata import WeightsMeta

NET = {"encoder": "test_resnet", "d_model": 32, "depth": 1, "num_heads": 2, "grid": [1, 2], "modes": 2}
CAMS = ["CAM_FRONT", "CAM_BACK"]


def module(**kwargs) -> DrivingModule:
    torch.manual_seed(0)
    return DrivingModule(net=ModelConfig(**NET, heads=kwargs.pop("heads", ["global"])), cameras=CAMS, window=WindowSpec(), **kwargs)


def test_new_country_head_starts_as_a_copy_of_global(tmp_path):
    pre = module()
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), WeightsMeta(zones=["global"]))
    ft = module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    assert ft.net.heads.names == ["global", "CN"] and ft.baseline.heads.names == ["global", "CN"]
    state = ft.state_dict()
    for k, v in pre.state_dict().items():
        torch.testing.assert_close(state[k], v)
        if ".heads.heads.global." in k:
            torch.testing.assert_close(state[k.replace(".global.", ".CN.")], v)


def test_freeze_leaves_only_the_country_head_trainable(tmp_path):
    pre = module()
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), WeightsMeta())
    ft = module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    trainable = {n for n, p in ft.named_parameters() if p.requires_grad}
    assert trainable and all(head_of(n) == "CN" for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"net", "baseline"}
    assert ft.backbone_frozen


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_weights(tmp_path / "w.safetensors", module().state_dict(), WeightsMeta())
    with pytest.raises(ConfigError, match="shape"):
        DrivingModule(net=ModelConfig(**{**NET, "d_model": 64}), cameras=CAMS, init_from=str(tmp_path / "w.safetensors"))


def test_freeze_with_unknown_head_fails():
    with pytest.raises(ConfigError, match="match no head"):
        apply_freeze(torch.nn.Linear(2, 2), ["CN"])


def test_weights_file_round_trip_and_errors(tmp_path):
    state = {"a": torch.arange(4.0), "b.c": torch.ones(2, 2)}
    save_weights(tmp_path / "m.safetensors", state, WeightsMeta(zones=["cn"], heads=["global", "CN"]))
    loaded, meta = load_weights(tmp_path / "m.safetensors")
    assert meta.zones == ["cn"] and torch.equal(loaded["a"], state["a"])
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ConfigError, match="directory"):
        read_metadata(tmp_path)
    with pytest.raises(ConfigError, match="no weights file"):
        read_metadata(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="not a safetensors"):
        read_metadata(tmp_path / "junk.safetensors")


# --- freeze policy -------------------------------------------------------------------------------


def batch(countries, B_hw=(32, 48)) -> dict:
    """A synthetic batch for ``module()`` (2 cameras, default window)."""
    g = torch.Generator().manual_seed(0)
    B, w = len(countries), WindowSpec()
    return {
        "images": torch.randint(0, 255, (B, len(CAMS), w.history, 3, *B_hw), generator=g, dtype=torch.uint8),
        "ego_hist": torch.randn(B, w.history, 6, generator=g),
        "command": torch.zeros(B, dtype=torch.long),
        "intrinsics": torch.eye(3).expand(B, len(CAMS), 3, 3),
        "cam_to_ego": torch.eye(4).expand(B, len(CAMS), 4, 4),
        "future": torch.randn(B, w.future_steps, 3, generator=g),
        "country": list(countries),
    }


def test_freeze_words_and_patterns_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"freeze: 'encoder' is not one of backbone, none; for module patterns give a list"):
        FinetuneConfig(freeze="encoder")
    with pytest.raises(ConfigError, match=r"freeze: 'net.encodr' matches no module; modules are named like .*net.encoder"):
        module(finetune=FinetuneConfig(freeze=["net.encodr"]))
    with pytest.raises(ConfigError, match="leaves nothing to train"):
        module(finetune=FinetuneConfig(freeze=["net", "baseline"]))


def test_freeze_patterns_freeze_those_modules_and_put_them_in_eval_mode():
    m = module(finetune=FinetuneConfig(freeze=["net.encoder", "net.fusion.*"]))
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("net.encoder.", "net.fusion.")) for n in frozen)
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith(("net.heads.", "net.ego_embed.", "baseline.")))
    assert m.frozen_modules == ["net.encoder", "net.fusion"] and m.backbone_frozen is False
    m.train()
    m.on_train_batch_start(batch(["US"]), 0)
    assert not m.net.encoder.training and not m.net.fusion.training and m.net.heads.training and m.net.ego_embed.training


def test_freeze_none_trains_the_backbone_and_only_the_named_heads(tmp_path):
    save_weights(tmp_path / "w.safetensors", module().state_dict(), WeightsMeta())
    m = module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"], freeze="none"))
    assert m.trainable_parts() == ["CN", "backbone"] and not m.backbone_frozen
    assert not any(p.requires_grad for p in m.net.heads.heads["global"].parameters())


def test_frozen_backbone_keeps_batchnorm_statistics_and_has_no_dropout(tmp_path):
    net = {**NET, "dropout": 0.5}
    torch.manual_seed(0)
    pre = DrivingModule(net=ModelConfig(**net), cameras=CAMS, window=WindowSpec())
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), WeightsMeta())
    ft = DrivingModule(net=ModelConfig(**net), cameras=CAMS, window=WindowSpec(), init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    bn = [k for k, v in ft.state_dict().items() if "running_mean" in k]
    assert bn, "the test encoder has BatchNorm layers"
    before = {k: v.clone() for k, v in ft.state_dict().items()}
    ft.train()
    b = batch(["CN", "CN"])
    ft.on_train_batch_start(b, 0)
    losses = [ft._losses(b)[0]["loss"] for _ in range(2)]
    losses[0].backward()
    assert torch.equal(losses[0], losses[1])  # no dropout anywhere that is frozen
    after = ft.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # running statistics unchanged
    grads = {n for n, p in ft.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(head_of(n) == "CN" for n in grads)


def test_a_new_head_can_start_from_another_countrys_head(tmp_path):
    pre = module(heads=["global", "DE"])
    with torch.no_grad():
        for p in pre.net.heads.heads["DE"].parameters():
            p.add_(1.0)  # DE differs from global
    save_weights(tmp_path / "w.safetensors", pre.state_dict(), WeightsMeta())
    ft = module(heads=["global", "DE"], init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"], init_head_from="DE"))
    state, src = ft.state_dict(), pre.state_dict()
    cn = [k for k in state if head_of(k) == "CN"]
    assert cn and all(torch.equal(state[k], src[k.replace(".CN.", ".DE.")]) for k in cn)
    assert not all(torch.equal(state[k], src[k.replace(".CN.", ".global.")]) for k in cn)
    with pytest.raises(ConfigError, match=r"init_head_from: .* has no head 'FR' to start head 'CN' from; its heads are DE, global"):
        module(heads=["global", "DE"], init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"], init_head_from="FR"))


def test_global_head_learns_from_every_window_country_heads_from_their_own():
    m = module(heads=["global", "US", "DE"])
    assert m.global_every_window
    m._losses(batch(["US", "US"]))[0]["loss"].backward()
    grad = {h: sum(float(p.grad.abs().sum()) for p in m.net.heads.heads[h].parameters() if p.grad is not None) for h in ("global", "US", "DE")}
    assert grad["global"] > 0 and grad["US"] > 0 and grad["DE"] == 0
    # a fine-tune whose global head is frozen adds nothing for it
    assert not module(heads=["global", "US"], finetune=FinetuneConfig(train_heads=["US"])).global_every_window
    # the loss of a bank with only the global head is the routed loss, as before
    single = module()
    assert not single.global_every_window and "global_extra" not in single._losses(batch(["US"]))[0]


def test_trained_on_zones_per_part(tmp_path):
    save_weights(tmp_path / "w.safetensors", module().state_dict(), WeightsMeta(zones=["global"]))
    ft = module(init_from=str(tmp_path / "w.safetensors"), finetune=FinetuneConfig(train_heads=["CN"]))
    zones = trained_on_zones(list(ft.named_parameters()), init_head_from="global", zones_by_country={"CN": {"cn"}}, parent=ft.parent_metadata)
    assert zones == {"CN": ["cn", "global"], "backbone": ["global"], "global": ["global"]}
    pre = module(heads=["global", "US"])
    zones = trained_on_zones(list(pre.named_parameters()), init_head_from="global", zones_by_country={"US": {"global"}, "CN": {"cn"}}, parent=None)
    assert zones == {"US": ["global"], "backbone": ["cn", "global"], "global": ["cn", "global"]}
