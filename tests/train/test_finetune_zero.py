"""Country heads on 2 gloo ranks under DeepSpeed (CPU). A CN fine-tune under ZeRO-2 and ZeRO-3:
frozen parameters hold no optimizer state, the backbone ends bit-identical, the head-only file is
small and puts the fine-tuned model back together on its backbone, and the audit log lists exactly
the shards the job read. Then multi-country pretraining with a country head and country weights."""

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fsdtrain.format.manifest import load_manifest
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import ModelConfig
from fsdtrain.model.heads import head_of
from fsdtrain.store.gate import AuditLog
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.checkpoint_files import _load
from fsdtrain.weights.files import read_metadata, save_weights
from fsdtrain.weights.head_only import load_with_head, path_bytes
from fsdtrain.weights.metadata import WeightsMeta
from helpers.fleet import ANY_ZONE

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


def pretrained(path: Path) -> None:
    """Stand-in for the global model's weights: configs/finetune_cn.yaml's model, seeded."""
    net = ModelConfig(**yaml_model())
    torch.manual_seed(0)
    module = DrivingModule(net=net, window=WindowSpec(), cameras=yaml_config()["data"]["cameras"])
    meta = {"net": asdict(net), "zones": ["global"], "trained_on_zones": {"backbone": ["global"], "global": ["global"]}, "weights": str(path)}
    save_weights(path, module.state_dict(), WeightsMeta.of(**meta))


def yaml_config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "configs" / "finetune_cn.yaml").read_text())


def yaml_model() -> dict:
    import yaml

    net = yaml_config()["model"]["net"]  # a model piece by path, from configs/ (model/demo_net.yaml)
    return yaml.safe_load((REPO / "configs" / net).read_text()) if isinstance(net, str) else net


def finetune(init: Path, workdir: Path, train: str, strategy: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k != "FSDTRAIN_SITE_ZONE"} | {"WANDB_MODE": "disabled"}
    args = [
        "finetune", "--config", "configs/finetune_cn.yaml", "--from", str(init), "--workdir", str(workdir),
        "--data.train", f"[{train}]", "--data.val", "[]", "--data.window.window_stride", "2", "--data.batch_size", "2",
        "--data.num_workers", "0", "--trainer.strategy", strategy, "--trainer.devices", str(WORLD), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def optimizer_values(ckpt: Path) -> tuple[int, set[str]]:
    """fp32 master values held over all ranks' optimizer shards, and the parameters DeepSpeed froze."""
    shards = sorted((ckpt / "checkpoint").glob("*_optim_states.pt"))
    assert len(shards) == WORLD
    held = 0
    for shard in shards:
        opt = _load(shard)["optimizer_state_dict"]
        flat = sum(t.numel() for t in opt.get("single_partition_of_fp32_groups") or opt["fp32_flat_groups"])
        state = (opt.get("base_optimizer_state") or opt["optimizer_state_dict"])["state"]
        moments = sum(v.numel() for s in state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))
        assert 2 * flat <= moments <= 2 * flat + 64  # Adam moments of those values only (+ alignment)
        held += flat
    model = _load(next((ckpt / "checkpoint").glob("*model_states.pt")))
    frozen = {k.removeprefix("_forward_module.") for k in model["frozen_param_shapes"]}
    return held, frozen


@pytest.mark.parametrize("strategy", ["deepspeed_stage_2", "deepspeed_stage_3"])
def test_cn_finetune_under_zero(tiny_fleet, tmp_path, strategy):
    init, work = tmp_path / "global.safetensors", tmp_path / "cn"
    pretrained(init)
    proc = finetune(init, work, tiny_fleet["CN"]["train"], strategy)

    # the backbone, the global head and the baseline's trunk are bit-identical; the CN head trained
    before, after = load_file(init), load_file(work / "model.safetensors")
    cn = {k for k in after if head_of(k) == "CN"}
    assert cn and set(before) == set(after) - cn
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert any(not torch.equal(after[k], before[k.replace(".CN.", ".global.")]) for k in cn)

    # only the CN head's parameters are in the optimizer (fp32 master copy and Adam moments)
    ckpt = (work / "checkpoints" / "last.ckpt").resolve()
    held, frozen = optimizer_values(ckpt)
    trainable = sum(after[k].numel() for k in cn)
    total = sum(v.numel() for k, v in after.items() if "running_" not in k and "num_batches" not in k)
    assert trainable <= held <= trainable + 64 * len(cn), (held, trainable)  # + DeepSpeed's alignment padding
    assert held < total / 5
    params = {n for n, _ in DrivingModule(net=ModelConfig(**yaml_model()), window=WindowSpec()).named_parameters()}
    assert frozen == {n for n in params if head_of(n) != "CN"}

    # the head-only file: CN's tensors, small next to the checkpoint and the weights, and whole again on its backbone
    head = work / "head-CN.safetensors"
    assert set(load_file(head)) == cn
    ratio_weights = path_bytes(head) / path_bytes(work / "model.safetensors")
    ratio_ckpt = path_bytes(head) / path_bytes(ckpt)
    # issue 7's goal is <= 10% of the full checkpoint; against the weights file alone it depends on how small
    # the demo's backbone is (test_resnet to stride 16: the CN head of the net and of the ego MLP are 11% of it)
    assert ratio_ckpt <= 0.10 and ratio_weights <= 0.15, (ratio_weights, ratio_ckpt)
    # logged by rank 0 of 2, on stderr
    assert f"fsdtrain[rank 0]: head-only weights (CN) written to {head}: " in proc.stderr and f"{ratio_weights:.3f} of model.safetensors" in proc.stderr
    meta = read_metadata(head)
    assert meta.backbone_source == str(init) and meta.site_zone == "cn"
    assert meta.trained_on_zones == {"CN": ["cn", "global"], "backbone": ["global"], "global": ["global"]}
    assert meta.sizes["checkpoint_bytes"] == path_bytes(ckpt)
    state, _ = load_with_head(init, head)
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in after)
    print(f"{strategy}: head-only {path_bytes(head)} B = {ratio_weights:.4f} of model.safetensors, {ratio_ckpt:.4f} of the checkpoint")

    # the audit log: every clip of data.train once (one epoch, range reads), the shards' indexes, from both ranks, zone cn
    manifest = load_manifest(tiny_fleet["CN"]["train"], ANY_ZONE, check_zone=False)
    rows = AuditLog.read(work / "audit.jsonl")
    clips = [r for r in rows if "sample" in r]  # the metadata and the narrow camera (not adjacent): 2 requests per clip
    assert {r["url"] for r in clips} == {manifest.shard_url(s) for s in manifest.shards}
    readers = {}
    for r in clips:
        readers.setdefault((r["url"], r["sample"]), set()).add((r["rank"], r["pid"]))
    assert len(readers) == manifest.samples and all(len(who) == 1 for who in readers.values())  # each clip by one worker
    assert len(clips) == 2 * manifest.samples  # and once: two requests, no more
    assert {r["url"] for r in rows if "sample" not in r} == {f"{manifest.url}/{s.index}" for s in manifest.shards}
    assert {r["zone"] for r in rows} == {"cn"} and {r["rank"] for r in rows} == set(range(WORLD))
    assert {r["sha256"] for r in clips} == {s.sha256 for s in manifest.shards}


def test_pretraining_with_a_country_head_and_country_weights(tiny_fleet, tmp_path):
    """US + DE on 2 ranks (ZeRO-2) with a US head: the global head and the backbone learn from every
    window, the US head from US windows; DE gets twice US's share of the windows."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "FSDTRAIN_SITE_ZONE"} | {"WANDB_MODE": "disabled"}
    work = tmp_path / "pre"
    args = [
        "fit", "--config", "configs/demo.yaml", "--workdir", str(work), "--model.net.heads", "[global, US]",
        "--data.train", f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]", "--data.val", "[]",
        "--data.country_weights", "{DE: 2.0}", "--data.window.window_stride", "2", "--data.batch_size", "2",
        "--data.num_workers", "0", "--trainer.devices", str(WORLD), "--trainer.max_steps", "3",
        "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    meta = read_metadata(work / "model.safetensors")
    assert meta.heads == ["global", "US"] and meta.trained_on_zones == {"US": ["global"], "backbone": ["global"], "global": ["global"]}
    assert not (work / "head-US.safetensors").exists()  # pretraining: no head-only file
    audit = {r["url"] for r in AuditLog.read(work / "audit.jsonl")}
    assert any("/DE/" in u for u in audit) and any("/US/" in u for u in audit)
