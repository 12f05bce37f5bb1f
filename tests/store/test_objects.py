"""Tests for fsdtrain.store.objects: file:// and s3:// (a real SeaweedFS) behave the same."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fsdtrain.errors import StoreError
from fsdtrain.store import objects
from fsdtrain.store.seaweed import LocalStore

PAYLOAD = bytes(range(256)) * 40  # 10 KiB, every byte value


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable URL prefix on each backend."""
    if request.param == "file":
        return f"file://{tmp_path}/root"
    return request.getfixturevalue("s3_bucket") + "/root"


def _free_port() -> int:
    """A port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- round trips, both backends --------------------------------------------------------------


def test_write_read_round_trip(root: str) -> None:
    url = objects.join_url(root, "a", "shard-000000.tar")
    objects.write_bytes(url, PAYLOAD)
    assert objects.read_bytes(url) == PAYLOAD


def test_byte_ranges(root: str) -> None:
    url = objects.join_url(root, "ranged.bin")
    objects.write_bytes(url, PAYLOAD)
    assert objects.read_bytes(url, byte_range=(0, 1)) == PAYLOAD[:1]
    assert objects.read_bytes(url, byte_range=(100, 612)) == PAYLOAD[100:612]
    assert objects.read_bytes(url, byte_range=(len(PAYLOAD) - 7, len(PAYLOAD))) == PAYLOAD[-7:]


def test_overwrite_replaces_whole_object(root: str) -> None:
    url = objects.join_url(root, "over.bin")
    objects.write_bytes(url, PAYLOAD)
    objects.write_bytes(url, b"short")
    assert objects.read_bytes(url) == b"short"


def test_empty_object(root: str) -> None:
    url = objects.join_url(root, "empty")
    objects.write_bytes(url, b"")
    assert objects.exists(url)
    assert objects.read_bytes(url) == b""


def test_exists_list_delete(root: str) -> None:
    names = ["x/2.bin", "x/1.bin", "x/sub/3.bin", "xy.bin", "y.bin"]
    for name in names:
        objects.write_bytes(objects.join_url(root, name), name.encode())
    assert objects.exists(objects.join_url(root, "x/1.bin"))
    assert not objects.exists(objects.join_url(root, "x/nope.bin"))

    listed = list(objects.list_keys(root))
    assert listed == sorted(objects.join_url(root, n) for n in names)
    assert list(objects.list_keys(objects.join_url(root, "x"))) == sorted(
        objects.join_url(root, n) for n in names if n.startswith("x/")
    )
    # A prefix is a directory, not a string prefix: "x" lists x/..., not xy.bin.
    assert objects.join_url(root, "xy.bin") not in list(objects.list_keys(objects.join_url(root, "x")))
    assert list(objects.list_keys(objects.join_url(root, "nothing-here"))) == []

    objects.delete(objects.join_url(root, "x/1.bin"))
    assert not objects.exists(objects.join_url(root, "x/1.bin"))
    assert objects.join_url(root, "x/1.bin") not in list(objects.list_keys(root))
    objects.delete(objects.join_url(root, "x/1.bin"))  # deleting a missing object is not an error


def test_missing_object_names_the_url(root: str) -> None:
    url = objects.join_url(root, "missing", "shard-000042.tar")
    with pytest.raises(StoreError, match="shard-000042.tar") as info:
        objects.read_bytes(url)
    assert "\n" not in str(info.value)


# --- URLs ------------------------------------------------------------------------------------


def test_plain_path_is_file_url(tmp_path: Path) -> None:
    path = tmp_path / "plain" / "obj.bin"
    objects.write_bytes(str(path), b"abc")
    assert objects.read_bytes(f"file://{path}") == b"abc"
    assert objects.parse_url(str(path)) == objects.parse_url(f"file://{path}")
    assert list(objects.list_keys(str(tmp_path / "plain"))) == [f"file://{path}"]


def test_parse_and_join() -> None:
    assert objects.parse_url("s3://bucket/a/b.tar") == objects.ObjectUrl("s3", "bucket", "a/b.tar")
    assert objects.parse_url("s3://bucket") == objects.ObjectUrl("s3", "bucket", "")
    assert objects.join_url("s3://bucket", "a", "b.tar") == "s3://bucket/a/b.tar"
    assert objects.join_url("s3://bucket/p/", "/q/") == "s3://bucket/p/q"
    assert objects.join_url("file:///data/x", "y.tar") == "file:///data/x/y.tar"


@pytest.mark.parametrize(
    "url",
    ["", "http://host/key", "gs://bucket/key", "s3:///key-without-bucket", "file://otherhost/path"],
)
def test_bad_urls_raise_store_error(url: str) -> None:
    with pytest.raises(StoreError) as info:
        objects.read_bytes(url)
    message = str(info.value)
    assert "\n" not in message
    assert "s3://" in message or "file://" in message  # says what a good URL looks like


# --- file:// specifics -----------------------------------------------------------------------


def test_file_write_is_atomic(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/deep/dir/obj.bin"
    objects.write_bytes(url, PAYLOAD)
    objects.write_bytes(url, PAYLOAD[::-1])
    assert objects.read_bytes(url) == PAYLOAD[::-1]
    leftovers = [p.name for p in (tmp_path / "deep" / "dir").iterdir()]
    assert leftovers == ["obj.bin"]


def test_file_write_failure_leaves_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "is-a-dir"
    target.mkdir()
    (target / "child").write_bytes(b"keep")
    with pytest.raises(OSError):
        objects.write_bytes(str(target), b"data")  # cannot replace a non-empty directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is-a-dir"]


# --- s3:// failures --------------------------------------------------------------------------


def test_wrong_secret_key_mentions_credentials_not_the_secret(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "not-the-right-secret-0123456789abcdef"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    objects.reset_clients()
    with pytest.raises(StoreError, match="credentials") as info:
        objects.read_bytes(objects.join_url(s3_bucket, "any"))
    message = str(info.value)
    assert wrong not in message
    assert "\n" not in message


def test_s3_errors_never_contain_the_secret(s3_env: LocalStore, s3_bucket: str) -> None:
    with pytest.raises(StoreError) as info:
        objects.read_bytes(objects.join_url(s3_bucket, "missing"))
    assert s3_env.secret_key not in str(info.value)


def test_unreachable_endpoint_fails_fast(s3_env: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    objects.reset_clients()
    started = time.monotonic()
    with pytest.raises(StoreError, match="unreachable") as info:
        objects.read_bytes("s3://no-server-bucket/key")
    assert time.monotonic() - started < 60
    assert "no-server-bucket" in str(info.value)
    assert s3_env.secret_key not in str(info.value)


def test_missing_bucket_is_store_error(s3_env: LocalStore) -> None:
    with pytest.raises(StoreError, match="does-not-exist-bucket"):
        objects.read_bytes("s3://does-not-exist-bucket/key")


def test_ensure_bucket_is_idempotent(s3_bucket: str) -> None:
    objects.ensure_bucket(s3_bucket)
    objects.ensure_bucket(objects.join_url(s3_bucket, "some/prefix"))
    objects.write_bytes(objects.join_url(s3_bucket, "k"), b"v")
    assert objects.read_bytes(objects.join_url(s3_bucket, "k")) == b"v"
