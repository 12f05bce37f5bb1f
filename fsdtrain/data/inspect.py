"""``fsdtrain data inspect`` and ``fsdtrain data verify``: what a dataset holds, and whether it is intact."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_expander

from fsdtrain.data import schema
from fsdtrain.data.decode import decode_video
from fsdtrain.data.manifest import MANIFEST_NAME, Manifest, load_manifest
from fsdtrain.errors import DataError
from fsdtrain.store import objects

__all__ = ["find_manifests", "inspect", "format_inspect", "verify"]


def find_manifests(url: str) -> list[Manifest]:
    """Manifests at ``url`` (a shard directory) or anywhere below it (a dataset root)."""
    if objects.exists(objects.join_url(url, MANIFEST_NAME)):
        return [load_manifest(url)]
    found = [k[: -len(MANIFEST_NAME) - 1] for k in objects.list_keys(url) if k.endswith("/" + MANIFEST_NAME)]
    if not found:
        raise DataError(f"no manifest.json at or below {url}: is it a dataset written by `fsdtrain data synth`/`data write`?")
    return [load_manifest(u) for u in found]


def inspect(url: str) -> list[dict]:
    """One row per manifest: dataset, split, country, zone, clips, hours, bytes, cameras, fps."""
    rows = []
    for m in find_manifests(url):
        rows.append({
            "url": m.url, "dataset": m.dataset, "split": m.split, "country": m.country, "zone": m.zone,
            "clips": m.samples, "hours": m.samples * m.frames / m.fps / 3600, "bytes": m.bytes, "shards": len(m.shards),
            "cameras": len(m.cameras), "fps": m.fps,
        })  # fmt: skip
    return rows


def format_inspect(rows: list[dict]) -> str:
    head = f"{'dataset':<12} {'split':<8} {'country':<7} {'zone':<8} {'clips':>6} {'hours':>8} {'MB':>9} {'shards':>6} {'cams':>4} {'fps':>5}"
    lines = [head, "-" * len(head)]
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for r in rows:
        lines.append(
            f"{r['dataset']:<12} {r['split']:<8} {r['country']:<7} {r['zone']:<8} {r['clips']:>6} {r['hours']:>8.3f} "
            f"{r['bytes'] / 1e6:>9.1f} {r['shards']:>6} {r['cameras']:>4} {r['fps']:>5g}"
        )
        t = totals[r["zone"]]
        t[0] += r["clips"]
        t[1] += r["hours"]
        t[2] += r["bytes"]
    for zone, (clips, hours, size) in sorted(totals.items()):
        lines.append(f"{'total':<12} {'':<8} {'':<7} {zone:<8} {int(clips):>6} {hours:>8.3f} {size / 1e6:>9.1f}")
    return "\n".join(lines)


def _check_sample(sample: dict, m: Manifest, where: str) -> None:
    key = schema.validate_key(sample["__key__"])
    for suffix in sample:
        if not suffix.startswith("__"):
            schema.validate_member(key, suffix, m.cameras)
    for member in schema.FIXED_MEMBERS + tuple(f"{c}.mp4" for c in m.cameras):
        if member not in sample:
            raise DataError(f"{where}: member {member} is missing")
    meta = schema.parse_meta(sample["meta.json"], where)
    if meta.zone != m.zone or meta.country != m.country:
        raise DataError(f"{where}: clip says {meta.country}/{meta.zone}, manifest says {m.country}/{m.zone}")
    schema.parse_calib(sample["calib.json"], m.cameras, where)
    ego = schema.decode_npy(sample["ego.npy"], f"{where}/ego.npy")
    if ego.shape != (meta.frames, len(schema.EGO_FIELDS)) or ego.dtype != np.float64:
        raise DataError(f"{where}: ego.npy is {ego.dtype}{list(ego.shape)}, expected float64[{meta.frames}, 6]")
    for cam in m.cameras:
        decode_video(sample[f"{cam}.mp4"], frames=meta.frames, where=f"{where}/{cam}.mp4")


def verify(url: str, *, progress: Callable[[str], None] | None = None) -> list[str]:
    """Every problem found, one line each naming shard (and sample): missing/extra shards, size and
    sha256 mismatches, schema violations, videos that do not decode to their declared frames."""
    problems: list[str] = []
    for m in find_manifests(url):
        listed = {k.rsplit("/", 1)[-1] for k in objects.list_keys(m.url)}
        expected = {s.name for s in m.shards}
        problems += [f"{objects.join_url(m.url, n)}: shard in the store but not in the manifest" for n in sorted(listed - expected - {MANIFEST_NAME}) if n.endswith(".tar")]
        for shard in m.shards:
            surl = m.shard_url(shard)
            if shard.name not in listed:
                problems.append(f"{surl}: missing from the store")
                continue
            data = objects.read_bytes(surl)
            if len(data) != shard.bytes:
                problems.append(f"{surl}: {len(data)} bytes, the manifest says {shard.bytes}")
                continue
            if hashlib.sha256(data).hexdigest() != shard.sha256:
                problems.append(f"{surl}: sha256 does not match the manifest")
                continue
            count = 0
            try:
                for sample in group_by_keys(tar_file_expander([{"url": surl, "stream": io.BytesIO(data)}]), lcase=False):
                    count += 1
                    try:
                        _check_sample(sample, m, f"{surl}:{sample['__key__']}")
                    except DataError as exc:
                        problems.append(str(exc))
            except (tarfile.TarError, ValueError) as exc:
                problems.append(f"{surl}: not a readable tar ({type(exc).__name__})")
                continue
            if count != shard.samples:
                problems.append(f"{surl}: {count} samples, the manifest says {shard.samples}")
            if progress:
                progress(f"checked {surl} ({count} clips)")
    return problems
