"""W&B offline run files (``<workdir>/wandb/offline-run-*/run-<id>.wandb``), read without W&B's servers.

An offline run file is what ``wandb sync`` uploads: a LevelDB-style log (a 7-byte header ``:W&B``,
magic 0xBEE1, version 0; then 32 KiB blocks of records: CRC-32 of type and payload, length, type,
payload), each payload one ``wandb_internal_pb2.Record`` of W&B's own protobuf schema. This module
checks every record's CRC and parses it with that schema; a corrupt record is a one-line
:class:`~fsdtrain.errors.ConfigError` naming the file and the byte offset. A run still writing (or
killed) ends in a partial record: the records before it are kept and the tail is reported in
:attr:`WandbRun.truncated`.

Media logged by a run (images, tables) are JSON in the history pointing at files under the run's
``files/`` folder; :meth:`WandbRun.media_file` resolves such a path and refuses one that leaves it.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from fsdtrain.errors import ConfigError

__all__ = ["WandbRun", "offline_runs", "read_wandb_run", "wait_finished"]

_MAGIC = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 little-endian, version 0
_HEADER = 7  # bytes of the file header and of each record header (crc:4, length:2, type:1)
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_MAX_FILE = 2 << 30  # run files are read whole: refuse one beyond any plausible run


@dataclass
class WandbRun:
    """What one offline run recorded.

    Args:
        path: the run folder (``offline-run-<time>-<id>``).
        run_id, project, job_type, group, name: from the run record ('' when not set).
        tags: the run's tags.
        config: run config, top-level key -> value (nested dicts as logged).
        history: one dict per logged step, key -> value; media values are dicts with ``_type``.
        summary: the run summary W&B keeps (last or best values per key), key -> value.
        artifacts: logged artifacts: name, type, aliases, metadata.
        used_artifacts: artifacts declared as inputs: name, type.
        truncated: bytes at the end that did not hold a whole record (a run killed while writing).
        finished: the file ends with the run's exit record (W&B's writer works behind the run's process:
            for a moment after a run finishes its file can still be short; :func:`wait_finished`).
    """

    path: Path
    run_id: str = ""
    project: str = ""
    job_type: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)
    used_artifacts: list[dict] = field(default_factory=list)
    truncated: int = 0
    finished: bool = False

    def scalars(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of every finite number logged under ``key``; the step is ``trainer/global_step``
        when the row has it (Lightning's x axis), else W&B's ``_step``."""
        out = []
        for row in self.history:
            v = row.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            step = row.get("trainer/global_step", row.get("_step"))
            if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
                out.append((float(step), float(v)))
        return out

    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def media_file(self, name: object, where: str) -> Path:
        """``files/<name>`` of this run, for a media value's ``path`` or ``filenames`` entry; a name that
        is not a relative path inside ``files/``, or a file that is not there, is a one-line error."""
        files = (self.path / "files").resolve()
        if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
            raise ConfigError(
                f"{self.path}: {where} names media file {name!r}, which is not a relative path under files/"
            )
        path = (files / name).resolve()
        if files not in path.parents:
            raise ConfigError(
                f"{self.path}: {where} names media file {name!r} outside the run's files/ folder"
            )
        if not path.is_file():
            raise ConfigError(
                f"{self.path}: {where} names media file files/{name}, which is missing; copy the whole run folder"
            )
        return path


def offline_runs(workdir: Path) -> list[Path]:
    """The offline run folders under ``<workdir>/wandb``, oldest first (their names start with the time)."""
    root = workdir / "wandb"
    return sorted(p for p in root.glob("offline-run-*") if p.is_dir()) if root.is_dir() else []


def _records(data: bytes, file: Path):
    """Payloads of the log's records, CRC-checked; -> (payload, offset) pairs, then the truncated byte count."""
    if data[: len(_MAGIC)] != _MAGIC:
        raise ConfigError(f"{file}: not a W&B run file (its header is {data[:7]!r}, not ':W&B' version 0)")
    pos, parts, start = _HEADER, [], None
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's last bytes are too few for a header: zero padding
            pos += left
            continue
        if pos + _HEADER > len(data):
            return len(data) - pos
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0 and crc == 0:  # padding up to the end of the block
            pos += left
            continue
        end = pos + _HEADER + length
        if length > left - _HEADER or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            raise ConfigError(
                f"{file}: record at byte {pos} has type {kind} and length {length}: the file is damaged"
            )
        if end > len(data):
            return len(data) - pos
        chunk = data[pos + _HEADER : end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ConfigError(
                f"{file}: record at byte {pos} fails its checksum: the file is damaged; copy it again from the run"
            )
        if kind == _FULL:
            yield chunk, pos
        elif kind == _FIRST:
            parts, start = [chunk], pos
        elif start is None:
            raise ConfigError(
                f"{file}: record at byte {pos} continues a record that never started: the file is damaged"
            )
        else:
            parts.append(chunk)
            if kind == _LAST:
                yield b"".join(parts), start
                parts, start = [], None
        pos = end
    return 0


def _value(item, file: Path, offset: int):
    try:
        return json.loads(item.value_json)
    except json.JSONDecodeError as exc:
        key = item.key or "/".join(item.nested_key)
        raise ConfigError(
            f"{file}: record at byte {offset}: value of {key!r} is not JSON ({exc.msg})"
        ) from None


def _put(target: dict, keys: list[str], value) -> None:
    """``target[k0][k1]... = value``: W&B logs a media value as nested keys (``val/table``, ``_type``)."""
    for k in keys[:-1]:
        nested = target.setdefault(k, {})
        if not isinstance(nested, dict):
            return
        target = nested
    target[keys[-1]] = value


def _update(target: dict, items, file: Path, offset: int) -> None:
    for item in items:
        keys = [item.key] if item.key else list(item.nested_key)
        if keys:
            _put(target, keys, _value(item, file, offset))


def read_wandb_run(run_dir: Path) -> WandbRun:
    """The run recorded in ``run_dir`` (an ``offline-run-*`` folder holding one ``run-*.wandb``)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(run_dir.glob("run-*.wandb"))
    if len(files) != 1:
        raise ConfigError(
            f"{run_dir}: expected one run-*.wandb file in the W&B run folder, found {len(files)}"
        )
    file = files[0]
    if file.stat().st_size > _MAX_FILE:
        raise ConfigError(
            f"{file}: {file.stat().st_size} bytes is more than a run file of this size can be read whole"
        )
    run = WandbRun(path=run_dir)
    records = _records(file.read_bytes(), file)
    while True:
        try:
            payload, offset = next(records)
        except StopIteration as done:
            run.truncated = done.value or 0
            break
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except DecodeError:
            raise ConfigError(
                f"{file}: record at byte {offset} is not a W&B record: the file is damaged or of another W&B version"
            ) from None
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row: dict = {}
            _update(row, rec.history.item, file, offset)
            run.history.append(row)
        elif kind == "run":
            r = rec.run
            run.run_id, run.project, run.job_type, run.group, run.name = (
                r.run_id,
                r.project,
                r.job_type,
                r.run_group,
                r.display_name,
            )
            run.tags = list(r.tags)
            _update(run.config, r.config.update, file, offset)
        elif kind == "config":
            _update(run.config, rec.config.update, file, offset)
        elif kind == "summary":
            _update(run.summary, rec.summary.update, file, offset)
        elif kind == "artifact":
            a = rec.artifact
            try:
                metadata = json.loads(a.metadata) if a.metadata else {}
            except json.JSONDecodeError:
                raise ConfigError(
                    f"{file}: record at byte {offset}: artifact {a.name!r} metadata is not JSON"
                ) from None
            run.artifacts.append(
                {"name": a.name, "type": a.type, "aliases": list(a.aliases), "metadata": metadata}
            )
        elif kind == "use_artifact":
            run.used_artifacts.append({"name": rec.use_artifact.name, "type": rec.use_artifact.type})
        elif kind == "exit":
            run.finished = True
    return run


def wait_finished(run_dir: Path, timeout_s: float = 30.0) -> WandbRun:
    """The run of ``run_dir`` once its file holds the exit record, or as it is after ``timeout_s``.

    W&B's writer (a process of its own) may still be flushing a run's file when the process that logged
    the run has exited; a reader right behind it (``fsdtrain demo``'s report after its eval) waits here."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_wandb_run(run_dir)
        if run.finished or time.monotonic() >= deadline:
            return run
        time.sleep(0.2)
