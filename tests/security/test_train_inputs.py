"""Hostile and broken inputs to training, resume, weights files, eval and the CLI (issue 16: items 2,
3, 5, 7, 8): each is refused with a one-line error (no traceback), and nothing of the input runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.model.driving import ModelConfig
from fsdtrain.train.checkpoints import CheckpointWriteError, FleetCheckpoint
from fsdtrain.train.finite import NonFiniteError
from fsdtrain.train.module import DrivingModule
from fsdtrain.weights.checkpoint_files import read_checkpoint
from fsdtrain.weights.files import save_weights
from fsdtrain.weights.metadata import WeightsMeta
from helpers.fleet import TINY_WINDOW
from helpers.tiny_module import Tiny

REPO = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    paths = os.pathsep.join([str(REPO / "tests"), str(REPO / "tests" / "security")])  # callbacks below: test_train_inputs.X
    out = {**os.environ, "PYTHONPATH": paths, "WANDB_MODE": "disabled", **extra}
    if "FSDTRAIN_SITE_ZONE" not in extra:
        out.pop("FSDTRAIN_SITE_ZONE", None)
    return out


def fsdtrain(*args: str, rc: int | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env(**extra_env), timeout=600)
    if rc is not None:
        assert proc.returncode == rc, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def one_line_error(text: str, *fragments: str) -> str:
    """The one ``fsdtrain: error:`` line of ``text`` (stderr), which holds every fragment; no traceback."""
    assert "Traceback" not in text, text[-5000:]
    errors = [line for line in text.splitlines() if line.startswith("fsdtrain: error: ")]
    assert errors, text[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def fit_args(tiny_fleet, workdir: Path, *extra: str) -> list[str]:
    return [
        "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml", "--data.train", f"[{tiny_fleet['US']['train']}]",
        "--data.val", "[]", "--data.window.window_stride", "2", "--data.batch_size", "2", "--data.num_workers", "0",
        "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--workdir", str(workdir), *extra,
    ]  # fmt: skip


# --- item 7: resuming never unpickles --------------------------------------------------------------


class RunsACommand:
    """Pickles as a call of ``os.system``: unpickling it runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def crafted(path: Path, marker: Path) -> None:
    """Rewrites a real torch file of a checkpoint with, beside its content, an object whose unpickling touches ``marker``."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, just written by the test's fit
    state["client_note"] = RunsACommand(f"touch {marker}")
    torch.save(state, path)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, shard", [("deepspeed_stage_2", "mp_rank_00_model_states.pt"), ("ddp", None)])
def test_resume_refuses_a_crafted_checkpoint_without_running_it(tiny_fleet, tmp_path, strategy, shard):
    run = tmp_path / "run"
    fsdtrain("fit", *fit_args(tiny_fleet, run, "--trainer.strategy", strategy, "--trainer.max_steps", "2", "--checkpoint.every_n_steps", "1"), rc=0)
    ckpt = run / "checkpoints" / "step=2.ckpt"
    target = next(ckpt.rglob(shard)) if shard else ckpt
    marker = tmp_path / "MARKER"
    crafted(target, marker)
    proc = fsdtrain("fit", *fit_args(tiny_fleet, run, "--trainer.strategy", strategy, "--trainer.max_steps", "4", "--ckpt_path", str(ckpt)), rc=2)
    one_line_error(proc.stderr, str(target), "holds a pickled posix.system", "without unpickling code")
    assert not marker.exists()


def test_deepspeeds_checkpoint_engine_is_replaced_by_a_weights_only_one(tmp_path):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from fsdtrain.train.safe_resume import install_safe_loading

    class Holder:  # what install_safe_loading needs of a DeepSpeedEngine: its checkpoint_engine attribute
        checkpoint_engine = TorchCheckpointEngine()

    holder = Holder()
    install_safe_loading(holder)
    engine = holder.checkpoint_engine
    assert isinstance(engine, TorchCheckpointEngine) and type(engine) is not TorchCheckpointEngine
    good = tmp_path / "optim_states.pt"
    engine.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "w": torch.ones(2)}, str(good))
    back = engine.load(str(good), map_location="cpu")
    assert isinstance(back["loss_scaler"], LossScaler) and back["zero_stage"] is ZeroStageEnum.gradients  # DeepSpeed's real classes
    bad, marker = tmp_path / "model_states.pt", tmp_path / "MARKER"
    torch.save({"module": {}, "x": RunsACommand(f"touch {marker}")}, bad)
    with pytest.raises(ConfigError, match=r"holds a pickled posix\.system"):
        engine.load(str(bad))
    assert not marker.exists()


def test_fit_refuses_weights_only_false(tiny_fleet, tmp_path, capsys):
    assert main(["fit", *fit_args(tiny_fleet, tmp_path, "--weights_only", "false")]) == 2
    one_line_error(capsys.readouterr().err, "--weights_only false", "never unpickles")


# --- item 3: a NaN never reaches the optimizer; the last good checkpoint stays `last` ------------------


class NanGroundTruth(pl.Callback):
    """Writes NaN into the ground truth (future path) of the batches from optimizer step ``at_step`` on,
    as a NaN pose in a clip's ego.npy would arrive in a batch."""

    def __init__(self, at_step: int = 2) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step:
            batch["future"][0, -1, 0] = float("nan")


class NanGradient(pl.Callback):
    """From optimizer step ``at_step`` on, the loss stays finite but its gradient is NaN (a backward that overflows)."""

    def __init__(self, at_step: int = 2) -> None:
        self.at_step = at_step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step >= self.at_step:
            loss.register_hook(lambda grad: grad * float("nan"))


class NanGroundTruthOnRank1(NanGroundTruth):
    """As :class:`NanGroundTruth`, on rank 1 only: the other rank's loss stays finite."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == 1:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def assert_last_is_finite_step_2(workdir: Path) -> None:
    ck = workdir / "checkpoints"
    assert os.readlink(ck / "last.ckpt") == "step=2.ckpt" and not (ck / "step=3.ckpt").exists(), sorted(p.name for p in ck.iterdir())
    state, meta, _ = read_checkpoint(workdir)
    assert meta.global_step == 2 and all(torch.isfinite(v).all() for v in state.values())
    assert not (workdir / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2"])
@pytest.mark.parametrize("poison, message", [("NanGroundTruth", "the loss is nan at step 2"), ("NanGradient", "not finite at step 2")])
def test_training_stops_at_the_first_non_finite_loss_or_gradient(tiny_fleet, tmp_path, strategy, poison, message):
    run = tmp_path / "run"
    args = fit_args(tiny_fleet, run, "--trainer.strategy", strategy, "--trainer.max_steps", "6", "--checkpoint.every_n_steps", "1",
                    "--checkpoint.keep", "0", f"--trainer.callbacks+=test_train_inputs.{poison}")  # fmt: skip
    proc = fsdtrain("fit", *args, rc=2)
    one_line_error(proc.stderr, "training stopped", message, "the last checkpoint is the last good one")
    assert_last_is_finite_step_2(run)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tiny_fleet, tmp_path):
    # rank 0 alone stopping would leave rank 1 waiting in the backward's all-reduce: both stop, no hang
    run = tmp_path / "run"
    args = fit_args(tiny_fleet, run, "--trainer.strategy", "ddp", "--trainer.max_steps", "6", "--checkpoint.every_n_steps", "1",
                    "--checkpoint.keep", "0", "--trainer.callbacks+=test_train_inputs.NanGroundTruthOnRank1")  # fmt: skip
    args[args.index("--trainer.devices") + 1] = "2"
    proc = fsdtrain("fit", *args, rc=2)
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    assert "the loss is nan at step 2 (epoch 0) on rank 1" in proc.stderr, proc.stderr[-3000:]
    assert "the loss is not finite at step 2 (epoch 0) on another rank" in proc.stderr, proc.stderr[-3000:]
    assert_last_is_finite_step_2(run)


class NanWeightsAfterStep(Tiny):
    """Tiny, whose weight turns NaN after optimizer step ``at_step`` (as a step with a bad learning rate would)."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.trainer.global_step == self.at_step:
            with torch.no_grad():
                self.layer.weight[0, 0] = float("nan")


def test_a_checkpoint_is_never_saved_with_non_finite_weights(tmp_path):
    # the checkpoint's own guard, without FiniteTraining: the NaN weight set after step 3's save is refused at step 4's
    ck = tmp_path / "checkpoints"
    checkpoint = FleetCheckpoint(str(ck), every_n_steps=1, keep=0, config_yaml="model: tiny\n", metadata=None)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[checkpoint],
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"layer\.weight on rank 0 is not finite at step 4; .*step=4\.ckpt was not saved"):
        trainer.fit(NanWeightsAfterStep(at_step=3))
    assert os.readlink(ck / "last.ckpt") == "step=3.ckpt" and not (ck / "step=4.ckpt").exists()


# --- item 3: eval never reports null for a result ---------------------------------------------------

NET = ModelConfig(encoder="test_resnet", d_model=32, depth=1, num_heads=2, grid=[1, 2], modes=2)


def weights_file(path: Path, *, zones: list[str] | None = None, poison: bool = False, **meta) -> Path:
    """A weights file of a tiny model (random init) with fit's metadata; ``poison``: one NaN weight in the model."""
    module = DrivingModule(net=NET, cameras=list(DEFAULT_CAMERAS), window=TINY_WINDOW)
    state = module.state_dict()
    if poison:
        key = "net.heads.heads.global.mlp.2.weight"  # the global head's output layer
        state[key] = torch.full_like(state[key], float("nan"))
    record = {"net": asdict(NET), "cameras": list(DEFAULT_CAMERAS), "window": TINY_WINDOW.to_dict(), "heads": ["global"]}
    if zones is not None:
        record |= {"zones": zones, "trained_on_zones": {"backbone": zones, "global": zones}}
    save_weights(path, state, WeightsMeta.of(**record, **meta))
    return path


def test_eval_of_nan_weights_is_an_error_naming_the_metric_not_a_null(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    weights = weights_file(tmp_path / "nan.safetensors", poison=True)
    out = tmp_path / "report.json"
    assert main(["eval", "--ckpt", str(weights), "--data", tiny_fleet["US"]["val"], "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, "non-finite ade", "predictor 'model'", "US window")
    assert not out.exists()


def test_a_metric_beyond_the_horizon_is_the_only_null_and_a_nan_row_is_refused():
    from fsdtrain.errors import DataError
    from fsdtrain.eval.metrics import METRIC_KEYS, MetricTable, sample_errors

    traj, logits, target = torch.zeros(2, 1, 4, 3), torch.zeros(2, 1), torch.ones(2, 4, 3)  # 4 points at 2 Hz: 2 s
    table = MetricTable()
    table.add(["US", "US"], "model", sample_errors(traj, logits, target, 2.0))
    summary = table.summary("US", "model")
    assert summary["l2_3s"] is None and summary["l2_avg_3s"] is None  # beyond the 2 s horizon (docs/report-format.md)
    assert all(v is not None for k, v in summary.items() if not k.endswith("3s"))
    target[1, 2, 0] = float("nan")  # a NaN pose in one window's ground truth
    with pytest.raises(DataError, match=r"non-finite ade .* of predictor 'model' on a DE window"):
        table.add(["US", "DE"], "model", sample_errors(traj, logits, target, 2.0))
    huge = MetricTable()  # each row finite, their mean not
    huge.add(["US", "US"], "model", np.full((2, len(METRIC_KEYS)), 1e308))
    with pytest.raises(DataError, match="metric ade of predictor 'model' on US is inf"):
        huge.summary("US", "model")


# --- item 5: weights metadata, one schema, one-line errors --------------------------------------------


def raw_weights(path: Path, metadata: str) -> Path:
    """A safetensors file of the tiny model whose fsdtrain metadata is ``metadata``, as written (bypassing the writer)."""
    state = DrivingModule(net=NET, cameras=list(DEFAULT_CAMERAS), window=TINY_WINDOW).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"fsdtrain": metadata})
    return path


GOOD_META = {"net": asdict(NET), "cameras": list(DEFAULT_CAMERAS), "window": TINY_WINDOW.to_dict(), "heads": ["global"]}
BAD_METADATA = {
    "not_json": ("{nope", ["its fsdtrain metadata is not JSON"]),
    "empty": ("{}", ["records no net, cameras, window"]),
    "list": ("[1, 2]", ["weights metadata must be a JSON object"]),
    "unknown_net_key": (json.dumps({**GOOD_META, "net": {**GOOD_META["net"], "bogus": 1}}), ["field 'net' has unknown key 'bogus'"]),
    "unknown_window_key": (json.dumps({**GOOD_META, "window": {**GOOD_META["window"], "bogus": 1}}), ["field 'window' has unknown key 'bogus'"]),
    "bad_net_value": (json.dumps({**GOOD_META, "net": {**GOOD_META["net"], "d_model": "wide"}}), ["field 'net' is not a valid ModelConfig"]),
    "nan_window": (json.dumps({**GOOD_META, "window": {**GOOD_META["window"], "horizon_s": float("nan")}}), ["field 'window' must map window fields"]),
    "zones_not_a_list": (json.dumps({**GOOD_META, "zones": "cn"}), ["field 'zones' must be a list of zone names"]),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_eval_of_weights_with_bad_metadata_is_one_line_naming_file_and_field(tiny_fleet, tmp_path, capsys, case):
    text, fragments = BAD_METADATA[case]
    weights = raw_weights(tmp_path / f"{case}.safetensors", text)
    assert main(["eval", "--ckpt", str(weights), "--data", tiny_fleet["US"]["val"]]) == 2
    one_line_error(capsys.readouterr().err, str(weights), *fragments)


@pytest.mark.parametrize("case", ["not_json", "unknown_net_key", "zones_not_a_list"])
def test_finetune_from_weights_with_bad_metadata_is_one_line(tiny_fleet, tmp_path, capsys, case):
    text, fragments = BAD_METADATA[case]
    weights = raw_weights(tmp_path / f"{case}.safetensors", text)
    assert main(["finetune", *fit_args(tiny_fleet, tmp_path / "run"), "--from", str(weights)]) == 2
    one_line_error(capsys.readouterr().err, str(weights), *fragments)


# --- item 2: a weights file's zones against the site zone ---------------------------------------------


def test_eval_of_cn_weights_at_a_global_site_is_refused(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    weights = weights_file(tmp_path / "cn.safetensors", zones=["cn", "global"])
    assert main(["eval", "--ckpt", str(weights), "--data", tiny_fleet["US"]["val"]]) == 2
    one_line_error(capsys.readouterr().err, "residency:", str(weights), "trained on zone 'cn' data", "site zone 'global'")
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "us")  # another restricted zone's site neither
    assert main(["eval", "--ckpt", str(weights), "--data", tiny_fleet["US"]["val"]]) == 2
    one_line_error(capsys.readouterr().err, "residency:", "site zone 'us'")


def test_the_zones_of_the_starting_weights_count_and_an_approved_export_passes(tmp_path):
    from fsdtrain.eval.evaluate import evaluate
    from fsdtrain.residency import ResidencyError

    # fine-tuned at a global site from weights that had learned from cn data: the lineage still says cn
    child = weights_file(tmp_path / "child.safetensors", zones=["global"], parent=WeightsMeta.of(zones=["cn"]).to_dict())
    with pytest.raises(ResidencyError, match="trained on zone 'cn' data and may not be used \\(fsdtrain eval\\) at site zone 'global'"):
        evaluate(str(child), ["file:///nowhere"], site_zone="global")
    WeightsMeta.of(zones=["cn"]).check_site("cn", "eval")  # at a cn site: allowed
    WeightsMeta.of(zones=["cn", "global"], exported_for_zone="global").check_site("global", "eval")  # exported under the policy
    with pytest.raises(ResidencyError):
        WeightsMeta.of(zones=["cn"], exported_for_zone="cn").check_site("global", "eval")


def test_finetune_from_cn_weights_at_a_global_site_is_refused(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    weights = weights_file(tmp_path / "cn.safetensors", zones=["cn"])
    assert main(["finetune", *fit_args(tiny_fleet, tmp_path / "run"), "--from", str(weights)]) == 2
    one_line_error(capsys.readouterr().err, "residency:", "trained on zone 'cn' data", "--model.init_from / finetune --from")


def test_validate_of_a_cn_checkpoint_at_a_global_site_is_refused(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    ckpt = tmp_path / "checkpoints" / "step=2.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {}, "global_step": 2}, ckpt)
    (tmp_path / "checkpoints" / "step=2.ckpt.fsdtrain.json").write_text(json.dumps({"zones": ["cn"], "heads": ["global", "CN"]}))
    args = fit_args(tiny_fleet, tmp_path / "run")
    args[args.index("--data.val") + 1] = f"[{tiny_fleet['US']['val']}]"
    assert main(["validate", *args, "--ckpt_path", str(ckpt)]) == 2
    one_line_error(capsys.readouterr().err, "residency:", "trained on zone 'cn' data", "--ckpt_path")


# --- item 5: CLI values validated before work starts; LightningCLI's reasons kept ----------------------


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--trainer.strategy=zero9"], ["--trainer.strategy 'zero9' is not a strategy", "deepspeed_stage_2"]),
        (["--model.optim.lr=-1"], ["model.optim.lr must be a number > 0"]),
        (["--model.optim.lr=nan"], ["model.optim.lr: expected float, got nan"]),
        (["--model.optim.min_lr_ratio=2"], ["model.optim.min_lr_ratio must be a number from 0 to 1"]),
        (["--data.batch_size=abc"], ["data.batch_size: expected int, got abc"]),
    ],
)
def test_fit_flags_are_checked_before_work_starts(tiny_fleet, tmp_path, capsys, flags, fragments):
    assert main(["fit", *fit_args(tiny_fleet, tmp_path / "run"), *flags]) == 2
    one_line_error(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_yaml_type_error_keeps_its_reason(tiny_fleet, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size: abc\n")
    proc = fsdtrain("fit", *fit_args(tiny_fleet, tmp_path / "run"), "--config", str(bad), rc=2)
    line = one_line_error(proc.stderr, 'data.batch_size: expected int, got abc')
    assert not line.rstrip().endswith(":")


def test_eval_batch_size_zero_is_refused_before_reading(tiny_fleet, tmp_path, capsys):
    weights = weights_file(tmp_path / "w.safetensors")
    assert main(["eval", "--ckpt", str(weights), "--data", tiny_fleet["US"]["val"], "--batch-size", "0"]) == 2
    one_line_error(capsys.readouterr().err, "--batch-size must be an integer >= 1, got 0")


def test_disk_full_during_a_checkpoint_save_is_one_line_naming_the_path(tmp_path):
    # a real ENOSPC: step 2's run file is a link to /dev/full (every write there fails with "No space left on device")
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / "step=2.ckpt").write_bytes(b"an older run's step 2")
    (ck / "step=2.ckpt.config.yaml").symlink_to("/dev/full")
    checkpoint = FleetCheckpoint(str(ck), every_n_steps=1, keep=0, config_yaml="model: tiny\n", metadata=None)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[checkpoint],
    )  # fmt: skip
    with pytest.raises(CheckpointWriteError) as info:
        trainer.fit(Tiny())
    message = str(info.value)
    assert "\n" not in message and f"could not save checkpoint {ck / 'step=2.ckpt'}" in message and "No space left on device" in message
    assert os.readlink(ck / "last.ckpt") == "step=1.ckpt"


# --- item 8: no credential in a launch job file; the export message ------------------------------------


def test_a_key_of_another_zone_is_never_written_into_a_job_file(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FSD00000000000000AA")  # this shell: the global key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "0" * 40)
    launch = ["launch", "slurm", "--config", "configs/pretrain_global.yaml", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--skip-store-check"]
    cn_key = "FSD1A2B3C4D5E6F7A8B"  # the cn zone's access key, not in this shell
    assert main([*launch, "--", "--wandb.name", cn_key]) == 2
    out = capsys.readouterr()
    assert out.out == "" and cn_key not in out.err
    one_line_error(out.err, "would contain an access key of fsdtrain's local store", "the job reads them from its environment")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://FSDCN:cn-secret@store.example.com:8333")  # credentials in the endpoint
    assert main(launch) == 2
    out = capsys.readouterr()
    assert "cn-secret" not in out.out + out.err
    one_line_error(out.err, "a user name and password in a URL")


def test_the_export_refusal_message_names_the_object(tmp_path, capsys):
    ck = tmp_path / "checkpoints" / "step=2.ckpt"
    (ck / "checkpoint").mkdir(parents=True)
    (ck / "latest").write_text("checkpoint")
    torch.save({"module": {}, "x": RunsACommand(f"touch {tmp_path / 'MARKER'}")}, ck / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1}}, ck / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (ck / "fsdtrain.json").write_text('{"heads": ["global"]}')
    assert main(["export", "--ckpt", str(tmp_path), "--out", str(tmp_path / "m.safetensors")]) == 2
    line = one_line_error(capsys.readouterr().err, "holds a pickled posix.system;")
    assert "a pickled an" not in line and not (tmp_path / "MARKER").exists()
