"""Every YAML in configs/ runs through the real CLI on CPU (docs/contributing.md, habit 7), shrunk to tiny data and
a couple of steps; full configs run with their own strategy on 2 gloo ranks (slow). Before that, in
seconds: every YAML parses through the CLI's own parser (``--print_config``, nothing runs), a top-level
config as the command it is for, a piece as the group its folder names."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from fsdtrain.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOP_LEVEL = sorted(p.name for p in CONFIGS.glob("*.yaml"))
PIECES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml"))
TINY_NET = str(CONFIGS / "model" / "tiny.yaml")

#: how each top-level config is run: the command (and its required flags) the fast check parses it with
COMMANDS = {
    "demo.yaml": ["fit"],
    "finetune_cn.yaml": ["finetune", "--from", "pretrained.safetensors"],
    "pretrain_global.yaml": ["fit"],
}


def piece_group(piece: str) -> str | None:
    """The group a piece (a path under configs/) fills: ``--GROUP piece`` on a top-level config; None when unknown."""
    folder, _, name = piece.partition("/")
    if "/" in name or not name.endswith(".yaml"):
        return None
    if folder == "model":
        return "model.net"
    if folder == "strategy":
        return "trainer"
    if folder == "data":  # demo_window.yaml: data.window; any other name: the whole data group
        return "data.window" if name.endswith("_window.yaml") else "data"
    return None


def print_config(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """``fsdtrain *argv --print_config`` in this process: (exit code, the resolved config, stderr)."""
    capsys.readouterr()
    try:
        code = main([*argv, "--print_config"])
    except SystemExit as exc:  # --print_config prints and exits 0
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, (yaml.safe_load(out) if code == 0 else None), err


def parse_top_level(capsys, configs: Path, name: str) -> tuple[int, dict | None, str]:
    command, *flags = COMMANDS[name]
    return print_config(capsys, command, "--config", str(configs / name), *flags)


def parse_piece(capsys, configs: Path, piece: str) -> tuple[int, dict | None, str]:
    """The piece on configs/demo.yaml as ``--GROUP piece``; the resolved group must hold its values."""
    group = piece_group(piece)
    assert group, f"{piece}: which group it fills is unknown (piece_group)"
    code, resolved, err = print_config(capsys, "fit", "--config", str(configs / "demo.yaml"), f"--{group}", str(configs / piece))
    if code == 0:
        for key in group.split("."):
            resolved = resolved[key]
        values = yaml.safe_load((configs / piece).read_text())
        assert {k: resolved.get(k) for k in values} == values, piece
    return code, resolved, err


def tiny(fleet, countries, workdir):
    train = "[" + ",".join(fleet[c]["train"] for c in countries) + "]"
    # 2 ranks read whole shards: a single country's 1-clip val split cannot feed both, use its train split
    val = "[" + ",".join(fleet[c]["val" if len(countries) > 1 else "train"] for c in countries) + "]"
    return [
        "--workdir", str(workdir), "--data.train", train, "--data.val", val, "--data.window.window_stride", "2",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.image_size", "null", "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true", "--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.val_check_interval", "1.0",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
    ]  # fmt: skip


def run(*args, env_zone=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "FSDTRAIN_SITE_ZONE"}
    if env_zone:
        env["FSDTRAIN_SITE_ZONE"] = env_zone
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_every_config_is_covered():
    assert set(TOP_LEVEL) == {"demo.yaml", "finetune_cn.yaml", "pretrain_global.yaml"}
    for name in TOP_LEVEL:
        assert yaml.safe_load((CONFIGS / name).read_text())["trainer"]["strategy"].startswith("deepspeed")


def test_every_yaml_has_a_fast_parse_check():
    """A new YAML anywhere under configs/ fails here until COMMANDS or piece_group says how it parses."""
    found = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml"))
    uncovered = [f for f in found if f not in COMMANDS and piece_group(f) is None]
    assert not uncovered, f"no fast parse check for {uncovered}: add it to COMMANDS or piece_group in {Path(__file__).name}"
    assert set(TOP_LEVEL) == set(COMMANDS)


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_configs_parse(name, capsys):
    code, resolved, err = parse_top_level(capsys, CONFIGS, name)
    assert code == 0, err
    assert resolved["trainer"]["strategy"] == yaml.safe_load((CONFIGS / name).read_text())["trainer"]["strategy"]


@pytest.mark.parametrize("piece", PIECES)
def test_pieces_parse_as_their_group(piece, capsys):
    code, _, err = parse_piece(capsys, CONFIGS, piece)
    assert code == 0, err


def test_the_fast_check_fails_on_a_wrong_key(tmp_path, capsys):
    configs = shutil.copytree(CONFIGS, tmp_path / "configs")
    with (configs / "model" / "demo_net.yaml").open("a") as f:
        f.write("no_such_field: 3\n")
    code, _, err = parse_piece(capsys, configs, "model/demo_net.yaml")
    assert code == 2 and "no_such_field" in err
    code, _, err = parse_top_level(capsys, configs, "demo.yaml")  # it reaches demo.yaml through its reference
    assert code == 2 and "no_such_field" in err


def test_demo_and_finetune_share_the_network_windows_and_cameras(capsys):
    """The fine-tune reads the backbone the demo trained: same net (configs/model/demo_net.yaml), same windows
    (configs/data/demo_window.yaml), same cameras."""
    (code_demo, demo, err_demo), (code_cn, cn, err_cn) = (parse_top_level(capsys, CONFIGS, n) for n in ("demo.yaml", "finetune_cn.yaml"))
    assert code_demo == code_cn == 0, err_demo + err_cn
    assert demo["model"]["net"] == cn["model"]["net"]
    assert demo["data"]["window"] == cn["data"]["window"] and demo["data"]["cameras"] == cn["data"]["cameras"]


OLD_WINDOW = "history: 2\nframe_stride: 5\nhorizon_s: 3.0\nfuture_hz: 2.0\nwindow_stride: 5\n"  # demo_window.yaml of fsdtrain 0.2


@pytest.fixture(scope="module")
def fleet_at_8fps(tmp_path_factory):
    from fsdtrain.synth.fleet import ClipSpec, synth_fleet

    out = tmp_path_factory.mktemp("fleet8")
    clip = ClipSpec(width=64, height=48, seconds=5.0, fps=8.0, rig="surround6_narrow")
    synth_fleet(f"file://{out}/eight", ["US"], 1, clips_per_shard=1, split="train", seed=8, clip=clip)
    return f"file://{out}/eight/train/US"


def one_rank(train: str, workdir) -> list[str]:
    return [
        "--model.net", TINY_NET, "--workdir", str(workdir), "--data.train", train, "--data.val", "[]", "--data.batch_size", "2",
        "--data.num_workers", "0", "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true", "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled",
    ]  # fmt: skip


def test_a_window_in_frames_still_trains_converted_to_seconds(tiny_fleet, tmp_path):
    """An fsdtrain 0.2 window piece (frames) on 10 fps data: the same windows, recorded in seconds, and a warning saying what to write."""
    from fsdtrain.weights.files import read_metadata

    (tmp_path / "old_window.yaml").write_text(OLD_WINDOW)
    proc = run("fit", "--config", "configs/demo.yaml", "--data.window", str(tmp_path / "old_window.yaml"), *one_rank(f"[{tiny_fleet['US']['train']}]", tmp_path))
    assert "at the data's 10 fps write data.window.history_spacing_s: 0.5 and data.window.stride_s: 0.5 instead" in proc.stderr
    window = read_metadata(str(tmp_path / "model.safetensors")).window
    assert window == {"history": 2, "history_spacing_s": 0.5, "stride_s": 0.5, "horizon_s": 3.0, "future_hz": 2.0, "tolerance_s": 0.05}


def test_a_window_in_frames_on_mixed_rates_says_what_to_write(tiny_fleet, fleet_at_8fps, tmp_path, capsys):
    (tmp_path / "old_window.yaml").write_text(OLD_WINDOW)
    train = f"[{tiny_fleet['US']['train']},{fleet_at_8fps}]"
    code = main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--data.window", str(tmp_path / "old_window.yaml"), *one_rank(train, tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "frame_stride: 5 and window.window_stride: 5 count frames" in err and "(tiny/train/US 10 fps, eight/train/US 8 fps)" in err
    assert "write window.history_spacing_s and window.stride_s in seconds instead" in err


def test_pretrain_global_references_resnet34_6cam():
    """configs/pretrain_global.yaml takes its network from configs/model/resnet34_6cam.yaml (a reference,
    not a copy; `fsdtrain launch k8s --no-embed` ships the piece beside it: tests/launch/test_jobs.py)."""
    assert yaml.safe_load((CONFIGS / "pretrain_global.yaml").read_text())["model"]["net"] == "model/resnet34_6cam.yaml"


@pytest.fixture(scope="module")
def pretrained(tiny_fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrained")
    run("fit", "--config", "configs/demo.yaml", *tiny(tiny_fleet, ["US", "DE"], work))
    return work / "model.safetensors"


@pytest.mark.slow
@pytest.mark.distributed
def test_demo_yaml(pretrained):
    with safe_open(str(pretrained), "pt") as f:
        assert "net.heads.heads.global.queries" in f.keys()


@pytest.mark.slow
@pytest.mark.distributed
def test_pretrain_global_yaml(tiny_fleet, tmp_path):
    run("fit", "--config", "configs/pretrain_global.yaml", "--model.net", TINY_NET, *tiny(tiny_fleet, ["US", "DE"], tmp_path), "--trainer.devices", "2")
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_finetune_cn_yaml(tiny_fleet, pretrained, tmp_path):
    run("finetune", "--config", "configs/finetune_cn.yaml", "--from", str(pretrained), *tiny(tiny_fleet, ["CN"], tmp_path))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "net.heads.heads.CN.queries" in f.keys()


@pytest.mark.slow
@pytest.mark.parametrize("piece", [p for p in PIECES if p.startswith("model/")])
def test_model_pieces(piece, tiny_fleet, tmp_path):
    run(
        "fit", "--config", "configs/demo.yaml", "--model.net", str(CONFIGS / piece), *tiny(tiny_fleet, ["US"], tmp_path),
        "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_steps", "1",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("piece", [p for p in PIECES if p.startswith("strategy/")])
def test_strategy_pieces(piece, tiny_fleet, tmp_path):
    run("fit", "--config", "configs/demo.yaml", "--trainer", str(CONFIGS / piece), *tiny(tiny_fleet, ["US", "DE"], tmp_path), "--trainer.devices", "2")
    assert (tmp_path / "model.safetensors").exists()
