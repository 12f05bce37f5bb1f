import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from fsdtrain.data.batch_ring import RingLoader
from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.order import ClipRef, worker_caps
from fsdtrain.data.stream import FleetStream, Source, StreamSpec
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.format.schema import DEFAULT_CAMERAS
from fsdtrain.format.video import decode_video
from fsdtrain.format.windows import window_frames
from fsdtrain.residency import ResidencyError
from fsdtrain.store.gate import AuditLog, ZoneGate
from helpers.fleet import TINY_WINDOW, rewrite_shard

GLOBAL_GATE = ZoneGate("global")


def make_stream(urls, *, site="global", batch_size=4, order="clips", pad=False, audit=None, seed=0):
    return FleetStream(
        Source.all(load_manifests(urls, ZoneGate(site))), TINY_WINDOW, cameras=list(DEFAULT_CAMERAS), batch_size=batch_size,
        gate=ZoneGate(site, audit=audit), reading=StreamSpec(order=order, balance="pad" if pad else "none", seed=seed),
    )  # fmt: skip


def window_ids(stream, rank=0, world=1, workers=0):
    stream.set_distributed(rank, world, workers)
    ids = []
    for batch in DataLoader(stream, batch_size=stream.batch_size, num_workers=workers):
        ids += [f"{c}@{int(f)}" for c, f in zip(batch["clip_id"], batch["frame"])]
    return ids


def test_reads_every_window_once(tiny_fleet):
    urls = [tiny_fleet[c]["train"] for c in ("US", "DE")]
    stream = make_stream(urls)
    ids = window_ids(stream)
    assert len(ids) == len(set(ids)) == len(stream) == 2 * 2 * TINY_WINDOW.count(50, 10.0)
    batch = next(iter(DataLoader(stream, batch_size=4)))
    assert tuple(batch["images"].shape) == (4, 6, 2, 3, 48, 64)
    assert tuple(batch["future"].shape) == (4, 6, 3) and tuple(batch["ego_hist"].shape) == (4, 2, 6)


def test_ranks_and_workers_split_disjointly(tiny_fleet):
    urls = [tiny_fleet[c]["train"] for c in ("US", "DE")]
    everything = set(window_ids(make_stream(urls)))
    parts = [window_ids(make_stream(urls), rank=r, world=2, workers=2) for r in range(2)]
    assert set(parts[0]).isdisjoint(parts[1])
    assert set(parts[0]) | set(parts[1]) == everything


def test_training_ranks_get_equal_batches_on_uneven_data(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["val"]]  # 3 clips over 2 ranks
    counts = [len(window_ids(make_stream(urls, order="streams"), rank=r, world=2)) for r in range(2)]
    assert counts[0] == counts[1] > 0 and counts[0] % 4 == 0


def test_training_order_is_seeded_and_changes_per_epoch(tiny_fleet):
    urls = [tiny_fleet[c]["train"] for c in ("US", "DE")]
    a, b = make_stream(urls, order="streams"), make_stream(urls, order="streams")
    first = window_ids(a)
    assert first == window_ids(b)
    assert sorted(first) == sorted(window_ids(make_stream(urls)))  # one stream: every window of the 4 clips
    b.epoch = 1
    assert window_ids(b) != first
    assert window_ids(make_stream(urls, order="streams", seed=1)) != first


def test_residency_refuses_foreign_zone_and_audits(tiny_fleet, tmp_path):
    with pytest.raises(ResidencyError, match="zone 'cn'"):
        make_stream([tiny_fleet["CN"]["train"]], site="global")
    log = tmp_path / "audit.jsonl"
    stream = make_stream([tiny_fleet["CN"]["train"], tiny_fleet["US"]["train"]], site="cn", audit=AuditLog(log, job="t"))
    window_ids(stream)
    records = [r for r in AuditLog.read(log) if "sample" in r]
    assert sorted(r["zone"] for r in records) == ["cn", "cn", "global", "global"]  # one range read per clip
    assert all(r["url"].endswith(".tar") and len(r["sha256"]) == 64 and len(r["range"]) == 2 for r in records)


def test_training_reads_each_clip_by_range_once_and_audits_each_request(tiny_fleet, tmp_path):
    log = tmp_path / "audit.jsonl"
    urls = [tiny_fleet["CN"]["train"], tiny_fleet["US"]["train"]]
    for rank in range(2):
        stream = make_stream(urls, site="cn", batch_size=2, order="streams", audit=AuditLog(log, job="t", rank=rank))
        assert len(window_ids(stream, rank=rank, world=2, workers=2)) == 16
    records = [r for r in AuditLog.read(log) if "sample" in r]  # the clips (the others: each worker's shard indexes)
    assert {r["url"].rsplit("/", 1)[1] for r in AuditLog.read(log) if "sample" not in r} == {"shard-000000.index.json", "shard-000001.index.json"}
    clips = Counter((r["url"], r["sample"]) for r in records)
    assert len(clips) == 4 and set(clips.values()) == {1}  # each clip once: metadata and the 6 cameras read lie together
    assert len({(r["rank"], r["pid"]) for r in records}) == 4  # one clip per loader worker
    # the clip's members, not its shard: the seventh camera (CAM_FRONT_NARROW) is not requested
    assert all(r["range"][1] - r["range"][0] < 0.95 * Path(r["url"].removeprefix("file://")).stat().st_size for r in records)
    with pytest.raises(ResidencyError, match="zone 'cn'"):
        make_stream([tiny_fleet["CN"]["train"]], site="global", order="streams")


def copy_split(url: str, dest: Path) -> Path:
    src = Path(url.removeprefix("file://"))
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def edit_meta(**fields):
    """A ``rewrite_shard`` edit that sets ``fields`` in every clip's meta.json."""

    def edit(members):
        return [(n, json.dumps({**json.loads(v), **fields}).encode() if n.endswith("meta.json") else v) for n, v in members]

    return edit


def read_all(directory: Path) -> None:
    window_ids(make_stream([str(directory)]))


def test_corrupt_shard_bytes_fail_checksum(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")
    shard = d / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match the index"):  # each member read is checked against its sha256
        read_all(d)


def test_truncated_video_names_clip_and_camera(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")
    rewrite_shard(d, lambda ms: [(n, v[: len(v) // 3] if n.endswith("CAM_FRONT.mp4") else v) for n, v in ms])
    with pytest.raises(DataError, match=r"CAM_FRONT\.mp4.*(frames|decode)"):
        read_all(d)


def test_missing_camera_is_named(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")
    rewrite_shard(d, lambda ms: [(n, v) for n, v in ms if not n.endswith("CAM_BACK.mp4")])
    with pytest.raises(DataError, match="CAM_BACK.mp4 missing"):
        read_all(d)


def test_wrong_schema_and_bad_member_names(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "a")

    rewrite_shard(d, edit_meta(schema="fsdtrain.clip/0"))
    with pytest.raises(DataError, match="schema"):
        read_all(d)
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "b")
    rewrite_shard(d, lambda ms: ms + [(ms[0][0].split(".")[0] + ".payload.pickle", b"x")])
    with pytest.raises(DataError, match="not part of schema"):
        read_all(d)


def test_resize_scales_images_and_intrinsics(tiny_fleet):
    stream = FleetStream(
        Source.all(load_manifests([tiny_fleet["US"]["val"]], GLOBAL_GATE)), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
        batch_size=2, image_size=(24, 32),
    )  # fmt: skip
    full = next(iter(DataLoader(make_stream([tiny_fleet["US"]["val"]]), batch_size=2)))
    small = next(iter(DataLoader(stream, batch_size=2)))
    assert tuple(small["images"].shape[-2:]) == (24, 32)
    K, K_full = small["intrinsics"][0, 0], full["intrinsics"][0, 0]
    assert K[0, 0] == pytest.approx(K_full[0, 0] / 2) and K[1, 1] == pytest.approx(K_full[1, 1] / 2)
    assert K[0, 2] == pytest.approx((32 - 1) / 2) and K[1, 2] == pytest.approx((24 - 1) / 2)


def skip_stream(directory, *, fraction, order="clips", pad=False, batch_size=4):
    return FleetStream(
        Source.all(load_manifests([str(directory)], GLOBAL_GATE)), TINY_WINDOW, gate=GLOBAL_GATE, cameras=list(DEFAULT_CAMERAS),
        batch_size=batch_size, reading=StreamSpec(balance="pad" if pad else "none", on_error="skip", max_skip_fraction=fraction, order=order),
    )  # fmt: skip


def test_skip_policy_skips_bad_clips(tiny_fleet, tmp_path, caplog):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")  # 2 shards of 1 clip
    rewrite_shard(d, lambda ms: [(n, v[: len(v) // 3] if n.endswith("CAM_FRONT.mp4") else v) for n, v in ms])
    ids = window_ids(skip_stream(d, fraction=0.5))
    assert len(ids) == TINY_WINDOW.count(50, 10.0) and len({i.split("@")[0] for i in ids}) == 1
    assert "skipped 1 clip(s)" in caplog.text and "CAM_FRONT.mp4" in caplog.text
    with pytest.raises(DataError, match=r"skipped 1 of 2 clips, more than data.max_skip_fraction=0.4"):
        window_ids(skip_stream(d, fraction=0.4))


def test_skip_policy_skips_the_clips_of_a_truncated_shard(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")
    shard = d / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    ids = window_ids(skip_stream(d, fraction=0.5))
    assert len(ids) == TINY_WINDOW.count(50, 10.0)


def test_training_stream_fails_on_a_damaged_clip_naming_it(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")
    rewrite_shard(d, lambda ms: [(n, v[: len(v) // 3] if n.endswith("CAM_FRONT.mp4") else v) for n, v in ms])
    with pytest.raises(DataError, match=r"shard-000000.tar:synth_us_s0_train_000000-000000/CAM_FRONT\.mp4.*(frames|decode)"):
        window_ids(make_stream([str(d)], order="streams"))
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US2")
    data = bytearray((d / "shard-000000.tar").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a member the loader reads: its sha256 in the index no longer matches
    (d / "shard-000000.tar").write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match the index"):
        window_ids(make_stream([str(d)], order="streams"))


def test_skip_policy_under_the_training_order_keeps_every_position(tiny_fleet, tmp_path, caplog):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")  # 2 shards of 1 clip
    good = window_ids(skip_stream(d, fraction=0.5, order="streams"))
    rewrite_shard(d, lambda ms: [(n, v[: len(v) // 3] if n.endswith("CAM_FRONT.mp4") else v) for n, v in ms])
    per_worker = [window_ids(skip_stream(d, fraction=0.5, order="streams"), workers=w) for w in (0, 1)]  # one stream: 2 workers would own a clip each
    for ids in per_worker:
        assert len(ids) == len(good) == 2 * TINY_WINDOW.count(50, 10.0)  # every position still yields a window
        assert set(ids) == {i for i in good if i.startswith("synth_us_s0_train_000001")}  # the good clip only
    assert "skipped 1 clip(s)" in caplog.text and "CAM_FRONT.mp4" in caplog.text
    with pytest.raises(DataError, match=r"skipped 1 of 2 clips, more than data.max_skip_fraction=0.4"):
        window_ids(skip_stream(d, fraction=0.4, order="streams"))
    d2 = copy_split(tiny_fleet["US"]["train"], tmp_path / "US2")
    (d2 / "shard-000001.tar").write_bytes((d2 / "shard-000001.tar").read_bytes()[:5000])
    ids = window_ids(skip_stream(d2, fraction=0.5, order="streams"))
    assert len(ids) == 2 * TINY_WINDOW.count(50, 10.0) and {i.split("@")[0] for i in ids} == {"synth_us_s0_train_000000-000000"}


def test_worker_caps_pad_uneven_shards_to_the_longest_rank():
    rng = random.Random(1)
    for _ in range(200):
        shards = [ClipRef(0, i, rng.randint(1, 40)) for i in range(rng.randint(1, 9))]
        world, workers, batch = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 8)
        world = min(world, len(shards))  # every rank has a clip (the datamodule checks it)
        caps = worker_caps(shards, world_size=world, workers=workers, batch_size=batch, pad=True)
        per_rank = Counter()
        for (rank, _), (assigned, cap) in caps.items():
            windows = sum(s.windows for s in assigned)
            assert cap % batch == 0 and cap >= windows  # every window, full batches
            assert windows or not cap  # a worker without windows has nothing to pad with
            per_rank[rank] += cap
        longest = max(sum(-(-sum(s.windows for s in v) // batch) for (r, _), (v, _) in caps.items() if r == rank) for rank in range(world))
        assert {per_rank[r] for r in range(world)} == {longest * batch}
    empty = [ClipRef(0, 0, 8), ClipRef(0, 1, 0)]
    with pytest.raises(ConfigError, match="rank 1 of 2 gets no window"):
        worker_caps(empty, world_size=2, workers=1, batch_size=4, pad=True)


def test_padded_validation_reads_every_window_once_in_equal_full_batches(tiny_fleet):
    urls = [tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"], tiny_fleet["DE"]["val"]]  # 5 shards: 3 + 2 over 2 ranks
    everything = window_ids(make_stream(urls))  # 1 rank, no workers, not equalized
    assert len(everything) == len(set(everything)) == 5 * TINY_WINDOW.count(50, 10.0)
    counts, real = [], []
    for rank in range(2):  # 2 workers each: shards 2 + 1 on rank 0, 1 + 1 on rank 1
        stream = make_stream(urls, batch_size=3, pad=True)
        stream.set_distributed(rank, 2, 2)
        batches = list(DataLoader(stream, batch_size=3, num_workers=2))
        assert all(len(b["clip_id"]) == 3 for b in batches) and len(batches) * 3 == len(stream)
        counts.append(len(batches))
        real += [f"{c}@{int(f)}" for b in batches for c, f, v in zip(b["clip_id"], b["frame"], b["valid"]) if v]
    assert counts[0] == counts[1] == 9  # ceil(16 / 3) + ceil(8 / 3) on rank 0; rank 1 pads its 3 + 3 to 9
    assert sorted(real) == sorted(everything)  # every window exactly once, the padding marked invalid
    stream = make_stream(urls, batch_size=3, pad=True)  # 1 rank, in-process: 40 windows + 2 repeats
    stream.set_distributed(0, 1, 0)
    batches = list(DataLoader(stream, batch_size=3))
    assert sorted(f"{c}@{int(f)}" for b in batches for c, f, v in zip(b["clip_id"], b["frame"], b["valid"]) if v) == sorted(everything)
    assert len(batches) == 14 and sum(int(b["valid"].sum()) for b in batches) == 40


def test_padded_stream_under_skip_policy_marks_every_stand_in_invalid(tiny_fleet, tmp_path):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")  # 2 shards of 1 clip, the first one bad
    rewrite_shard(d, lambda ms: [(n, v[: len(v) // 3] if n.endswith("CAM_FRONT.mp4") else v) for n, v in ms])
    stream = skip_stream(d, fraction=0.5, pad=True, batch_size=3)
    batches = list(DataLoader(stream, batch_size=3))
    assert len(batches) * 3 == len(stream) == 18  # planned from the manifests: ceil(16 / 3) batches
    real = [f"{c}@{int(f)}" for b in batches for c, f, v in zip(b["clip_id"], b["frame"], b["valid"]) if v]
    assert len(real) == len(set(real)) == TINY_WINDOW.count(50, 10.0)
    assert {i.split("@")[0] for i in real} == {"synth_us_s0_train_000001-000000"}


def test_stream_spec_checks_its_settings_together(tiny_fleet):
    """The reading settings are one spec object, checked on construction; sources carry their weights."""
    for kwargs, match in [
        ({"balance": "pad", "order": "streams"}, "balance='pad' .* needs order='clips'"),
        ({"balance": "equal"}, "balance must be one of"),
        ({"order": "global"}, "order must be one of"),
        ({"on_error": "ignore"}, "data.on_error must be one of"),
        ({"streams": 0}, "data.streams must be at least 1"),
        ({"max_skip_fraction": 2.0}, r"in \[0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=match):
            StreamSpec(**kwargs)
    manifests = load_manifests([tiny_fleet["US"]["train"], tiny_fleet["DE"]["train"]], GLOBAL_GATE)
    with pytest.raises(ConfigError, match="one weight per data.train entry"):
        Source.all(manifests, [1.0])
    with pytest.raises(ConfigError, match="data.weights .* applies to the training order"):
        FleetStream(Source.all(manifests, [1.0, 2.0]), TINY_WINDOW, cameras=list(DEFAULT_CAMERAS), batch_size=2, gate=GLOBAL_GATE)


def test_a_training_worker_holds_one_group_of_clips_per_stream(tiny_fleet, monkeypatch):
    """The memory bound of docs/data-loading.md: decoded clips held <= streams owned x max(4, turn)."""
    import weakref

    from fsdtrain.data import stream as stream_mod

    live, peak = [0], [0]

    class Counted(stream_mod._Clip):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            weakref.finalize(self, lambda: live.__setitem__(0, live[0] - 1))

    monkeypatch.setattr(stream_mod, "_Clip", Counted)
    urls = [tiny_fleet[c]["train"] for c in ("US", "DE")] + [tiny_fleet["US"]["val"], tiny_fleet["DE"]["val"]]  # 6 clips
    stream = make_stream(urls, batch_size=1, order="streams")
    ids = window_ids(stream)
    assert (stream.shape.streams, stream.shape.turn) == (1, 1) and len(ids) == len(set(ids)) == 6 * 8
    assert peak[0] == 4  # one group of 4 clips at a time, not all 6


def test_a_clip_that_disagrees_with_its_manifest_is_a_data_error_and_skippable(tiny_fleet, tmp_path, caplog):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")

    rewrite_shard(d, edit_meta(frames=40))
    with pytest.raises(DataError, match="meta.json frames is 40, the manifest says 50"):
        window_ids(make_stream([str(d)], order="streams"))
    ids = window_ids(skip_stream(d, fraction=0.5, order="streams"))
    assert len(ids) == 2 * TINY_WINDOW.count(50, 10.0) and {i.split("@")[0] for i in ids} == {"synth_us_s0_train_000001-000000"}
    assert "meta.json frames is 40" in caplog.text


# --- windows in seconds: datasets at 10 and 8 fps in one loader ----------------------------------------


@pytest.fixture(scope="module")
def two_rates(tmp_path_factory):
    """A 10 fps and an 8 fps dataset of one 5 s clip each (US), as `fsdtrain data synth` writes them."""
    from fsdtrain.synth.fleet import ClipSpec, synth_fleet

    root = tmp_path_factory.mktemp("rates")
    urls = {}
    for fps in (10, 8):
        clip = ClipSpec(width=64, height=48, seconds=5.0, fps=float(fps), rig="surround6_narrow")
        synth_fleet(f"file://{root}/fleet{fps}", ["US"], 1, clips_per_shard=1, split="train", seed=fps, clip=clip)
        urls[fps] = f"file://{root}/fleet{fps}/train/US"
    return urls


def rate_stream(urls, window, order="clips"):
    manifests = load_manifests(list(urls), GLOBAL_GATE)
    return FleetStream(
        Source.all(manifests), window, cameras=["CAM_FRONT"], batch_size=2, gate=GLOBAL_GATE, reading=StreamSpec(order=order)
    )


def test_datasets_at_8_and_10_fps_give_windows_of_the_same_times(two_rates):
    import numpy as np

    from fsdtrain.format.windows import WindowSpec

    window = WindowSpec(history=3, history_spacing_s=0.5, stride_s=0.5, horizon_s=2.0, future_hz=2.0)
    stream = rate_stream(two_rates.values(), window, order="streams")  # mixed in one training order
    stream.set_distributed(0, 1, 0)
    times: dict[float, set[float]] = {10.0: set(), 8.0: set()}
    for batch in DataLoader(stream, batch_size=2, num_workers=0):
        for i, clip in enumerate(batch["clip_id"]):
            fps = 8.0 if "_s8_" in clip else 10.0  # the clip key names its seed
            times[fps].add(round(int(batch["frame"][i]) / fps, 6))
            hist, future = batch["ego_hist"][i].numpy(), batch["future"][i].numpy()
            np.testing.assert_allclose(hist[:, 0], [-1.0, -0.5, 0.0], atol=1e-4)  # history frames 0.5 s apart
            # the future points 0.5 s apart: the synthetic ego drives smoothly, so each step covers ~speed x 0.5 s
            steps = np.linalg.norm(np.diff(np.vstack([[0.0, 0.0], future[:, :2]]), axis=0), axis=1)
            np.testing.assert_allclose(steps, hist[-1, 4] * 0.5, rtol=0.15, atol=0.2)
    assert times[10.0] == times[8.0] == {1.0, 1.5, 2.0, 2.5}  # the same current times at both rates (5 s clips, 2 s ahead)
    assert stream.spec.history_offsets(8.0).tolist() == [8, 4, 0] and stream.spec.history_offsets(10.0).tolist() == [10, 5, 0]


def test_frames_in_config_convert_at_one_rate_and_say_what_to_write_when_mixed(two_rates):
    assert rate_stream([two_rates[8]], TINY_WINDOW).spec.history_spacing_s == pytest.approx(5 / 8)  # frames at 8 fps
    with pytest.raises(ConfigError, match=r"count frames, .* \(fleet10/train/US 10 fps, fleet8/train/US 8 fps\): write window.history_spacing_s"):
        rate_stream(two_rates.values(), TINY_WINDOW)


def test_a_rate_that_cannot_place_the_history_is_refused_naming_the_dataset(two_rates):
    from fsdtrain.format.windows import WindowSpec

    window = WindowSpec(history_spacing_s=0.3, tolerance_s=0.01)  # 3 frames at 10 fps; 2.4 frames at 8 fps
    assert len(rate_stream([two_rates[10]], window)) > 0
    with pytest.raises(ConfigError, match=r"^data: fleet8/train/US at 8 fps cannot place history frames every 0.3 s: the nearest frames are 50 ms off"):
        rate_stream(two_rates.values(), window)


def _decoded_frames(urls) -> dict[str, np.ndarray]:
    """clip_id -> every frame of every camera, [frames, N_cam, 3, H, W], decoded one video at a time."""
    out = {}
    for url in urls:
        for path in sorted(Path(url.removeprefix("file://")).glob("shard-*.tar")):
            with tarfile.open(path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for key in sorted({name.split(".", 1)[0] for name in members}):
                meta = json.loads(members[f"{key}.meta.json"])
                videos = [decode_video(members[f"{key}.{c}.mp4"], frames=meta["frames"], where=key, channels_first=True) for c in DEFAULT_CAMERAS]
                out[meta["clip_id"]] = np.stack(videos, axis=1)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_every_window_has_its_own_clips_frames_while_clip_arrays_are_reused(tiny_fleet, workers):
    """A window's images view its clip's array until the collate copies them, and a worker reuses
    clip arrays nothing views any more: every window of every batch (four clips interleaved in
    each) must still hold the frames of its own clip, as a plain decode of each video gives them."""
    urls = [tiny_fleet[c][split] for c in ("US", "DE") for split in ("train", "val")]
    frames = _decoded_frames(urls)
    stream = make_stream(urls, batch_size=4, order="streams")
    stream.set_distributed(0, 1, workers)
    seen = 0
    for batch in RingLoader(stream, batch_size=4, num_workers=workers):
        for images, clip_id, current in zip(batch["images"], batch["clip_id"], batch["frame"].tolist()):
            want = frames[clip_id][window_frames(TINY_WINDOW, current, 10.0)].swapaxes(0, 1)  # [N_cam, T, 3, H, W]
            np.testing.assert_array_equal(images.numpy(), want, err_msg=f"{clip_id}@{current}")
            seen += 1
    assert seen == len(stream) and len({c for c in frames}) == 6


def edit_calib(size, cameras):
    """A ``rewrite_shard`` edit that sets ``size`` [W, H] of ``cameras`` in every clip's calib.json."""

    def edit(members):
        out = []
        for name, data in members:
            if name.endswith("calib.json"):
                calib = json.loads(data)
                for camera in cameras:
                    calib[camera]["size"] = size
                data = json.dumps(calib).encode()
            out.append((name, data))
        return out

    return edit


@pytest.mark.parametrize(
    ("cameras", "message"),
    [
        (["CAM_BACK"], r"calib.json sizes differ between cameras \(.*CAM_BACK 96x72.*\): set data.image_size"),
        (list(DEFAULT_CAMERAS), r"CAM_FRONT.mp4: frames are 64x48, calib.json CAM_FRONT.size says 96x72"),
    ],
    ids=["one-camera", "every-camera"],
)
def test_frame_sizes_that_disagree_with_calib_are_data_errors_naming_the_camera(tiny_fleet, tmp_path, cameras, message):
    d = copy_split(tiny_fleet["US"]["train"], tmp_path / "US")
    rewrite_shard(d, edit_calib([96, 72], cameras))
    with pytest.raises(DataError, match=message):
        window_ids(make_stream([str(d)], order="streams"))
