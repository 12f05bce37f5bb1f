"""docs/data-format.md's worked conversion of a pose log and a camera video runs as written, and what it
lays out ingests, verifies and comes back as the poses it was given."""

from __future__ import annotations

import math
import re
import tarfile
from pathlib import Path

import numpy as np

from fsdtrain.format import verify as verify_mod
from fsdtrain.format.manifest import load_manifest
from fsdtrain.format.schema import decode_npy
from fsdtrain.format.video import encode_video
from fsdtrain.ingest.drives import write_drives
from fsdtrain.store.gate import ZoneGate
from fsdtrain.synth.rig import calib_json, make_rig

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-format.md"


def doc_example() -> dict:
    """The namespace of the doc's example block, executed."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Converting your own logs") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 (the repository's own documentation)
    return namespace


def test_the_worked_conversion_ingests_and_round_trips(tmp_path):
    to_raw_drive = doc_example()["to_raw_drive"]
    # a car leaving eastwards at 8 m/s and turning left at 2 degrees/s, its heading logged as a compass
    t = np.arange(0, 12.0, 0.02)  # 50 Hz poses
    yaw = np.radians(2.0) * t
    east = np.cumsum(8.0 * np.cos(yaw)) * 0.02
    north = np.cumsum(8.0 * np.sin(yaw)) * 0.02
    compass = 90.0 - np.degrees(yaw)
    t0 = 1_714_557_600_000_000
    poses = [(t0 + round(s * 1e6), e, n, c) for s, e, n, c in zip(t, east, north, compass)]
    frames = (np.arange(120)[:, None, None, None] * 2 + np.zeros((1, 48, 64, 3))).astype(np.uint8)
    mp4 = tmp_path / "front.mp4"
    mp4.write_bytes(encode_video(frames, 10.0))
    times = [t0 + round(k * 1e5) for k in range(120)]
    front = next(c for c in make_rig("surround6") if c.name == "CAM_FRONT")
    to_raw_drive(tmp_path / "raw", "my_drive_1", "DE", "global", poses, {"CAM_FRONT": (mp4, times)}, calib_json([front], 64, 48))

    out = f"file://{tmp_path}/ds"
    summary = write_drives(str(tmp_path / "raw"), out, clip_seconds=5.0, fps=10.0)
    assert summary.clips == 2
    assert verify_mod.verify(out) == []
    m = load_manifest(f"{out}/train/DE", ZoneGate("global"))
    with tarfile.open(Path(m.shard_url(m.shards[0]).removeprefix("file://"))) as tar:
        ego = decode_npy(tar.extractfile(next(x for x in tar.getmembers() if x.name.endswith("ego.npy"))).read(), "ego")
    # the first clip in its first frame's ego frame: 5 s at 8 m/s turning left at 2 degrees/s
    assert ego.shape == (50, 6)
    np.testing.assert_allclose(ego[:, 4], 8.0, atol=0.05)  # speed
    np.testing.assert_allclose(ego[:, 5], math.radians(2.0), atol=1e-3)  # yaw rate, CCW positive
    np.testing.assert_allclose(ego[-1, 3], math.radians(2.0) * 4.9, atol=math.radians(0.1))  # yaw after 4.9 s
    assert ego[-1, 1] > 38 and ego[-1, 2] > 0  # forward, and to the left
