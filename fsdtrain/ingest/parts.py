"""An ingest run in parts (``fsdtrain data write --part I/N``): staging, part records, one atomic publish.

Which clips go into which shard is a pure function of the sorted drive list and the sizing flags,
never of the part count: the drives, sorted by name, form groups of ``group_drives`` (:func:`group_of`);
a shard holds clips of one group only, and parts take whole groups, part ``I`` of ``N`` the
contiguous block :meth:`PartSpec.drives`. Written in one run or in any number of parts, the same
drives give the same shards, in the same order.

A run's files live in ``<out>/.ingest/<split>-<run id>/`` (:class:`IngestRun`); the run id is a
digest of the drive list, the settings and ``N``, so the parts of one run (and a rerun of one of
them) find each other without talking. Part ``I`` writes its shards, per country, into its own
staging folder ``part-000I-of-000N/<country>/`` (numbered from 0, as a fresh shard directory), then
its record ``part-000I-of-000N.json`` last: a record means the part is complete. A part that fails
leaves its staging folder (cleared when it is rerun) and no record; nothing outside the run folder
is touched, so the published dataset stays as it was, byte for byte.

Publishing (:meth:`IngestRun.publish`, by the part that finds all ``N`` records after writing its
own, or by ``--publish N``): per country, the staged shards take the lowest shard numbers no object
in ``<out>/<split>/<country>/`` uses (the names a one-run write there would give them), are moved
there with their indexes (rewritten to name the shard), and only once every country's shards are in
place is each manifest saved (the one atomic switch per directory, as :func:`~fsdtrain.format.writer.publish_all`);
then the old version's shards are removed and ``published.json`` marks the run done, after which a
rerun part does nothing. The final names are fixed once, in ``publish.json``, written before the
first move: two parts that finish together follow the same names, and every step can be repeated,
so a publish that stopped halfway is finished by running it again. Two publishers at once (the
last two parts finishing together) do the same steps with the same bytes: where one finds a staged
object the other has just moved, it takes the moved one (:class:`~fsdtrain.errors.ObjectMissing`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass

from fsdtrain.errors import ConfigError, DataError, ObjectMissing, StoreError
from fsdtrain.format.index import parse_index
from fsdtrain.format.manifest import Manifest, ShardInfo, parse_manifest, save_manifest
from fsdtrain.format.schema import strict_json
from fsdtrain.format.writer import free_names, remove_unlisted, survey
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate

__all__ = ["PartSpec", "group_of", "PartsMissing", "IngestRun"]

log = logging.getLogger(__name__)

RECORD_SCHEMA = "fsdtrain.ingest-part/1"
_PART_RE = re.compile(r"^\s*(\d{1,6})\s*/\s*(\d{1,6})\s*$")


@dataclass(frozen=True)
class PartSpec:
    """Part ``index`` (1-based) of ``count``: ``--part 2/8``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ConfigError(f"--part {self.index}/{self.count}: the part must be 1..{self.count}, e.g. --part 1/{self.count}")

    @classmethod
    def parse(cls, text: str) -> PartSpec:
        """``"2/8"`` -> ``PartSpec(2, 8)``; a ConfigError naming the flag otherwise."""
        m = _PART_RE.match(text or "")
        if m is None:
            raise ConfigError(f"--part {text!r} must be I/N, part I of N counted from 1, e.g. --part 1/4 (a SLURM array task: --part $SLURM_ARRAY_TASK_ID/4)")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def drives(self, n_drives: int, group_drives: int) -> range:
        """Indexes (into the sorted drive list) of this part's drives: whole groups, a contiguous block."""
        groups = -(-n_drives // group_drives)
        first, last = (self.index - 1) * groups // self.count, self.index * groups // self.count
        return range(min(first * group_drives, n_drives), min(last * group_drives, n_drives))


def group_of(drive_index: int, group_drives: int) -> int:
    """The group of the drive at ``drive_index`` of the sorted list: shards never hold clips of two groups."""
    return drive_index // group_drives


class PartsMissing(DataError):
    """Publishing found parts without a record (not run yet, running, or failed): nothing was published."""


class IngestRun:
    """The folder of one ingest run in parts, and its publish step.

    Args:
        out: the dataset URL (``--out``).
        split: the split written.
        identity: what makes the run (drive list, settings, part count), JSON-serializable; its digest names the run.
        parts: the part count ``N``.
        gate: the job's zone gate: records, the plan and staged indexes are read through it.
    """

    def __init__(self, out: str, split: str, identity: object, parts: int, gate: ZoneGate) -> None:
        self.out, self.split, self.parts, self.gate = out, split, parts, gate
        self.id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.url = objects.join_url(out, ".ingest", f"{split}-{self.id}")

    def _part_name(self, index: int) -> str:
        width = max(4, len(str(self.parts)))
        return f"part-{index:0{width}d}-of-{self.parts:0{width}d}"

    def stage_url(self, index: int, country: str) -> str:
        """Where part ``index`` writes the shards of ``country``."""
        return objects.join_url(self.url, self._part_name(index), country)

    def record_url(self, index: int) -> str:
        return objects.join_url(self.url, self._part_name(index) + ".json")

    def clear_stage(self, index: int) -> None:
        """Removes what an earlier attempt of part ``index`` left (its record first: the part is incomplete from here on)."""
        objects.delete(self.record_url(index))
        self._clear(objects.join_url(self.url, self._part_name(index)))

    def _clear(self, prefix: str) -> None:
        for url in self.gate.list_keys(prefix):
            objects.delete(url)
        objects.delete(prefix)  # the folder itself on file:// (on S3 no object has the prefix's name)

    # --- records ----------------------------------------------------------------------------------

    def write_record(self, index: int, manifests: list[Manifest], written: list[str], skipped: list[tuple[str, str]]) -> None:
        """Part ``index`` is complete: its staged shards per country (as manifests that are not published) and its drives."""
        record = {
            "schema": RECORD_SCHEMA, "run": self.id, "part": index, "parts": self.parts, "written": written,
            "skipped": [list(s) for s in skipped], "countries": {m.country: json.loads(m.to_json()) for m in manifests},
        }  # fmt: skip
        objects.write_bytes(self.record_url(index), json.dumps(record, indent=1, sort_keys=True).encode())

    def missing(self) -> list[int]:
        """Parts without a record, in order."""
        return [i for i in range(1, self.parts + 1) if not self.gate.exists(self.record_url(i))]

    def missing_text(self, missing: list[int]) -> str:
        shown = ", ".join(f"{i}/{self.parts}" for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        return (f"part(s) {shown} of {self.parts} not complete ({self.url}); run them with the same flags and --part I/{self.parts} "
                "(the last part to finish publishes, or --publish afterwards)")  # fmt: skip

    def _records(self) -> list[dict]:
        records = []
        for i in range(1, self.parts + 1):
            where = self.record_url(i)
            try:
                raw = strict_json(self.gate.read(where))
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise DataError(f"{where}: not a part record ({exc}); rerun part {i}/{self.parts}") from None
            if not isinstance(raw, dict) or raw.get("schema") != RECORD_SCHEMA or raw.get("run") != self.id or raw.get("part") != i:
                raise DataError(f"{where}: not the record of part {i}/{self.parts} of run {self.id}; rerun that part")
            if not isinstance(raw.get("countries"), dict) or not isinstance(raw.get("written"), list) or not isinstance(raw.get("skipped"), list):
                raise DataError(f"{where}: fields countries, written, skipped missing or of the wrong type; rerun part {i}/{self.parts}")
            raw["countries"] = {c: parse_manifest(m, f"{where}: countries.{c}") for c, m in raw["countries"].items()}
            records.append(raw)
        return records

    def published(self) -> bool:
        """Whether this run was published (its ``published.json`` exists)."""
        return self.gate.exists(objects.join_url(self.url, "published.json"))

    # --- publish ----------------------------------------------------------------------------------

    def publish(self, *, replace: bool) -> tuple[list[Manifest], list[str], list[tuple[str, str]]]:
        """Moves every part's staged shards into ``<out>/<split>/<country>/`` and saves one manifest per country.

        Returns:
            The published manifests (sorted by country), the drives written and the drives skipped, over all parts.

        Raises:
            PartsMissing: a part has no record; nothing is published.
            DataError: the parts disagree on a country's zone, cameras, frame rate or clip length, or
                no part wrote a clip.
            ConfigError: a country directory holds a dataset and ``replace`` is not given.
        """
        missing = self.missing()
        if missing:
            raise PartsMissing(f"not published: {self.missing_text(missing)}")
        records = self._records()
        written = [d for r in records for d in r["written"]]
        skipped = [(str(s[0]), str(s[1])) for r in records for s in r["skipped"]]
        staged: dict[str, list[tuple[int, Manifest]]] = {}
        for r in records:
            for country, m in sorted(r["countries"].items()):
                staged.setdefault(country, []).append((r["part"], m))
        if not staged:
            first = f"; first problem: {skipped[0][1]}" if skipped else ""
            raise DataError(f"none of the drives of run {self.url} could be ingested{first}")
        # listed before the plan is looked for: a listing made before another publisher's plan
        # exists predates its first move, so two publishers that both find no plan make the same one
        dirs = {c: objects.join_url(self.out, self.split, c) for c in staged}
        plan_url = objects.join_url(self.url, "publish.json")
        taken, refused = {}, None
        for c, u in dirs.items():
            try:
                taken[c] = survey(u, replace)
            except ConfigError as exc:  # a dataset there: refused below unless a plan shows it is this run's
                taken[c], refused = set(), refused or exc
        if self.gate.exists(plan_url):
            plan = strict_json(self.gate.read(plan_url))
            if not isinstance(plan, dict) or set(plan) != set(staged):
                raise DataError(f"{plan_url} does not match the part records; delete it and publish again (--publish {self.parts})")
        else:
            if refused is not None:
                raise refused  # before anything moves
            plan = self._plan(staged, taken)
            objects.write_bytes(plan_url, json.dumps(plan, indent=1, sort_keys=True).encode())
        manifests = []
        for country in sorted(staged):  # every directory's shards in place before any manifest is saved
            manifests.append(self._place(country, staged[country], plan[country], dirs[country]))
        for m in manifests:
            save_manifest(m.url, m)
            log.info("%s: published %d clips in %d shards at %s", m.country, m.samples, len(m.shards), m.url)
        for m in manifests:
            remove_unlisted(m.url, m)
        objects.write_bytes(objects.join_url(self.url, "published.json"), json.dumps({m.country: m.digest() for m in manifests}, sort_keys=True).encode())
        for i in range(1, self.parts + 1):  # the staged indexes (the shards are moved) and, on file://, the folders
            self._clear(objects.join_url(self.url, self._part_name(i)))
        return manifests, written, skipped

    def _plan(self, staged: dict[str, list[tuple[int, Manifest]]], taken: dict[str, set[int]]) -> dict:
        """Per country, the final name of each staged shard, in part order."""
        plan = {}
        for country, parts in staged.items():
            shards = [(i, s.name) for i, m in parts for s in m.shards]
            plan[country] = [[i, name, final] for (i, name), final in zip(shards, free_names(taken[country], len(shards)))]
        return plan

    def _place(self, country: str, parts: list[tuple[int, Manifest]], plan: list, out: str) -> Manifest:
        """Moves one country's staged shards to their planned names (each step skipped when done) and
        returns the manifest listing them, not saved yet."""
        first = parts[0][1]
        for i, m in parts:
            for what in ("dataset", "split", "zone", "cameras", "fps", "frames"):
                if getattr(m, what) != getattr(first, what):
                    raise DataError(f"{self.record_url(i)}: {country} {what} {getattr(m, what)!r} differs from {getattr(first, what)!r} "
                                    f"of part {parts[0][0]}/{self.parts}; one country folder holds one {what}")  # fmt: skip
        finals = {(int(i), name): final for i, name, final in plan}
        manifest = Manifest(dataset=first.dataset, split=first.split, country=country, zone=first.zone, cameras=list(first.cameras),
                            fps=first.fps, frames=first.frames)  # fmt: skip
        manifest.url = out.rstrip("/")
        for i, m in parts:
            stage = self.stage_url(i, country)
            for s in m.shards:
                final = finals.get((i, s.name))
                if final is None:
                    raise DataError(f"{self.url}/publish.json: no name for {s.name} of part {i}/{self.parts}; delete publish.json and publish again")
                index_bytes = self._index(objects.join_url(stage, s.index), objects.join_url(out, final[: -len(".tar")] + ".index.json"), final, s, m.zone)
                self._move(objects.join_url(stage, s.name), objects.join_url(out, final), m.zone)
                manifest.shards.append(ShardInfo(name=final, samples=s.samples, bytes=s.bytes, sha256=s.sha256, index=final[: -len(".tar")] + ".index.json",
                                                 index_sha256=hashlib.sha256(index_bytes).hexdigest()))  # fmt: skip
        return manifest

    def _index(self, staged: str, final_url: str, final: str, shard: ShardInfo, zone: str) -> bytes:
        """The index of a shard under its final name, written to ``final_url`` (kept when already written)."""
        try:
            data = self.gate.read(staged, zone=zone)
        except ObjectMissing:
            return self.gate.read(final_url, zone=zone)  # an earlier (or a concurrent) publish moved this one
        if hashlib.sha256(data).hexdigest() != shard.index_sha256:
            raise DataError(f"{staged}: sha256 differs from the part record's; rerun the part that wrote it")
        index = parse_index(data, staged)
        index.shard = final
        text = index.to_json()
        objects.write_bytes(final_url, text)
        return text

    def _move(self, src: str, dst: str, zone: str) -> None:
        """Moves a staged shard to its final name: a rename on ``file://``; on S3 a server-side copy
        (through the gate, recorded: the bytes stay in the store), then the staged object's delete. A
        shard already moved (the source gone, the target there) is left as it is."""
        s, d = objects.parse_url(src), objects.parse_url(dst)
        if s.scheme == "file":
            try:
                os.makedirs(os.path.dirname(d.key), exist_ok=True)
                os.replace(s.key, d.key)
            except FileNotFoundError:
                if not os.path.isfile(d.key):
                    raise StoreError(f"cannot move {src} to {dst}: neither exists; rerun the part that staged it") from None
            except OSError as exc:
                raise StoreError(f"cannot move {src} to {dst}: {exc.strerror or exc}") from None
            return
        try:
            self.gate.copy(src, dst, zone=zone)
        except ObjectMissing:
            if self.gate.exists(dst):
                return  # moved by an earlier (or a concurrent) publish
            raise StoreError(f"cannot move {src} to {dst}: neither exists; rerun the part that staged it") from None
        objects.delete(src)
