import io
import json
import logging
from dataclasses import asdict

import pytest
import torch
import yaml

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.eval.evaluate import EvalDevice, _real_windows, evaluate, load_predictors
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.model.driving import ModelConfig
from fsdtrain.progress import Progress
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
    meta = {"net": {**asdict(net), "encoder_weights": str(tmp_path / "gone.safetensors")}, "cameras": list(DEFAULT_CAMERAS), "window": TINY_WINDOW.to_dict()}
    save_weights(tmp_path / "model.safetensors", module.state_dict(), WeightsMeta.of(**meta))
    loaded, _, _ = load_predictors(str(tmp_path / "model.safetensors"))
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, module.net.state_dict()[name]), name


def _weights(tmp_path) -> str:
    """A tiny untrained model's weights file, windows ``TINY_WINDOW``."""
    net = ModelConfig(encoder="test_resnet", d_model=32, depth=1, num_heads=2, grid=[1, 2], modes=2)
    module = DrivingModule(net=net, cameras=list(DEFAULT_CAMERAS), window=TINY_WINDOW)
    meta = {"net": asdict(net), "cameras": list(DEFAULT_CAMERAS), "window": TINY_WINDOW.to_dict()}
    save_weights(tmp_path / "model.safetensors", module.state_dict(), WeightsMeta.of(**meta))
    return str(tmp_path / "model.safetensors")


def test_eval_baselines_writes_a_report_without_a_checkpoint(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    out = tmp_path / "report.json"
    data = [tiny_fleet["US"]["val"], tiny_fleet["DE"]["val"]]
    assert main(["eval", "--baselines", "--data", *data, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint"] == "" and report["data"] == data and report["metric_version"] == 1
    assert list(report["per_country"]) == ["DE", "US"]
    for entry in [*report["per_country"].values(), report["overall"]]:
        assert set(entry) == {"clips", "windows", "constant_velocity", "ctra"}
        assert set(entry["ctra"]) == set(entry["constant_velocity"]) and None not in entry["ctra"].values()
    # one 5 s clip per country, default windows (history 2 x 5 frames, 3 s ahead, every 5 frames): 3 windows
    assert report["per_country"]["US"]["clips"] == 1 and report["per_country"]["US"]["windows"] == 3
    assert report["overall"]["clips"] == 2 and report["overall"]["windows"] == 6
    assert report["overall"]["ctra"]["ade"] < report["overall"]["constant_velocity"]["ade"]  # the synthetic cars turn
    printed = capsys.readouterr().out
    rows = [line.split()[:2] for line in printed.splitlines()[2:] if not line.startswith("report:")]
    assert rows == [[c, p] for c in ("DE", "US", "overall") for p in ("constant_velocity", "ctra")]
    assert f"report: {out}" in printed


def test_eval_baselines_checks_the_data_zones_before_reading(tiny_fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    audit = tmp_path / "audit.jsonl"
    cn = tiny_fleet["CN"]["val"]
    assert main(["eval", "--baselines", "--data", tiny_fleet["US"]["val"], cn, "--audit-log", str(audit)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"fsdtrain: error: residency: {cn} is in zone 'cn' but this job runs at site zone 'global'")
    read = [json.loads(line)["url"] for line in audit.read_text().splitlines()] if audit.exists() else []
    assert not [url for url in read if ".tar" in url or url.endswith(".idx")]  # no shard (or shard index) of any zone
    assert main(["eval", "--baselines", "--data", cn, "--site.zone", "cn"]) == 0
    assert "CN       ctra" in capsys.readouterr().out


def test_the_baselines_alone_are_those_reported_beside_a_model(tiny_fleet, tmp_path, capsys):
    data = [tiny_fleet["US"]["val"], tiny_fleet["CN"]["val"]]
    with_model = evaluate(_weights(tmp_path), data, site_zone="cn")
    alone = evaluate(None, data, site_zone="cn", window=TINY_WINDOW)
    for key in ("US", "CN"):
        m, b = with_model["per_country"][key], alone["per_country"][key]
        assert set(m) == {"clips", "windows", "model", "constant_velocity", "ctra", "ego_mlp"}
        assert (b["clips"], b["windows"]) == (m["clips"], m["windows"]) == (1, 8)
        assert (b["constant_velocity"], b["ctra"]) == (m["constant_velocity"], m["ctra"])
    assert set(with_model["overall"]) == {"clips", "windows", "model", "constant_velocity", "ctra", "ego_mlp"}
    assert alone["overall"]["windows"] == with_model["overall"]["windows"] == 16
    # the same windows from a --window file through the command line
    window = tmp_path / "window.yaml"
    window.write_text(yaml.safe_dump(TINY_WINDOW.to_dict()))
    out = tmp_path / "report.json"
    assert main(["eval", "--baselines", "--window", str(window), "--data", *data, "--site.zone", "cn", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == alone


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "w.safetensors", "--window", "window.yaml"], "--window is for --baselines"),
        (["--baselines", "--head", "head-CN.safetensors"], "--head goes on a model"),
        (["--baselines", "--plots", "pics"], "--plots draws a model's predictions"),
        (["--baselines", "--window", "bad.yaml"], "unknown field(s) horizon; known: history, "),
        (["--baselines", "--window", "missing.yaml"], "--window missing.yaml: cannot read it"),
        (["--baselines", "--window", "list.yaml"], "expected a mapping of data.window fields"),
    ],
)
def test_eval_baselines_flag_errors_are_one_line(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("history: 2\nhorizon: 3\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert main(["eval", *extra, "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsdtrain: error:") and message in err[0], err


def test_eval_baselines_refuses_another_zones_bucket_before_any_request(use_zone_key, tmp_path, capsys, monkeypatch):
    # as tests/test_residency.py for eval with a model: with the global key the store refuses every CN
    # request, so a residency error (not an access error) and an absent audit log show none was made
    from fsdtrain.synth.fleet import synth_fleet
    from helpers.fleet import TINY_CLIP

    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    url = f"s3://fleet-cn/{tmp_path.name}"
    synth_fleet(url, ["CN"], 1, split="val", clip=TINY_CLIP)  # with the admin key
    use_zone_key("global")
    audit = tmp_path / "audit.jsonl"
    assert main(["eval", "--baselines", "--data", f"{url}/val/CN", "--audit-log", str(audit)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"fsdtrain: error: residency: {url}/val/CN is in zone 'cn' but this job runs at site zone 'global'")
    assert "denied" not in err.lower() and not audit.exists()
    use_zone_key("cn")  # at a cn site, with its key: the report, and every shard read in the audit log
    assert main(["eval", "--baselines", "--data", f"{url}/val/CN", "--audit-log", str(audit), "--site.zone", "cn"]) == 0
    assert "CN       ctra" in capsys.readouterr().out
    assert any(".tar" in json.loads(line)["url"] for line in audit.read_text().splitlines())


# --- --device and --num-workers ----------------------------------------------------------------------


def test_the_device_choice_without_a_gpu():
    """The CUDA branch's choices, decided as on a GPU machine: pinned batches with non-blocking copies and
    bf16 autocast where the GPU has bf16; cuda asked for where there is none is one line."""
    gpu = EvalDevice.choose("auto", cuda_available=True, bf16_supported=True)
    assert gpu == EvalDevice(torch.device("cuda"), pin_memory=True, autocast_dtype=torch.bfloat16)
    assert EvalDevice.choose("cuda", cuda_available=True, bf16_supported=False) == EvalDevice(torch.device("cuda"), pin_memory=True)  # V100, T4: float32
    assert EvalDevice.choose("cpu", cuda_available=True) == EvalDevice(torch.device("cpu"))  # asked for, though a GPU is there
    assert EvalDevice.choose("auto", cuda_available=False) == EvalDevice(torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA device is visible to torch; use --device cpu"):
        EvalDevice.choose("cuda", cuda_available=False)
    with pytest.raises(ConfigError, match=r"^--device 'tpu': choose one of auto, cpu, cuda$"):
        EvalDevice.choose("tpu")
    cpu = EvalDevice.choose("cpu")
    batch = {k: torch.ones(2, 3) for k in ("images", "ego_hist", "command", "intrinsics", "cam_to_ego", "future")}
    moved = cpu.inputs(batch)
    assert set(moved) == set(batch) - {"future"} and all(moved[k] is batch[k] for k in moved)  # the CPU copies nothing
    with cpu.autocast():
        assert not torch.is_autocast_enabled()


def test_in_process_on_the_cpu_is_the_same_report_with_its_progress(tiny_fleet, tmp_path, caplog):
    data = [tiny_fleet["US"]["val"], tiny_fleet["CN"]["val"]]
    weights = _weights(tmp_path)
    caplog.set_level(logging.INFO, logger="fsdtrain")
    bar = Progress("eval", unit="windows", every_s=3600, stream=io.StringIO())
    in_process = evaluate(weights, data, site_zone="cn", device="cpu", num_workers=0, progress=bar)
    bar.close()
    assert in_process == evaluate(weights, data, site_zone="cn", device="cpu", num_workers=2)  # the same windows, however read
    lines = [r.getMessage() for r in caplog.records if r.name == "fsdtrain.progress"]
    assert lines[0].startswith("eval: 8/16 windows (50%) in ") and lines[-1].startswith("eval: 16/16 windows (100%) in "), lines


def test_eval_device_and_workers_flags(tiny_fleet, capsys):
    data = tiny_fleet["US"]["val"]
    assert main(["eval", "--baselines", "--data", data, "--device", "cpu", "--num-workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert "US       ctra" in out and "fsdtrain: eval: 3/3 windows (100%) in " in err
    assert main(["eval", "--baselines", "--data", data, "--num-workers", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "fsdtrain: error: --num-workers must be an integer >= 0, got -1"
    code = main(["eval", "--baselines", "--data", data, "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    if torch.cuda.is_available():  # a GPU machine runs it there
        assert code == 0, err
    else:
        assert code == 2 and err.splitlines() == ["fsdtrain: error: --device cuda: no CUDA device is visible to torch; use --device cpu (or auto: cuda when there is one)"]
