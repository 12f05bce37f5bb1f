"""What tests of the local SeaweedFS store share: an S3 client with one of its keys (explicit settings,
independent of the environment), and the processes it runs, read from ``/proc``."""

from __future__ import annotations

import time
from pathlib import Path

import boto3

from fsdtrain.store.local.seaweed import LocalStore

__all__ = ["store_client", "pids_where", "alive", "gone"]


def store_client(store: LocalStore, secret_key: str | None = None, *, zone: str | None = None):
    """A boto3 S3 client for ``store`` with the admin key, or ``zone``'s key; ``secret_key`` replaces
    the key's secret (to try a wrong one)."""
    env = store.env() if zone is None else store.zone_env(zone)
    return boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret_key or env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def _stat(entry: Path) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name (state, ppid, pgrp, ...); None once gone."""
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def pids_where(*, parent: int | None = None, group: int | None = None) -> list[int]:
    """pids of the processes whose parent is ``parent`` or whose process group is ``group``."""
    field, value = (1, parent) if parent is not None else (2, group)
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry)) is not None and int(fields[field]) == value:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    fields = _stat(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def gone(*pids: int, within_s: float = 10.0) -> bool:
    """Whether every one of ``pids`` is gone (or a zombie) within ``within_s``: a signal to a process
    group is sent at once, but a process nobody waits for exits only when it next runs, which on a
    loaded machine can be after the signalling call has returned."""
    deadline = time.monotonic() + within_s
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
