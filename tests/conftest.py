"""Shared pytest fixtures.

The object store fixtures run a real SeaweedFS S3 server on loopback (``weed mini``), one per test
session, with per-zone buckets and keys (``STORE_ZONES``); tests that need ``s3://`` take ``s3_env``
(AWS variables point at it with the admin key), ``s3_bucket`` (a fresh, empty bucket of their own)
or ``use_zone_key`` (switch the AWS variables to one zone's key). ``tiny_fleet`` is a small synthetic CN/US/DE fleet on file://.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fsdtrain.store import objects
from fsdtrain.store.local.seaweed import CONFLICTING_AWS_ENV, LocalStore

# tiny synthetic fleets (tests/helpers/fleet.py): the `tiny_fleet` fixture
pytest_plugins = ["helpers.fleet"]

#: zone -> bucket of the session store; each zone's key may read, write and list its bucket only.
STORE_ZONES = {"global": "fleet-global", "cn": "fleet-cn", "us": "fleet-us"}


@pytest.fixture(scope="session")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    """One SeaweedFS S3 endpoint for the whole session; its data and ``weed.log`` stay in the
    session's temp dir for post-mortems. Tests must not change its process environment: use
    ``s3_env``."""
    data_dir: Path = tmp_path_factory.mktemp("seaweedfs")
    store = LocalStore(data_dir, zones=STORE_ZONES)
    store.start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def s3_env(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStore]:
    """Points the standard AWS variables at ``local_store`` for one test, with fresh S3 clients."""
    for name in CONFLICTING_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in local_store.env().items():
        monkeypatch.setenv(name, value)
    objects.reset_clients()
    yield local_store
    objects.reset_clients()


@pytest.fixture
def s3_bucket(s3_env: LocalStore) -> str:
    """A new empty bucket on the local store, as ``s3://<bucket>``."""
    url = f"s3://test-{uuid.uuid4().hex}"
    objects.ensure_bucket(url)
    return url


@pytest.fixture
def use_zone_key(s3_env: LocalStore, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, str]]:
    """``use_zone_key("cn")`` points the AWS variables at the session store with the ``cn`` key
    (fresh S3 clients) and returns that environment; the test's end restores the admin key."""

    def use(zone: str) -> dict[str, str]:
        env = s3_env.zone_env(zone)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        objects.reset_clients()
        return env

    return use
