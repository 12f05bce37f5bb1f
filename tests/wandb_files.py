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


def read_run(run_dir: str | Path) -> dict:
    """-> {"history": [ {key: value} per logged step ], "config": {key: value}, "run": Record.run}"""
    files = glob.glob(str(Path(run_dir) / "run-*.wandb"))
    assert len(files) == 1, f"expected one run file in {run_dir}, found {files}"
    history, config, run = [], {}, None
    for payload in _payloads(Path(files[0]).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "config":
            for item in rec.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            run = rec.run
            for item in rec.run.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"history": history, "config": config, "run": run}


def offline_runs(save_dir: str | Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(Path(save_dir) / "wandb" / "offline-run-*")))
