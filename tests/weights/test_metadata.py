"""The metadata record of weights files (fsdtrain/weights/metadata.py): the JSON fsdtrain writes
comes back byte for byte, files from before the newer keys load with today's defaults, a bad value
is a one-line error naming the file and the field, and unknown keys are kept."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fsdtrain.cli import main
from fsdtrain.errors import ConfigError
from fsdtrain.weights.files import read_metadata, save_weights
from fsdtrain.weights.head_only import head_metadata
from fsdtrain.weights.metadata import FORMAT, LINEAGE_FIELDS, WeightsMeta

NET = {"encoder": "test_resnet", "d_model": 32, "depth": 1, "num_heads": 2, "grid": [1, 2], "modes": 2, "heads": ["global", "CN"]}
WINDOW = {"history": 2, "frame_stride": 5, "horizon_s": 3.0, "future_hz": 2.0, "window_stride": 5}
SHA = "ab" * 32

# what run_metadata writes (ExportWeights adds `weights`), for a CN fine-tune of a global model
RUN = {
    "format": 1, "net": NET, "cameras": ["CAM_FRONT", "CAM_BACK"], "window": WINDOW, "heads": ["global", "CN"],
    "trained_heads": ["CN"], "zones": ["cn", "global"],
    "trained_on_zones": {"CN": ["cn", "global"], "backbone": ["global"], "global": ["global"]},
    "site_zone": "cn", "countries_trained": ["CN", "US"], "manifests": {"s3://cn/train/manifest.json": "cd" * 32},
    "git_sha": None, "artifact": None, "global_step": 12, "weights": "runs/cn/model.safetensors",
    "parent": {"weights": "runs/global/model.safetensors", "zones": ["global"], "trained_on_zones": None,
               "manifests": {"s3://us/train/manifest.json": "ef" * 32}, "git_sha": "0123abc", "artifact": None},
}  # fmt: skip
# a head-only file cut from it (ExportWeights._write_head)
HEAD = {**RUN, "kind": "head", "head_only": ["CN"], "backbone_sha256": SHA, "backbone_source": None, "sizes": {"full_weights_bytes": 1000}}
# `fsdtrain export` of a checkpoint: fsdtrain.json + config and where it came from
EXPORTED = {
    **RUN, "epoch": 1, "world_size": 2, "strategy": "FleetDeepSpeedStrategy", "config": None, "checkpoint": "runs/cn/checkpoints/step=12.ckpt",
    "exported_from": "runs/cn/checkpoints/step=12.ckpt", "exported_for_zone": "cn",
}  # fmt: skip
# weights from before trained_on_zones, kind, artifact and the parent's newer keys
OLD = {
    "format": 1, "net": {k: v for k, v in NET.items() if k != "heads"}, "cameras": ["CAM_FRONT"], "window": WINDOW, "heads": ["global"],
    "trained_heads": ["global"], "zones": ["cn", "global"], "site_zone": None, "countries_trained": ["CN"], "manifests": {},
    "git_sha": "abc", "global_step": 3, "parent": {"weights": "w.safetensors", "zones": ["cn"], "manifests": {}, "git_sha": None},
}  # fmt: skip


def raw_file(path, meta) -> None:
    """A weights file whose metadata JSON is exactly ``meta`` (whatever it holds)."""
    save_file({"x": torch.zeros(1)}, str(path), metadata={"fsdtrain": json.dumps(meta, sort_keys=True)})


def header(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["fsdtrain"]


@pytest.mark.parametrize("meta", [RUN, HEAD, EXPORTED, OLD, {}], ids=["run", "head", "exported", "old", "empty"])
def test_the_json_fsdtrain_writes_comes_back_byte_for_byte(tmp_path, meta):
    record = WeightsMeta.from_dict(meta, "m.safetensors")
    assert record.to_dict() == meta
    save_weights(tmp_path / "m.safetensors", {"x": torch.zeros(1)}, record)
    assert header(tmp_path / "m.safetensors") == json.dumps(meta, sort_keys=True)
    assert read_metadata(tmp_path / "m.safetensors") == record


def test_records_made_and_changed_in_code_write_what_the_dicts_did():
    made = WeightsMeta.of(**{k: v for k, v in RUN.items() if k != "parent"}, parent=WeightsMeta.from_dict(RUN["parent"], "p"))
    assert made.to_dict() == RUN and made.format == FORMAT and made.parent.weights == "runs/global/model.safetensors"
    # head_metadata writes backbone_source even when unknown (null), as {**meta, ...} did
    head = head_metadata(made.updated(sizes={"full_weights_bytes": 1000}), ["CN"], backbone_sha256=SHA, backbone_source=None)
    assert head.to_dict() == HEAD and head.is_head_only and not made.is_head_only
    assert head.without("kind", "head_only", "backbone_sha256", "backbone_source", "sizes") == made
    assert "weights" not in made.without("weights").to_dict() and made.updated(weights=None).to_dict()["weights"] is None
    with pytest.raises(TypeError, match="no field wieghts"):
        made.updated(wieghts="x")


def test_old_weights_load_with_the_defaults_of_today(tmp_path):
    raw_file(tmp_path / "old.safetensors", OLD)
    meta = read_metadata(tmp_path / "old.safetensors")
    assert meta.trained_on_zones is None and meta.kind is None and not meta.is_head_only and meta.artifact is None
    # residency: without trained_on_zones, every part counts the zones of all the data
    assert meta.part_zones(["backbone", "CN"]) == {"backbone": ["cn", "global"], "CN": ["cn", "global"]}
    assert meta.parent.trained_on_zones is None and meta.parent.zones == ["cn"]
    new = WeightsMeta.from_dict(RUN, "new")
    assert new.part_zones(["CN", "DE"]) == {"CN": ["cn", "global"], "DE": ["cn", "global"]}
    assert WeightsMeta().part_zones(["backbone"]) == {"backbone": []}
    # the lineage a child records: all six keys, null where the parent has none
    lineage = meta.lineage().to_dict()
    assert set(lineage) == set(LINEAGE_FIELDS) and lineage["trained_on_zones"] is None and lineage["zones"] == ["cn", "global"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"global_step": -1}, "global_step"),
        ({"global_step": True}, "global_step"),
        ({"world_size": 0}, "world_size"),
        ({"zones": ["CN"]}, "zones"),
        ({"trained_on_zones": {"CN": "cn"}}, "trained_on_zones"),
        ({"site_zone": "China North"}, "site_zone"),
        ({"heads": []}, "heads"),
        ({"cameras": "CAM_FRONT"}, "cameras"),
        ({"window": {**WINDOW, "history": 0}}, "window"),
        ({"net": ["resnet"]}, "net"),
        ({"kind": "adapter"}, "kind"),
        ({"backbone_sha256": "xyz"}, "backbone_sha256"),
        ({"sizes": {"full_weights_bytes": -5}}, "sizes"),
        ({"manifests": {"s3://x": 3}}, "manifests"),
        ({"parent": {**RUN["parent"], "zones": "global\nand more"}}, "parent.zones"),
        ({"parent": ["w.safetensors"]}, "parent"),
        ({"format": 0}, "format"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(tmp_path, change, field):
    path = tmp_path / "bad.safetensors"
    raw_file(path, {**RUN, **change})
    with pytest.raises(ConfigError) as info:
        read_metadata(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: ") and f"'{field}'" in message, message


def test_newer_formats_and_inconsistent_head_files_are_refused(tmp_path):
    path = tmp_path / "new.safetensors"
    raw_file(path, {**RUN, "format": FORMAT + 1})
    with pytest.raises(ConfigError, match=rf"new.safetensors: weights metadata field 'format' is from a newer fsdtrain .*, got {FORMAT + 1}$"):
        read_metadata(path)
    with pytest.raises(ConfigError, match=r"m: weights metadata of a head-only file \(kind 'head'\) lacks 'backbone_sha256'"):
        WeightsMeta.from_dict({**HEAD, "backbone_sha256": None}, "m")
    with pytest.raises(ConfigError, match=r"m: weights metadata field 'trained_heads' \['DE'\] names heads not in 'heads'"):
        WeightsMeta.from_dict({**RUN, "trained_heads": ["DE"]}, "m")
    with pytest.raises(ConfigError, match="m: weights metadata must be a JSON object"):
        WeightsMeta.from_dict([1], "m")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "notjson.safetensors"), metadata={"fsdtrain": "{not json"})
    with pytest.raises(ConfigError, match="notjson.safetensors: its fsdtrain metadata is not JSON"):
        read_metadata(tmp_path / "notjson.safetensors")


def test_the_cli_reports_a_bad_field_in_one_line(tmp_path, capsys):
    raw_file(tmp_path / "bad.safetensors", {**RUN, "trained_on_zones": {"CN": ["CN"]}})
    assert main(["export", "--ckpt", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bad.safetensors: weights metadata field 'trained_on_zones' must map parts" in err, err
    assert not (tmp_path / "out.safetensors").exists()


def test_unknown_keys_are_kept_aside_and_written_back(tmp_path):
    # a key from a newer fsdtrain (same format) or another tool: the file loads, the key is not checked
    meta = {**RUN, "calibration": {"CAM_FRONT": [1, 2]}, "parent": {**RUN["parent"], "dataset": "v2"}}
    raw_file(tmp_path / "m.safetensors", meta)
    record = read_metadata(tmp_path / "m.safetensors")
    assert record.extra == {"calibration": {"CAM_FRONT": [1, 2]}} and record.parent.extra == {"dataset": "v2"}
    assert record.to_dict() == meta
    save_weights(tmp_path / "again.safetensors", {"x": torch.zeros(1)}, record.updated(exported_for_zone="cn"))
    assert json.loads(header(tmp_path / "again.safetensors")) == {**meta, "exported_for_zone": "cn"}
    with pytest.raises(TypeError, match="no field calibration"):
        WeightsMeta.of(calibration={})
