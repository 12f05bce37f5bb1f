"""Reads W&B offline run files (``run-*.wandb``) back, so tests check what a reviewer would get.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB
blocks of records (crc32c:4, length:2, type:1, payload), each payload a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

from fsdtrain.review.wandb_files import wait_finished

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE:
            parts.append(chunk)
        elif kind == _LAST:
            parts.append(chunk)
            yield b"".join(parts)
            parts = []


def _item_key(item) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _put(target: dict, keys: list[str], value) -> None:
    """Sets ``target[k0][k1]...`` = value; a media value is logged as nested keys (``val/table``, ``_type``)."""
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def _artifact(rec) -> dict:
    return {
        "name": rec.name,
        "type": rec.type,
        "aliases": list(rec.aliases),
        "metadata": json.loads(rec.metadata) if rec.metadata else {},
        "digest": rec.digest,
        "entries": [{"path": c.path, "ref": c.ref, "size": c.size, "local_path": c.local_path} for c in rec.manifest.contents],
    }


def read_run(run_dir: str | Path, wait_s: float = 30.0) -> dict:
    """-> {"history": [ {key: value} per logged step ], "config": {key: value}, "run": Record.run,
    "artifacts": [ {name, type, aliases, metadata, digest, entries} per logged artifact ],
    "used_artifacts": [ {id, name, type} per use_artifact record ], "files": [ paths under files/ ],
    "summary": {key: value} as the run table shows it at the end, "metrics": [ define_metric records ]}

    Summary keys join nested keys with ``/`` (``_wandb/runtime``); a key given ``define_metric(summary="min")``
    holds ``{"min": value}``. A metric record: ``{name, glob_name, step_metric, summary: ["min", ...]}``.

    Media in history are nested dicts (e.g. ``{"val/table": {"_type": "table-file", "path": ...}}``);
    their files are under ``<run_dir>/files/<path>``.
    """
    files = glob.glob(str(Path(run_dir) / "run-*.wandb"))
    assert len(files) == 1, f"expected one run file in {run_dir}, found {files}"
    history, config, run, artifacts, used, saved, summary, metrics = [], {}, None, [], [], [], {}, []
    wait_finished(Path(run_dir), timeout_s=wait_s)  # W&B's writer process may still be flushing the file
    for payload in _payloads(Path(files[0]).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row: dict = {}
            for i in rec.history.item:
                _put(row, _item_key(i), json.loads(i.value_json))
            history.append(row)
        elif kind == "config":
            for item in rec.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            run = rec.run
            for item in rec.run.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append(_artifact(rec.artifact))
        elif kind == "use_artifact":
            used.append({"id": rec.use_artifact.id, "name": rec.use_artifact.name, "type": rec.use_artifact.type})
        elif kind == "files":
            saved += [f.path for f in rec.files.files]
        elif kind == "summary":
            for item in rec.summary.update:
                summary["/".join(_item_key(item))] = json.loads(item.value_json)
            for item in rec.summary.remove:
                summary.pop("/".join(_item_key(item)), None)
        elif kind == "metric":
            m = rec.metric
            goals = [f.name for f in m.summary.DESCRIPTOR.fields if getattr(m.summary, f.name)]
            metrics.append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric, "summary": goals})
    return {
        "history": history, "config": config, "run": run, "artifacts": artifacts, "used_artifacts": used, "files": saved,
        "summary": summary, "metrics": metrics,
    }  # fmt: skip


def offline_runs(save_dir: str | Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(Path(save_dir) / "wandb" / "offline-run-*")))
