"""``fsdtrain export`` (fsdtrain/weights/export.py): head selection, metadata, one-line errors, and
checkpoint files read without unpickling code. The export of real ZeRO-2/3 checkpoints, loaded in a
process without DeepSpeed, is tested in tests/train/test_checkpoints.py."""

import argparse
from dataclasses import asdict

import pytest
import torch

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.eval.evaluate import load_predictors
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import ModelConfig
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.export import export_weights
from fsdtrain.weights.files import load_weights, read_metadata, save_weights
from fsdtrain.weights.metadata import WeightsMeta

NET = {"encoder": "test_resnet", "d_model": 32, "depth": 1, "num_heads": 2, "grid": [1, 2], "modes": 2}
CAMS = ["CAM_FRONT", "CAM_BACK"]


def weights_file(path, heads=("global", "CN")):
    torch.manual_seed(0)
    module = DrivingModule(net=ModelConfig(**NET, heads=list(heads)), cameras=CAMS, window=WindowSpec())
    meta = {
        "net": asdict(module.net_config), "cameras": CAMS, "window": WindowSpec().to_dict(), "heads": module.net.heads.names,
        "trained_heads": ["CN"], "zones": ["cn", "global"], "countries_trained": ["CN"], "git_sha": "abc",
        "trained_on_zones": {"backbone": ["global"], "global": ["global"], "CN": ["cn", "global"]},
    }  # fmt: skip
    save_weights(path, module.state_dict(), WeightsMeta.of(**meta))
    return module


def test_export_keeps_the_chosen_heads_and_global(tmp_path, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    module = weights_file(tmp_path / "full.safetensors")
    meta = export_weights(tmp_path / "full.safetensors", tmp_path / "global.safetensors", heads=["global"])
    state, written = load_weights(tmp_path / "global.safetensors")
    assert written == meta and meta.heads == ["global"] and meta.net["heads"] == ["global"] and meta.trained_heads == []
    assert meta.zones == ["cn", "global"] and meta.exported_from == str(tmp_path / "full.safetensors")
    assert not any(".CN." in k for k in state) and any(".global." in k for k in state)
    full = module.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in state.items())
    net, base, _ = load_predictors(str(tmp_path / "global.safetensors"))
    assert net.heads.names == ["global"] and base.heads.names == ["global"]

    # `--heads CN`: global stays (countries without a head of their own are routed to it); at a cn site
    export_weights(tmp_path / "full.safetensors", tmp_path / "cn.safetensors", heads=["CN"], site_zone="cn")
    state, meta = load_weights(tmp_path / "cn.safetensors")
    assert meta.heads == ["global", "CN"] and len(state) == len(full)
    with pytest.raises(ConfigError, match="--heads DE: not in this checkpoint, whose heads are global,CN"):
        export_weights(tmp_path / "full.safetensors", tmp_path / "x.safetensors", heads=["DE"])


def fake_zero_checkpoint(root, optim_state):
    """A DeepSpeed-layout checkpoint folder with the given optimizer shard content."""
    ck = root / "checkpoints" / "step=2.ckpt"
    (ck / "checkpoint").mkdir(parents=True)
    (ck / "latest").write_text("checkpoint")
    torch.save({"module": {}, "buffer_names": [], "param_shapes": []}, ck / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save(optim_state, ck / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (ck / "fsdtrain.json").write_text('{"heads": ["global"], "net": {}}')
    return ck


def test_export_refuses_to_unpickle_objects(tmp_path, capsys):
    ck = fake_zero_checkpoint(tmp_path, {"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1, "x": argparse.Namespace(a=1)}})
    assert main(["export", "--ckpt", str(tmp_path), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fsdtrain: error: {ck / 'checkpoint' / 'zero_pp_rank_0_mp_rank_00_optim_states.pt'} holds a pickled argparse.Namespace; fsdtrain reads checkpoints without unpickling code (docs/checkpoints.md)"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no checkpoint at"),
        ("partial", "is an unfinished checkpoint (its save was interrupted)"),
        ("empty_workdir", "no checkpoint in"),
        ("no_shards", "is not a complete DeepSpeed checkpoint (checkpoint/ lacks its model or optimizer shards)"),
        ("truncated", "unreadable checkpoint file"),
        ("not_ours", "has no fsdtrain.json: it was not written by `fsdtrain fit`"),
    ],
)
def test_export_errors_are_one_line(tmp_path, capsys, case, message):
    ckpt = {"missing": tmp_path / "nope.ckpt", "empty_workdir": tmp_path}.get(case)
    if case == "partial":
        ckpt = tmp_path / "checkpoints" / ".step=4.ckpt.partial"
        ckpt.mkdir(parents=True)
    if case in ("no_shards", "truncated", "not_ours"):
        ckpt = fake_zero_checkpoint(tmp_path, {"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1}})
        shard = ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
        if case == "no_shards":
            shard.unlink()
        if case == "truncated":
            shard.write_bytes(shard.read_bytes()[:50])
        if case == "not_ours":
            (ckpt / "fsdtrain.json").unlink()
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("fsdtrain: error: ") and message in err, err
    assert not (tmp_path / "m.safetensors").exists()


def test_fit_refuses_an_unfinished_checkpoint(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    partial = tmp_path / "checkpoints" / ".step=4.ckpt.partial"
    partial.mkdir(parents=True)
    argv = ["fit", "--config", "configs/demo.yaml", "--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", "[]", "--wandb.mode", "disabled"]
    assert main([*argv, "--workdir", str(tmp_path), "--ckpt_path", str(partial)]) == 2
    assert "is an unfinished checkpoint" in capsys.readouterr().err


def test_export_policy_decides_which_heads_leave_their_zone(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    weights_file(tmp_path / "full.safetensors")
    full, out = str(tmp_path / "full.safetensors"), str(tmp_path / "out.safetensors")
    # the CN head was trained on cn data: a job at a global site may not even read it ...
    assert main(["export", "--ckpt", full, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fsdtrain: error: residency: CN in {full} was trained on zone 'cn' data and may not leave it, but this export runs at site "
        "zone 'global'; export it at a 'cn' site for 'cn' (--site.zone/--dest-zone cn), or allow it in the export policy ('cn: [CN]') "
        "if your approval lets it leave"
    )
    assert not (tmp_path / "out.safetensors").exists()
    # ... nor may a cn site write it for another zone
    assert main(["export", "--ckpt", full, "--out", out, "--heads", "CN", "--head-only", "--site-zone", "cn", "--dest-zone", "global"]) == 2
    assert "this export is for zone 'global'" in capsys.readouterr().err
    # in zone: fine; and what the policy allows may leave
    assert main(["export", "--ckpt", full, "--out", out, "--heads", "CN", "--head-only", "--site-zone", "cn"]) == 0
    assert "head-only CN" in capsys.readouterr().out and read_metadata(out).exported_for_zone == "cn"
    (tmp_path / "policy.yaml").write_text("cn: [CN]\n")
    policy = ["--policy", str(tmp_path / "policy.yaml")]
    assert main(["export", "--ckpt", full, "--out", out, "--heads", "CN", "--head-only", "--site-zone", "cn", "--dest-zone", "global", *policy]) == 0
    meta = read_metadata(out)
    assert meta.exported_for_zone == "global" and meta.head_only == ["CN"] and meta.trained_on_zones["CN"] == ["cn", "global"]
    # the global head alone never touched cn data: it leaves without any policy
    assert main(["export", "--ckpt", full, "--out", out, "--heads", "global"]) == 0
    (tmp_path / "bad.yaml").write_text("cn: CN\n")
    assert main(["export", "--ckpt", full, "--out", out, "--policy", str(tmp_path / "bad.yaml")]) == 2
    assert "export policy: zone 'cn' needs a list of parts" in capsys.readouterr().err
