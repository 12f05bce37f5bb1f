"""``fsdtrain data inspect`` and ``fsdtrain data verify``: what a dataset holds, and whether it is intact.

:func:`verify` compares every manifest with the store and the shards with the clip schema. Each
problem is one line naming the object (shard, index or stray file) and, for sample-level problems,
the sample as ``<shard url>:<sample key>``:

- objects: a shard (or its index) listed in the manifest but missing from the store; an object in
  the shard directory that the manifest does not list; size or sha256 differing from the manifest;
- the per-shard index (:mod:`fsdtrain.format.index`): the manifest must list one for every shard (the
  loader reads clips only through it), it must describe this shard, and every member's bytes must
  match their sha256 in it, which names the sample (and member) a corrupt byte lies in;
- tar structure: truncated or corrupt archives (naming the sample they end in), members that are
  not plain files, a member name appearing twice in a sample, samples split across the archive, a
  sample count differing from the manifest;
- samples: the whole clip schema of :func:`~fsdtrain.format.samples.parse_clip` (every field of
  ``meta.json``, ``calib.json`` and ``ego.npy``, types, ranges, finite values), each clip's own zone
  against the site zone and, with its country, cameras, fps and frames, against the manifest; one
  resolution per camera in a shard directory; each clip once in everything verified (a clip in two
  shards, or two datasets, would be trained on twice); the plausibility of each clip's motion in
  ``ego.npy`` (:func:`~fsdtrain.format.motion.check_motion`, the checks ``data write`` runs: heading
  along the direction of motion, speed and yaw_rate columns against the derivatives of the poses,
  physical limits; skipped for clips tagged ``plausibility: accepted``); and (unless ``fast``) that
  every video decodes to its declared frames at its calibrated size.

Sample checks run even when a shard's checksum fails, so the damaged sample is named where it can be.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable

from fsdtrain.errors import DataError
from fsdtrain.format.index import ShardIndex, parse_index
from fsdtrain.format.manifest import MANIFEST_NAME, Manifest, ShardInfo, load_manifest
from fsdtrain.format.motion import check_motion
from fsdtrain.format.samples import check_same_size, manifest_expect, parse_clip, read_tar
from fsdtrain.format.video import decode_video
from fsdtrain.progress import Progress
from fsdtrain.residency import ResidencyError
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate

__all__ = ["find_manifests", "inspect", "format_inspect", "verify", "verify_manifest"]

_BLOCK = 512  # tar block size; an archive ends with two zero blocks


def _manifest_dirs(url: str, gate: ZoneGate) -> list[str]:
    """Shard directory URLs with a manifest: ``url`` itself, or every one below it."""
    if gate.exists(objects.join_url(url, MANIFEST_NAME)):
        return [url.rstrip("/")]
    found = [k[: -len(MANIFEST_NAME) - 1] for k in gate.list_keys(url) if k.endswith("/" + MANIFEST_NAME)]
    if not found:
        raise DataError(f"no manifest.json at or below {url}: is it a dataset written by `fsdtrain data synth`/`data write`?")
    return found


def find_manifests(url: str, gate: ZoneGate) -> list[Manifest]:
    """Manifests at ``url`` (a shard directory) or anywhere below it (a dataset root)."""
    gate.check_url(url)
    return [load_manifest(u, gate, check_zone=False) for u in _manifest_dirs(url, gate)]


# --- inspect -------------------------------------------------------------------------------------


def inspect(url: str, *, site_zone: str | None = None) -> list[dict]:
    """One row per manifest: url, dataset, split, country, zone, clips, hours, bytes, shards,
    cameras (count), camera_names, fps. Manifests are metadata: any zone's may be listed where its
    bucket may be read."""
    rows = []
    for m in find_manifests(url, ZoneGate(site_zone)):
        rows.append({
            "url": m.url, "dataset": m.dataset, "split": m.split, "country": m.country, "zone": m.zone,
            "clips": m.samples, "hours": m.samples * m.frames / m.fps / 3600, "bytes": m.bytes, "shards": len(m.shards),
            "cameras": len(m.cameras), "camera_names": list(m.cameras), "fps": m.fps,
        })  # fmt: skip
    return rows


def format_inspect(rows: list[dict]) -> str:
    """A table of :func:`inspect` rows, then totals by zone, country and split, then the camera rigs."""
    head = f"{'dataset':<12} {'split':<8} {'country':<7} {'zone':<8} {'clips':>6} {'hours':>8} {'MB':>9} {'shards':>6} {'cams':>4} {'fps':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['dataset']:<12} {r['split']:<8} {r['country']:<7} {r['zone']:<8} {r['clips']:>6} {r['hours']:>8.3f} "
            f"{r['bytes'] / 1e6:>9.1f} {r['shards']:>6} {r['cameras']:>4} {r['fps']:>5g}"
        )
    for by in ("zone", "country", "split"):
        totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
        for r in rows:
            t = totals[r[by]]
            t[0] += r["clips"]
            t[1] += r["hours"]
            t[2] += r["bytes"]
        lines.append("")
        for value, (clips, hours, size) in sorted(totals.items()):
            label = f"total {by}"
            lines.append(f"{label:<29} {value:<8} {int(clips):>6} {hours:>8.3f} {size / 1e6:>9.1f}")
    rigs: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for r in rows:
        rigs[tuple(r.get("camera_names", ()))].append(f"{r['split']}/{r['country']}")
    lines.append("")
    for cams, where in rigs.items():
        lines.append(f"cameras ({len(cams)}): {', '.join(cams)}  [{', '.join(where)}]")
    return "\n".join(lines)


# --- verify --------------------------------------------------------------------------------------


def verify(url: str, *, fast: bool = False, progress: Callable[[str], None] | None = None, site_zone: str | None = None) -> list[str]:
    """Every problem found under ``url`` (a shard directory or a dataset root), one line each.

    Verifying reads every shard, so each manifest's zone is checked against the site zone before
    the first shard byte (reading manifests is allowed anywhere, docs/residency.md).

    Args:
        url: ``s3://`` or ``file://`` URL of a shard directory or of a root with manifests below it.
        fast: skip video decoding (objects, checksums, tar structure and schema are still checked).
        progress: called with one line per checked shard; a :class:`~fsdtrain.progress.Progress` is
            told the number of shards first, so its bar shows the share done and the time left.
        site_zone: zone this job runs in (default ``$FSDTRAIN_SITE_ZONE`` or ``global``).

    Returns:
        Problem lines (empty when intact); a manifest that does not load is one problem.

    Raises:
        DataError: there is no manifest at or below ``url``.
        StoreError: the store cannot be read (unreachable, access denied).
        ResidencyError: a manifest's zone may not be read at this site (nothing of it was read).
    """
    gate = ZoneGate(site_zone)
    gate.check_url(url)  # a bucket tied to another zone gets no request at all, not even a listing
    problems: list[str] = []
    manifests = []
    for murl in _manifest_dirs(url, gate):
        try:
            manifests.append(load_manifest(murl, gate, check_zone=False))
        except DataError as exc:
            problems.append(str(exc))
    for m in manifests:  # every zone checked before the first shard byte of any of them
        gate.check_data(m.url, m.zone)
    if isinstance(progress, Progress):
        progress.set_total(sum(len(m.shards) for m in manifests))
    seen_keys: dict[str, str] = {}  # across manifests too: a clip in two datasets is one clip read twice
    for m in manifests:
        problems += verify_manifest(m, gate, fast=fast, progress=progress, seen_keys=seen_keys)
    return problems


def verify_manifest(
    m: Manifest, gate: ZoneGate, *, fast: bool = False, progress: Callable[[str], None] | None = None,
    seen_keys: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """The problems of one loaded manifest's shard directory; see :func:`verify`. ``seen_keys`` (clip
    key -> shard URL) carries the clips of manifests verified before, to report a clip found twice."""
    listed = _listing(m.url, gate)
    expected = {MANIFEST_NAME}
    for shard in m.shards:
        expected.add(shard.name)
        if _index_name(shard):
            expected.add(_index_name(shard))
    problems = [f"{objects.join_url(m.url, name)}: in the store but not in the manifest" for name in sorted(listed - expected)]
    seen_keys = {} if seen_keys is None else seen_keys
    sizes: dict[str, tuple[tuple[int, int], str]] = {}  # camera -> (W, H) of the first clip, and where
    for shard in m.shards:
        found, count = _verify_shard(m, gate, shard, listed, fast, seen_keys, sizes)
        problems += found
        if progress:
            progress(f"checked {m.shard_url(shard)} ({count} clips, {len(found)} problem(s))")
    return problems


def _listing(url: str, gate: ZoneGate) -> set[str]:
    """Names of the objects in a shard directory, relative to it; sub-directories that hold their
    own manifest are other datasets and left out."""
    prefix = str(objects.parse_url(url)).rstrip("/") + "/"  # a plain path lists as file:// URLs
    names = {k[len(prefix) :] for k in gate.list_keys(url) if k.startswith(prefix)}
    nested = {n[: -len(MANIFEST_NAME)] for n in names if n.endswith("/" + MANIFEST_NAME)}
    return {n for n in names if not any(n.startswith(d) for d in nested)}


def _index_name(shard: ShardInfo) -> str | None:
    """The shard's index file (``shard-NNNNNN.index.json``) when the manifest lists one (manifests
    written before indexes existed list none)."""
    name = getattr(shard, "index", None)
    return name if isinstance(name, str) and name else None


def _load_index(m: Manifest, gate: ZoneGate, shard: ShardInfo, listed: set[str], problems: list[str]) -> ShardIndex | None:
    """The shard's index when the manifest lists one and it is present, parses and describes this
    shard; otherwise None, with the reason appended to ``problems``."""
    name = _index_name(shard)
    if name is None:
        problems.append(
            f"{m.shard_url(shard)}: the manifest lists no index for this shard (written before indexes existed), "
            "so the loader cannot read it and its members are not checked against an index; rewrite the dataset"
        )
        return None
    iurl = objects.join_url(m.url, name)
    if name not in listed:
        problems.append(f"{iurl}: index missing from the store")
        return None
    data = gate.read(iurl, zone=m.zone)
    want = getattr(shard, "index_sha256", None)
    if want and hashlib.sha256(data).hexdigest() != want:
        problems.append(f"{iurl}: sha256 does not match the manifest")
        return None
    try:
        index = parse_index(data, iurl)
    except DataError as exc:
        problems.append(str(exc))
        return None
    if (index.shard, index.bytes, index.sha256) != (shard.name, shard.bytes, shard.sha256):
        problems.append(f"{iurl}: describes {index.shard} of {index.bytes} bytes, not the manifest's {shard.name} of {shard.bytes} bytes")
        return None
    return index


def _check_index_spans(index: ShardIndex, data: bytes, surl: str, tar_keys: set[str]) -> list[str]:
    """Each indexed member's bytes against its sha256 in the index: names the sample (and members)
    a corrupt byte lies in, which the shard's own checksum cannot."""
    problems = []
    for s in index.samples:
        where = f"{surl}:{s.key}"
        if s.offset + s.size > len(data):
            problems.append(f"{where}: cut off: the index puts it at bytes [{s.offset}, {s.offset + s.size}), the shard has {len(data)}")
            continue
        bad = [name for name, span in s.members.items() if hashlib.sha256(data[span.offset : span.end]).hexdigest() != span.sha256]
        if bad:
            problems.append(f"{where}: corrupt bytes in {', '.join(bad)} (sha256 differs from the index)")
        if s.key not in tar_keys:
            problems.append(f"{where}: in the index but not in the tar")
    problems += [f"{surl}:{key}: in the tar but not in the index" for key in sorted(tar_keys - {s.key for s in index.samples})]
    return problems


def _verify_shard(
    m: Manifest, gate: ZoneGate, shard: ShardInfo, listed: set[str], fast: bool, seen_keys: dict[str, str],
    sizes: dict[str, tuple[tuple[int, int], str]],
) -> tuple[list[str], int]:
    """Problems of one shard (and its index), and how many samples it holds."""
    surl = m.shard_url(shard)
    problems: list[str] = []
    index = _load_index(m, gate, shard, listed, problems)
    if shard.name not in listed:
        problems.append(f"{surl}: missing from the store")
        return problems, 0
    data = gate.read(surl, zone=m.zone)
    if len(data) != shard.bytes:
        problems.append(f"{surl}: {len(data)} bytes, the manifest says {shard.bytes}")
    elif hashlib.sha256(data).hexdigest() != shard.sha256:
        problems.append(f"{surl}: sha256 does not match the manifest")
    count, unreadable, tar_keys = 0, False, set()
    for item in read_tar(data):
        key, sample, broken = item.key, item.members, item.problem
        count += 1
        tar_keys.add(key)
        where = f"{surl}:{key}"
        if key in seen_keys:
            problems.append(f"{where}: sample key appears more than once (also in {seen_keys[key]}): the clip would be trained on twice")
        seen_keys.setdefault(key, surl)
        if broken:
            problems.append(f"{where}: {broken}")
            unreadable = unreadable or not sample
            continue
        try:
            _check_sample(key, sample, m, where, gate=gate, decode=not fast, sizes=sizes)
        except (DataError, ResidencyError) as exc:
            problems.append(str(exc))
    if count != shard.samples:
        problems.append(f"{surl}: {count} samples, the manifest says {shard.samples}")
    if not unreadable and (len(data) % _BLOCK or data[-2 * _BLOCK :] != bytes(2 * _BLOCK)):
        # tarfile reads an archive cut between two members as complete; the missing end says otherwise
        problems.append(f"{surl}: truncated: the tar does not end with its end-of-archive blocks")
    if index is not None:
        problems += _check_index_spans(index, data, surl, tar_keys - {"(start)"})
    return problems, count


def _check_sample(
    key: str, sample: dict[str, bytes], m: Manifest, where: str, *, gate: ZoneGate, decode: bool,
    sizes: dict[str, tuple[tuple[int, int], str]],
) -> None:  # fmt: skip
    """Raises DataError (naming ``where``) at the first way ``sample`` breaks the clip schema or disagrees
    with the manifest, or ResidencyError when its own zone may not be read at this site."""
    clip = parse_clip(key, sample, m.cameras, where, known_cameras=m.cameras, expect=manifest_expect(m, where, site_zone=gate.site_zone))
    check_same_size(sizes, clip, m.cameras, where, "one shard directory holds one resolution per camera; write other sizes to their own directory")
    if clip.meta.tags.get("plausibility") != "accepted":  # data write --accept-implausible tags the clips it let through
        ego = clip.ego  # [frames, 6] t, x, y, yaw, speed, yaw_rate
        bad = check_motion(ego[:, 0], ego[:, 1:3], ego[:, 3], speed=ego[:, 4], yaw_rate=ego[:, 5])
        if bad is not None:
            raise DataError(f"{where}: ego.npy implausible motion {bad.line()}")
    if not decode:
        return
    for cam in m.cameras:
        frames = decode_video(sample[f"{cam}.mp4"], frames=clip.meta.frames, where=f"{where}/{cam}.mp4")  # [F, H, W, 3]
        width, height = clip.calib[cam]["size"]
        if frames.shape[1:3] != (height, width):
            raise DataError(f"{where}/{cam}.mp4: frames are {frames.shape[2]}x{frames.shape[1]}, calib.json says {width}x{height}")
