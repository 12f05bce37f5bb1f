"""Hostile and broken data inputs (issue 16, items 2, 3, 5, 6 and 8): each is refused with one line
naming the file and the field, by ``data write``, ``data verify`` and the loader alike, and none
gives a traceback, a hang or a silently wrong result.

Every dataset here is written by the project's own synthetic fleet and writer, then damaged the way
a careless copy or an attacker would: a relabelled manifest, NaN poses, absurd metadata, a header
that declares 10^12 rows, special files in place of raw inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npformat
from torch.utils.data import DataLoader

from fsdtrain.cli import main
from fsdtrain.data.datamodule import FleetDataModule, load_manifests
from fsdtrain.data.stream import FleetStream, Source, StreamSpec
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.index import parse_index
from fsdtrain.format.manifest import MANIFEST_NAME
from fsdtrain.format.schema import DEFAULT_CAMERAS, decode_npy, encode_npy
from fsdtrain.format.verify import verify
from fsdtrain.format.writer import ShardSet, write_shards
from fsdtrain.ingest.drives import write_drives
from fsdtrain.ingest.raw import load_drive
from fsdtrain.residency import ResidencyError
from fsdtrain.store.gate import ZoneGate
from fsdtrain.synth.fleet import ClipSpec, make_clip, synth_fleet
from fsdtrain.synth.raw_drives import synth_raw_drives
from helpers.fleet import TINY_CLIP, TINY_SIZE, TINY_WINDOW, clone_drive, rewrite_shard

# --- helpers ---------------------------------------------------------------------------------------


def copy_dir(url: str, dest: Path) -> Path:
    """A copy of the shard directory at ``url`` (file://), to damage."""
    shutil.copytree(url.removeprefix("file://"), dest)
    return dest


def edit_manifest(directory: Path, **fields) -> None:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def edit_member(suffix: str, change) -> callable:
    """A ``rewrite_shard`` edit applying ``change(bytes) -> bytes`` to the first clip's ``suffix`` member."""

    def edit(members):
        out, done = [], False
        for name, data in members:
            if name.endswith("." + suffix) and not done:
                data, done = change(data), True
            out.append((name, data))
        return out

    return edit


def meta_with(raw_value: str, field: str):
    """A meta.json change setting ``field`` to the JSON text ``raw_value`` (e.g. ``1e999``, ``NaN``)."""

    def change(data: bytes) -> bytes:
        meta = json.loads(data)
        meta[field] = "__VALUE__"
        return json.dumps(meta).replace('"__VALUE__"', raw_value).encode()

    return change


def calib_with(cam: str, field: str, value) -> callable:
    def change(data: bytes) -> bytes:
        calib = json.loads(data)
        calib[cam][field] = value
        return json.dumps(calib).encode()

    return change


def ego_with(row: int, col: int, value: float):
    def change(data: bytes) -> bytes:
        ego = decode_npy(data, "test")
        ego[row, col] = value
        return encode_npy(ego)

    return change


def npy_declaring(shape: tuple[int, ...], body: bytes = b"", descr: str = "<f8", fortran: bool = False) -> bytes:
    """A ``.npy`` file whose header declares ``shape`` of ``descr``, followed by ``body`` only."""
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})  # magic, then header
    return buf.getvalue() + body


def stream(directories, *, site="global", on_error="fail", image_size=None) -> FleetStream:
    urls = [str(d) for d in directories]
    return FleetStream(
        Source.all(load_manifests(urls, ZoneGate(site))), TINY_WINDOW, cameras=list(DEFAULT_CAMERAS), batch_size=2,
        gate=ZoneGate(site), reading=StreamSpec(on_error=on_error, max_skip_fraction=1.0), image_size=image_size,
    )  # fmt: skip


def read_all(s: FleetStream) -> list[str]:
    s.set_distributed(0, 1, 0)
    return [f"{c}@{int(f)}" for batch in DataLoader(s, batch_size=s.batch_size) for c, f in zip(batch["clip_id"], batch["frame"])]


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    for f in fragments:
        assert f in message, message
    return message


def verify_problems(directory: Path, **kw) -> list[str]:
    problems = verify(str(directory), fast=True, **kw)
    assert all("\n" not in p for p in problems), problems
    return problems


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# --- item 2: a zone comes from the policy, and every clip's own meta.json is checked ----------------


def test_relabelled_copy_of_cn_data_is_refused_at_a_global_site(tiny_fleet, tmp_path):
    """CN shards copied to a global bucket with the manifest's zone set to ``global`` (the leak of issue 16)."""
    copy = copy_dir(tiny_fleet["CN"]["train"], tmp_path / "global-bucket/tiny/train/CN")
    edit_manifest(copy, zone="global")
    with pytest.raises(DataError) as exc:
        read_all(stream([copy]))
    one_line(exc, f"{copy}/manifest.json", "zone 'global' is not the residency policy's zone 'cn' for country CN")
    assert verify_problems(copy) == [str(exc.value)]


def test_relabelled_copy_claiming_another_country_is_refused_by_each_clip(tiny_fleet, tmp_path):
    """Manifest relabelled to US/global: each clip's meta.json still says CN/cn, so the loader stops,
    under ``on_error: skip`` too (a residency refusal is never skipped), and verify names every clip."""
    copy = copy_dir(tiny_fleet["CN"]["train"], tmp_path / "global-bucket/tiny/train/CN")
    edit_manifest(copy, zone="global", country="US")
    for on_error in ("fail", "skip"):
        with pytest.raises(ResidencyError) as exc:
            read_all(stream([copy], on_error=on_error))
        one_line(exc, f"file://{copy}/shard-00000", "(meta.json zone) is in zone 'cn'", "site zone 'global'")
    problems = verify_problems(copy)
    assert len(problems) == 2 and all("(meta.json zone) is in zone 'cn'" in p for p in problems), problems
    # at a cn site the clips may be read, but they still disagree with their manifest: a DataError
    with pytest.raises(DataError) as exc:
        read_all(stream([copy], site="cn"))
    one_line(exc, "meta.json country is 'CN', the manifest says 'US'")


def test_write_and_synth_refuse_a_zone_the_policy_does_not_give_the_country(tmp_path):
    cn = make_clip("CN", seed=0, index=0, clip=TINY_CLIP)
    with pytest.raises(ConfigError) as exc:  # before any clip is made
        ShardSet(dataset="d", split="train", country="CN", zone="global", cameras=tuple(TINY_CLIP.cameras), fps=TINY_CLIP.fps)
    one_line(exc, "shard set d/train/CN: zone 'global' is not the residency policy's zone 'cn' for country CN")
    shard_set = ShardSet(dataset="d", split="train", country="CN", zone="cn", cameras=tuple(TINY_CLIP.cameras), fps=TINY_CLIP.fps)
    relabelled = {**cn, "meta.json": meta_with('"global"', "zone")(cn["meta.json"])}
    with pytest.raises(DataError) as exc:
        write_shards(f"file://{tmp_path}/d/train/CN", [relabelled], shard_set, clips_per_shard=1)
    one_line(exc, "meta.json zone 'global' is not the residency policy's zone 'cn' for country CN")
    assert not list(tmp_path.rglob("manifest.json"))


def test_a_raw_drive_whose_zone_is_not_its_countrys_is_refused(raw_drive, tmp_path):
    drive = clone_drive(raw_drive, tmp_path)
    info = json.loads((drive / "drive.json").read_text())
    (drive / "drive.json").write_text(json.dumps({**info, "country": "CN", "zone": "global"}))
    with pytest.raises(DataError) as exc:
        load_drive(drive)
    one_line(exc, "drive bad_drive: drive.json zone 'global' is not the residency policy's zone 'cn' for country CN")


# --- items 3 and 5: every field of meta.json, calib.json and ego.npy, finite and in range ------------

BAD_CLIPS = {
    # name: (member, change, fragment of the one-line error)
    "ego NaN": ("ego.npy", ego_with(10, 1, np.nan), "ego.npy x at frame 10 is nan"),
    "ego inf": ("ego.npy", ego_with(3, 4, np.inf), "ego.npy speed at frame 3 is inf"),
    "ego absurd": ("ego.npy", ego_with(0, 2, 1e308), "ego.npy y at frame 0 is 1e+308"),
    "ego 10^12 rows": ("ego.npy", lambda d: npy_declaring((10**12, 6)), "ego.npy is float64[1000000000000, 6], expected float64[50, 6]"),
    "ego float32": ("ego.npy", lambda d: encode_npy(np.zeros((50, 6), np.float32)), "ego.npy is float32[50, 6], expected float64[50, 6]"),
    "ego Fortran order": ("ego.npy", lambda d: npy_declaring((50, 6), bytes(2400), fortran=True), "ego.npy is float64[50, 6] Fortran order, expected float64[50, 6] in C order"),
    "ego big-endian": ("ego.npy", lambda d: encode_npy(np.zeros((50, 6), ">f8")), "ego.npy is >f8[50, 6], expected float64[50, 6]"),
    "ego negative shape": ("ego.npy", lambda d: npy_declaring((-50, -6), bytes(2400)), ".npy header shape (-50, -6) is not a tuple of non-negative integers"),
    "ego pickle": ("ego.npy", lambda d: npy_declaring((50, 6), b"\x80\x04N.", descr="|O"), "ego.npy: .npy dtype object is not a plain numeric type"),
    "calib NaN": ("calib.json", calib_with("CAM_FRONT", "K", [[float("nan"), 0, 32], [0, 50, 24], [0, 0, 1]]), "calib.json CAM_FRONT.K must be a 3x3 matrix of finite numbers"),
    "calib absurd": ("calib.json", calib_with("CAM_BACK", "T_cam_to_ego", [[1, 0, 0, 1e308], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "calib.json CAM_BACK.T_cam_to_ego must be a 4x4 matrix of finite numbers"),
    "calib not rigid": ("calib.json", calib_with("CAM_BACK", "T_cam_to_ego", [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "calib.json CAM_BACK.T_cam_to_ego must be a rigid transform"),
    "calib size zero": ("calib.json", calib_with("CAM_FRONT", "size", [0, 0]), "calib.json CAM_FRONT.size [0, 0] must be [width, height]"),
    "calib size string": ("calib.json", calib_with("CAM_FRONT", "size", ["64", 48]), "calib.json CAM_FRONT.size ['64', 48] must be"),
    "meta frames 1e999": ("meta.json", meta_with("1e999", "frames"), "meta.json frames inf must be an integer"),
    "meta fps NaN": ("meta.json", meta_with("NaN", "fps"), "meta.json fps nan must be a number"),
    "meta fps string": ("meta.json", meta_with('"10"', "fps"), "meta.json fps '10' must be a number"),
    "meta fps zero": ("meta.json", meta_with("0", "fps"), "meta.json fps 0 must be a number in (0, 1000]"),
    "meta numeric zone": ("meta.json", meta_with("5", "zone"), "meta.json zone 5 is not a zone name"),
    "meta numeric country": ("meta.json", meta_with("86", "country"), "meta.json country 86 is not an ISO 3166-1 alpha-2 code"),
    "meta timestamp 20 digits": ("meta.json", meta_with("99999999999999999999", "timestamp_us"), "meta.json timestamp_us 99999999999999999999 must be"),
    "meta unknown field": ("meta.json", meta_with("1", "extra"), "meta.json fields do not match fsdtrain.clip/1: unknown ['extra']"),
    "meta clip_id of another clip": ("meta.json", meta_with('"other-000000"', "clip_id"), "meta.json clip_id 'other-000000' is not the sample's key"),
    "meta not an object": ("meta.json", lambda d: b"[1, 2]", "meta.json must hold a JSON object, got list"),
    "meta zone twice": ("meta.json", lambda d: d[:-1] + b', "zone": "global"}', "meta.json is not valid JSON (key 'zone' appears twice in one object)"),
}


@pytest.fixture(scope="module")
def damaged(tiny_fleet, tmp_path_factory) -> dict[str, Path]:
    """One copy of the US train split per BAD_CLIPS case, its first clip damaged (shard sha256 and
    index fixed, as after a bad write)."""
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for i, (case, (member, change, _)) in enumerate(BAD_CLIPS.items()):
        d = copy_dir(tiny_fleet["US"]["train"], root / f"c{i}" / "tiny/train/US")
        rewrite_shard(d, edit_member(member, change))
        out[case] = d
    return out


@pytest.mark.parametrize("case", list(BAD_CLIPS))
def test_a_bad_clip_is_one_problem_in_verify(damaged, case):
    problems = verify_problems(damaged[case])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"file://{damaged[case]}/shard-000000.tar:synth_us_s0_train_000000-000000: "), problems
    assert BAD_CLIPS[case][2] in problems[0], problems


@pytest.mark.parametrize("case", list(BAD_CLIPS))
def test_a_bad_clip_is_a_data_error_in_the_loader_and_skipped_under_skip(damaged, case):
    with pytest.raises(DataError) as exc:
        read_all(stream([damaged[case]]))
    one_line(exc, f"{damaged[case]}/shard-000000.tar:synth_us_s0_train_000000-000000", BAD_CLIPS[case][2])
    ids = read_all(stream([damaged[case]], on_error="skip"))  # counted as a skipped clip; the other clip is read
    assert {i.split("@")[0] for i in ids} == {"synth_us_s0_train_000001-000000"}


@pytest.mark.parametrize("case", [c for c in BAD_CLIPS if not c.startswith("meta clip_id")])
def test_a_bad_clip_is_refused_by_the_writer(tmp_path, case):
    member, change, fragment = BAD_CLIPS[case]
    sample = make_clip("US", seed=0, index=0, clip=TINY_CLIP)
    sample[member] = change(sample[member])
    shard_set = ShardSet(dataset="d", split="train", country="US", zone="global", cameras=tuple(TINY_CLIP.cameras), fps=TINY_CLIP.fps)
    with pytest.raises(DataError) as exc:
        write_shards(f"file://{tmp_path}/d/train/US", [sample], shard_set, clips_per_shard=1)
    one_line(exc, "sample synth_us_s0_train_000000-000000: ", fragment)


def test_verify_of_nan_poses_fails_on_the_command_line(damaged, capsys):
    code, out, _ = run_main(["data", "verify", str(damaged["ego NaN"]), "--fast"], capsys)
    assert code == 1 and "1 problem(s)" in out and "ego.npy x at frame 10 is nan" in out


def test_a_npy_header_declaring_10_12_rows_allocates_nothing():
    with pytest.raises(DataError) as exc:
        decode_npy(npy_declaring((10**12, 6), b"\x00" * 48), "x/ego.npy")
    one_line(exc, "x/ego.npy: .npy header declares float64[1000000000000, 6] (48000000000000 bytes), the file holds 48")


# --- item 5: the manifest and the index --------------------------------------------------------------

BAD_MANIFESTS = {
    "fps 0": (dict(fps=0), "fps 0 must be a number in (0, 1000]"),
    "fps NaN": (dict(fps=float("nan")), "fps nan must be a number"),
    "frames string": (dict(frames="50"), "frames '50' must be an integer"),
    "shard samples string": ("samples", "shards[0]: samples '1' must be a positive integer"),
    "shard bytes negative": ("bytes", "shards[0]: bytes -1 must be a positive integer"),
    "numeric zone": (dict(zone=5), "zone 5 must be a zone name"),
    "unknown field": (dict(owner="x"), "fields do not match the manifest format: unknown ['owner']"),
    "shard listed twice": ("twice", "shards[1] name 'shard-000000.tar' is listed twice"),
    "zone key twice": ("zone twice", "not valid JSON (ValueError: key 'zone' appears twice in one object)"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_bad_manifest_is_one_line(tiny_fleet, tmp_path, capsys, case):
    change, fragment = BAD_MANIFESTS[case]
    d = copy_dir(tiny_fleet["US"]["train"], tmp_path / "tiny/train/US")
    if isinstance(change, dict):
        edit_manifest(d, **change)
    else:
        raw = json.loads((d / MANIFEST_NAME).read_text())
        if change == "zone twice":  # a reader keeping the first copy would see another zone than one keeping the last
            (d / MANIFEST_NAME).write_text(json.dumps(raw)[:-1] + ', "zone": "cn"}')
            raw = None
        elif change == "twice":
            raw["shards"][1] = raw["shards"][0]
        else:
            raw["shards"][0][change] = {"samples": "1", "bytes": -1}[change]
        if raw is not None:
            (d / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(DataError) as exc:
        stream([d])
    one_line(exc, f"{d}/manifest.json", fragment)
    code, _, err = run_main(["data", "inspect", str(d)], capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    problems = verify_problems(d)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_a_bad_index_is_one_line():
    good = {"schema": "fsdtrain.shard-index/1", "shard": "shard-000000.tar", "bytes": 10240, "sha256": "0" * 64,
            "samples": [{"key": "k-000000", "offset": 0, "size": 1024, "members": {"meta.json": {"offset": 512, "size": 3, "sha256": "1" * 64}}}]}  # fmt: skip
    parse_index(json.dumps(good).encode(), "i.json")
    for edit, fragment in [
        (lambda g: g.update(bytes="10240"), "i.json: bytes '10240' must be a non-negative integer"),
        (lambda g: g["samples"][0].update(offset=1.5), "i.json: samples[0] offset/size (1.5, 1024) must be non-negative integers"),
        (lambda g: g["samples"][0]["members"].update({"x.pkl": {"offset": 512, "size": 1, "sha256": "1" * 64}}), "member 'x.pkl' is not part of schema"),
        (lambda g: g["samples"].append(g["samples"][0]), "i.json: samples[1] key 'k-000000' is listed twice"),
        (lambda g: g["samples"][0].update(key="../k"), "i.json: samples[0]: bad sample key '../k'"),
    ]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        with pytest.raises(DataError) as exc:
            parse_index(json.dumps(bad).encode(), "i.json")
        one_line(exc, fragment)


# --- item 5: two resolutions, and the image size flag --------------------------------------------------


@pytest.fixture(scope="module")
def small_us(tmp_path_factory) -> Path:
    """The US train split of the tiny fleet rendered at 32x32 instead of 64x48."""
    out = tmp_path_factory.mktemp("small") / "tiny"
    synth_fleet(str(out), ["US"], 2, clips_per_shard=1, split="train", seed=0, clip=ClipSpec(**{**TINY_SIZE, "width": 32, "height": 32}))
    return out / "train" / "US"


def test_two_resolutions_need_image_size_in_the_loader(tiny_fleet, small_us, tmp_path):
    big = Path(tiny_fleet["DE"]["train"].removeprefix("file://"))
    with pytest.raises(DataError) as exc:
        read_all(stream([big, small_us]))
    one_line(exc, f"{small_us}/shard-000000.tar:synth_us_s0_train_000000-000000: calib.json CAM_FRONT.size is 32x32", "has 64x48", "set data.image_size")
    assert len(read_all(stream([big, small_us], image_size=(24, 32)))) == 4 * TINY_WINDOW.count(50, 10.0)


def test_two_resolutions_in_one_shard_directory_are_refused_by_verify_and_the_writer(tiny_fleet, small_us, tmp_path):
    d = copy_dir(tiny_fleet["US"]["train"], tmp_path / "tiny/train/US")
    for name in ("shard-000001.tar", "shard-000001.index.json"):  # the second clip at 32x32
        (d / name).write_bytes((small_us / name).read_bytes())
    raw = json.loads((d / MANIFEST_NAME).read_text())
    raw["shards"][1] = json.loads((small_us / MANIFEST_NAME).read_text())["shards"][1]
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    problems = verify_problems(d)
    assert len(problems) == 1 and "shard-000001.tar:synth_us_s0_train_000001-000000: calib.json CAM_FRONT.size is 32x32" in problems[0], problems
    big = make_clip("US", seed=0, index=0, clip=TINY_CLIP)
    small = make_clip("US", seed=0, index=1, clip=ClipSpec(**{**TINY_SIZE, "width": 32, "height": 32}))
    shard_set = ShardSet(dataset="d", split="train", country="US", zone="global", cameras=tuple(TINY_CLIP.cameras), fps=TINY_CLIP.fps)
    with pytest.raises(DataError) as exc:
        write_shards(f"file://{tmp_path}/w/train/US", [big, small], shard_set, clips_per_shard=1)
    one_line(exc, "sample synth_us_s0_train_000001-000000: calib.json CAM_FRONT.size is 32x32, sample synth_us_s0_train_000000-000000 has 64x48", "one resolution per camera")


@pytest.mark.parametrize("size", [[0, 0], [48], [48, -64], [48.5, 64]])
def test_a_bad_image_size_is_a_config_error(size):
    with pytest.raises(ConfigError) as exc:
        FleetDataModule(train=["file:///nowhere"], image_size=size)
    one_line(exc, "data.image_size must be [H, W]")


def test_a_zero_image_size_on_the_command_line_is_a_config_error_not_the_videos(tiny_fleet, tmp_path):
    data = ["--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", f"[{tiny_fleet['US']['val']}]"]
    args = ["fit", "--config", "configs/demo.yaml", "--workdir", str(tmp_path / "w"), *data, "--data.image_size", "[0,0]", "--trainer.devices", "1"]
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fsdtrain: error: data.image_size must be [H, W], each a whole number of pixels") and ".mp4" not in last, proc.stderr


# --- item 8: duplicates and indexes --------------------------------------------------------------------


def test_a_member_twice_in_a_sample_is_reported(tiny_fleet, tmp_path):
    d = copy_dir(tiny_fleet["US"]["train"], tmp_path / "tiny/train/US")
    bad = encode_npy(np.full((50, 6), np.nan))

    def twice(members):  # the ego.npy verify would see first, then a second one a reader might keep
        i = next(i for i, (n, _) in enumerate(members) if n.endswith(".ego.npy"))
        return members[: i + 1] + [(members[i][0], bad)] + members[i + 1 :]

    rewrite_shard(d, twice)
    problems = verify_problems(d)
    assert any("synth_us_s0_train_000000-000000: member synth_us_s0_train_000000-000000.ego.npy appears twice" in p for p in problems), problems


def test_the_same_clip_in_two_shards_or_two_datasets_is_reported(tiny_fleet, tmp_path):
    d = copy_dir(tiny_fleet["US"]["train"], tmp_path / "a/train/US")
    index = (d / "shard-000000.index.json").read_bytes().replace(b'"shard":"shard-000000.tar"', b'"shard":"shard-000001.tar"')
    (d / "shard-000001.tar").write_bytes((d / "shard-000000.tar").read_bytes())
    (d / "shard-000001.index.json").write_bytes(index)
    raw = json.loads((d / MANIFEST_NAME).read_text())
    raw["shards"][1] = {**raw["shards"][0], "name": "shard-000001.tar", "index": "shard-000001.index.json",
                        "index_sha256": hashlib.sha256(index).hexdigest()}  # fmt: skip
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    problems = verify_problems(d)
    assert problems == [
        f"file://{d}/shard-000001.tar:synth_us_s0_train_000000-000000: sample key appears more than once "
        f"(also in file://{d}/shard-000000.tar): the clip would be trained on twice"
    ]
    other = copy_dir(tiny_fleet["US"]["train"], tmp_path / "b/train/US")  # another dataset, the same clips
    problems = verify_problems(tmp_path / "b")
    assert problems == []
    problems = verify_problems(tmp_path)
    assert len(problems) == 2 and all("sample key appears more than once" in p for p in problems), problems
    assert problems[1].startswith(f"file://{other}/shard-000000.tar:synth_us_s0_train_000000-000000: sample key appears more than once"), problems


def test_a_manifest_without_index_is_reported(tiny_fleet, tmp_path):
    d = copy_dir(tiny_fleet["US"]["train"], tmp_path / "tiny/train/US")
    raw = json.loads((d / MANIFEST_NAME).read_text())
    for s in raw["shards"]:
        del s["index"], s["index_sha256"]
        (d / s["name"].replace(".tar", ".index.json")).unlink()
    (d / MANIFEST_NAME).write_text(json.dumps(raw))
    problems = verify_problems(d)
    assert len(problems) == 2 and all("the manifest lists no index for this shard" in p for p in problems), problems


# --- items 5 and 6: raw drives: special files, huge timestamps ------------------------------------------


@pytest.fixture(scope="module")
def raw_drive(tmp_path_factory) -> Path:
    (drive,) = synth_raw_drives(tmp_path_factory.mktemp("raw") / "raw", ["US"], 1, seed=3, width=64, height=48, seconds=3.0)
    return drive


def _load_within(drive: Path, seconds: float = 60.0) -> BaseException | None:
    """``load_drive(drive)`` in a thread; fails the test if it has not returned after ``seconds`` (a hang)."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            load_drive(drive)
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"load_drive({drive}) hangs"
    return result[0]


@pytest.mark.parametrize("name", ["poses.csv", "CAM_FRONT.timestamps.csv", "CAM_FRONT.mp4", "calib.json", "drive.json"])
def test_a_fifo_in_place_of_a_raw_file_is_refused_without_hanging(raw_drive, tmp_path, name):
    drive = clone_drive(raw_drive, tmp_path)
    (drive / name).unlink()
    os.mkfifo(drive / name)
    exc = _load_within(drive)
    assert isinstance(exc, DataError), exc
    assert str(exc) == f"drive bad_drive: {name} is a FIFO, not a regular file; raw inputs must be plain files"


def test_data_write_with_a_fifo_poses_file_exits_with_one_line(raw_drive, tmp_path, capsys):
    drive = clone_drive(raw_drive, tmp_path / "raw")
    (drive / "poses.csv").unlink()
    os.mkfifo(drive / "poses.csv")
    done: list[tuple[int, str, str]] = []
    thread = threading.Thread(target=lambda: done.append(run_main(["data", "write", "--raw", str(tmp_path / "raw"), "--out", f"file://{tmp_path}/out", "--clip-seconds", "1"], capsys)), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "data write hangs on a FIFO"
    code, _, err = done[0]
    assert code == 2 and err.strip().splitlines()[-1] == "fsdtrain: error: drive bad_drive: poses.csv is a FIFO, not a regular file; raw inputs must be plain files", err


@pytest.mark.parametrize("file", ["poses.csv", "CAM_FRONT.timestamps.csv"])
def test_a_20_digit_timestamp_is_one_line(raw_drive, tmp_path, file):
    drive = clone_drive(raw_drive, tmp_path)
    lines = (drive / file).read_text().splitlines()
    cells = lines[2].split(",")
    lines[2] = ",".join(["99999999999999999999", *cells[1:]])
    (drive / file).write_text("\n".join(lines) + "\n")
    exc = _load_within(drive)
    assert isinstance(exc, DataError), exc
    assert str(exc) == f"drive bad_drive: {file} line 3: timestamp_us '99999999999999999999' is not an integer number of microseconds in [0, 2^63)"


def test_a_pose_jump_is_the_drives_problem_found_before_any_shard(raw_drive, tmp_path):
    """A GPS glitch (one pose 5 km off) passes the per-cell checks but makes an absurd speed: the clip
    schema refuses it in pass 1, naming the drive, so ``skip_bad`` skips that drive and without it
    nothing is written."""
    root = tmp_path / "raw"
    clone_drive(raw_drive, root, "a_good")
    bad = clone_drive(raw_drive, root, "b_jump")
    lines = (bad / "poses.csv").read_text().splitlines()
    cells = lines[5].split(",")
    cells[1] = str(float(cells[1]) + 5000.0)
    lines[5] = ",".join(cells)
    (bad / "poses.csv").write_text("\n".join(lines) + "\n")
    written: list[str] = []
    with pytest.raises(DataError, match=r"^drive b_jump: clip b_jump-000000: ego.npy speed at frame \d+ is [\d.]+, must be finite and in \[-200, 200\]$"):
        write_drives(str(root), f"file://{tmp_path}/out", clip_seconds=1.0, progress=written.append)
    assert written == [] and not (tmp_path / "out").exists()
    summary = write_drives(str(root), f"file://{tmp_path}/out", clip_seconds=1.0, skip_bad=True)
    assert summary.written == ["a_good"] and [s.name for s in summary.skipped] == ["b_jump"]


def test_a_20_digit_jpeg_timestamp_is_one_line(tmp_path):
    (drive,) = synth_raw_drives(tmp_path / "raw", ["US"], 1, seed=3, width=64, height=48, seconds=3.0)
    folder = next(p for p in drive.iterdir() if p.is_dir())
    (folder / "9999999999999999999.jpg").write_bytes(b"x")  # 19 digits, past int64
    exc = _load_within(drive)
    assert isinstance(exc, DataError), exc
    assert str(exc) == f"drive {drive.name}: {folder.name}/9999999999999999999.jpg: timestamp_us 9999999999999999999 is not in [0, 2^63)"
