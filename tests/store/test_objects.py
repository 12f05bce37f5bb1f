"""Tests for fsdtrain.store.objects: file:// and s3:// (a real SeaweedFS) behave the same."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from counting_socket import counted_connections

from fsdtrain.errors import ConfigError, ObjectMissing, StoreError
from fsdtrain.store import objects
from fsdtrain.store.local.seaweed import CONFLICTING_AWS_ENV, LocalStore

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


def test_copy_inside_the_store_and_a_missing_source(root: str) -> None:
    src, dst = objects.join_url(root, "stage", "shard-000000.tar"), objects.join_url(root, "final", "shard-000003.tar")
    objects.write_bytes(src, PAYLOAD)
    objects.copy(src, dst)  # on S3 a server-side CopyObject
    assert objects.read_bytes(dst) == objects.read_bytes(src) == PAYLOAD
    objects.delete(src)
    with pytest.raises(ObjectMissing, match="no such"):
        objects.copy(src, dst)
    with pytest.raises(ObjectMissing, match="no such"):
        objects.read_bytes(src)
    assert objects.read_bytes(dst) == PAYLOAD


def test_an_object_over_the_single_copy_limit_is_copied_in_parts_server_side(s3_bucket: str) -> None:
    """S3 copies at most 5 GB with one CopyObject; above it the copy is a multipart upload of
    UploadPartCopy ranges (the limit and part size lowered here to 5 MiB, S3's smallest part)."""
    src, dst = f"{s3_bucket}/stage/big.tar", f"{s3_bucket}/final/big.tar"
    data = os.urandom(12 << 20)
    objects.write_bytes(src, data)
    objects.copy(src, dst, in_one_request=5 << 20, part=5 << 20)
    assert objects.read_bytes(dst) == data
    bucket = objects.parse_url(s3_bucket).bucket
    etag = objects.s3_client().head_object(Bucket=bucket, Key="final/big.tar")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart object's ETag counts its parts: 5 + 5 + 2 MiB


def test_a_failed_copy_in_parts_leaves_no_object_and_no_upload(s3_bucket: str) -> None:
    """The store refuses parts under 5 MiB (but the last): the copy fails, and its multipart upload
    is aborted, so neither the object nor its parts stay in the store."""
    src, dst = f"{s3_bucket}/stage/big.tar", f"{s3_bucket}/final/big.tar"
    objects.write_bytes(src, os.urandom(12 << 20))
    with pytest.raises(StoreError, match="cannot copy s3://"):
        objects.copy(src, dst, in_one_request=5 << 20, part=1 << 20)
    assert not objects.exists(dst)
    bucket = objects.parse_url(s3_bucket).bucket
    assert not objects.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads")

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


def test_unreachable_endpoint_fails_within_the_budget(s3_env: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_SECONDS", "5")
    objects.reset_clients()
    started = time.monotonic()
    with pytest.raises(StoreError, match="unreachable") as info:
        objects.read_bytes("s3://no-server-bucket/some/key")
    assert time.monotonic() - started < 5 + 1
    message = str(info.value)
    assert message.startswith("cannot read s3://no-server-bucket/some/key: ")
    assert "after 3 attempt(s)" in message and "FSDTRAIN_S3_RETRY_ATTEMPTS" in message
    assert "\n" not in message
    assert s3_env.secret_key not in message


def test_time_cap_ends_retries_before_the_attempts_run_out(s3_env: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "1000")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_SECONDS", "1.5")
    objects.reset_clients()
    started = time.monotonic()
    with pytest.raises(StoreError, match="unreachable") as info:
        objects.write_bytes("s3://no-server-bucket/k", b"x")
    assert time.monotonic() - started < 1.5 + 1
    assert "after 1000 attempt(s)" not in str(info.value)


def test_store_stopped_mid_way_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_SECONDS", "5")
    store = LocalStore(zones={"cn": "fleet-cn"})
    with store:
        for name in CONFLICTING_AWS_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in store.zone_env("cn").items():
            monkeypatch.setenv(name, value)
        objects.reset_clients()
        objects.write_bytes("s3://fleet-cn/clip.tar", PAYLOAD)
        assert objects.read_bytes("s3://fleet-cn/clip.tar") == PAYLOAD
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        objects.read_bytes("s3://fleet-cn/clip.tar")  # the cached client's pooled connection is dead now
    assert time.monotonic() - started < 5 + 1
    message = str(info.value)
    assert message.startswith("cannot read s3://fleet-cn/clip.tar (zone cn): the store at http://127.0.0.1:")
    assert "unreachable" in message and "\n" not in message
    assert store.zone_env("cn")["AWS_SECRET_ACCESS_KEY"] not in message
    objects.reset_clients()


# --- retries against a real HTTP server on loopback ------------------------------------------


class ScriptedS3(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers each request with the next (status, body, delay)
    of ``script`` (the last one repeats) and counts requests."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, bytes, float]]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script = script
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedS3

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path}")
            status, body, delay = self.server.script[min(len(self.server.requests), len(self.server.script)) - 1]
        time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test): nothing to answer

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


def _s3_error_xml(code: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>scripted</Message></Error>'.encode()


UNAVAILABLE = (503, _s3_error_xml("ServiceUnavailable"), 0.0)


@pytest.fixture
def scripted_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[tuple[int, bytes, float]]], ScriptedS3]]:
    """``scripted_s3(script)`` starts a :class:`ScriptedS3` and points the AWS variables at it."""
    servers: list[ScriptedS3] = []

    def start(script: list[tuple[int, bytes, float]]) -> ScriptedS3:
        server = ScriptedS3(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        for name in CONFLICTING_AWS_ENV:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FSDSCRIPTEDKEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "scripted-secret-0123456789")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("FSDTRAIN_BUCKET_ZONES", "fleet-cn=cn")
        objects.reset_clients()
        return server

    yield start
    objects.reset_clients()
    for server in servers:
        server.shutdown()
        server.server_close()


def test_5xx_is_retried_then_one_line_naming_bucket_and_key(
    scripted_s3: Callable[..., ScriptedS3], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "4")
    server = scripted_s3([UNAVAILABLE])
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        objects.read_bytes("s3://fleet-cn/v1/shard-000003.tar")
    assert time.monotonic() - started < 30
    assert server.requests == ["GET /fleet-cn/v1/shard-000003.tar"] * 4
    message = str(info.value)
    assert message.startswith("cannot read s3://fleet-cn/v1/shard-000003.tar (zone cn): the store at http://127.0.0.1:")
    assert "HTTP 503 (ServiceUnavailable) after 4 attempt(s)" in message
    assert "\n" not in message and "scripted-secret" not in message and "FSDSCRIPTEDKEY" not in message


@pytest.mark.parametrize(
    ("env", "profile_line", "tries"),
    [
        ({"AWS_MAX_ATTEMPTS": "2"}, "", 2),  # the standard variable sets the tries
        ({}, "max_attempts = 3", 3),  # so does the AWS config file's profile
        ({"AWS_MAX_ATTEMPTS": "2"}, "max_attempts = 3", 2),  # the variable wins over the file, as in botocore
        ({"AWS_MAX_ATTEMPTS": "2", "FSDTRAIN_S3_RETRY_ATTEMPTS": "3"}, "", 3),  # fsdtrain's own variable wins
    ],
)
def test_standard_max_attempts_sets_the_tries_which_botocore_never_multiplies(
    scripted_s3: Callable[..., ScriptedS3], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    env: dict[str, str], profile_line: str, tries: int,
) -> None:  # fmt: skip
    for name in ("AWS_MAX_ATTEMPTS", "FSDTRAIN_S3_RETRY_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\n{profile_line}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    server = scripted_s3([UNAVAILABLE])
    with pytest.raises(StoreError, match=rf"HTTP 503 \(ServiceUnavailable\) after {tries} attempt\(s\)"):
        objects.read_bytes("s3://bucket/key")
    assert len(server.requests) == tries  # one botocore attempt per try of ours


def test_adaptive_retry_mode_still_tries_once_per_attempt(scripted_s3: Callable[..., ScriptedS3], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "2")
    server = scripted_s3([(503, _s3_error_xml("SlowDown"), 0.0), (200, b"done", 0.0)])
    assert objects.s3_client().meta.config.retries == {"total_max_attempts": 1, "mode": "adaptive"}
    assert objects.read_bytes("s3://bucket/key") == b"done"
    assert len(server.requests) == 2


def test_5xx_then_success_returns_the_object(scripted_s3: Callable[..., ScriptedS3]) -> None:
    server = scripted_s3([UNAVAILABLE, (500, _s3_error_xml("InternalError"), 0.0), (200, b"finally", 0.0)])
    assert objects.read_bytes("s3://bucket/key") == b"finally"
    assert len(server.requests) == 3


def test_throttling_is_retried_for_writes(scripted_s3: Callable[..., ScriptedS3]) -> None:
    server = scripted_s3([(503, _s3_error_xml("SlowDown"), 0.0), (200, b"", 0.0)])
    objects.write_bytes("s3://bucket/key", b"payload")
    assert server.requests == ["PUT /bucket/key"] * 2


def test_access_denied_is_not_retried(scripted_s3: Callable[..., ScriptedS3]) -> None:
    server = scripted_s3([(403, _s3_error_xml("AccessDenied"), 0.0)])
    with pytest.raises(StoreError, match=r"^cannot read s3://fleet-cn/key \(zone cn\): access denied on bucket 'fleet-cn' of zone 'cn': .*; use a key of zone 'cn'$"):
        objects.read_bytes("s3://fleet-cn/key")
    assert len(server.requests) == 1


def test_a_server_that_never_answers_times_out_within_the_budget(
    scripted_s3: Callable[..., ScriptedS3], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSDTRAIN_S3_TIMEOUT", "0.3")
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "2")
    server = scripted_s3([(200, b"too late", 3.0)])
    started = time.monotonic()
    with pytest.raises(StoreError, match="did not answer in time after 2 attempt") as info:
        objects.read_bytes("s3://bucket/slow")
    assert time.monotonic() - started < 2 * 0.3 + 2
    assert len(server.requests) == 2
    assert "s3://bucket/slow" in str(info.value)


def test_a_store_that_ignores_the_range_still_gives_the_range(scripted_s3: Callable[..., ScriptedS3]) -> None:
    server = scripted_s3([(200, b"0123456789", 0.0)])  # a whole object where bytes 2-4 were asked for
    assert objects.read_bytes("s3://bucket/key", byte_range=(2, 5)) == b"234"
    assert len(server.requests) == 1


def test_an_error_without_an_xml_body_is_named_by_its_status(scripted_s3: Callable[..., ScriptedS3]) -> None:
    server = scripted_s3([(404, b"", 0.0)])
    with pytest.raises(ObjectMissing, match=r"^cannot read s3://bucket/gone: no such object$"):
        objects.read_bytes("s3://bucket/gone")
    assert len(server.requests) == 1  # not asked again through the client


def test_a_redirect_is_left_to_the_client(scripted_s3: Callable[..., ScriptedS3]) -> None:
    server = scripted_s3([(301, _s3_error_xml("PermanentRedirect"), 0.0), (200, b"through the client", 0.0)])
    assert objects.read_bytes("s3://bucket/key") == b"through the client"
    assert server.requests == ["GET /bucket/key"] * 2


# --- GETs signed without the client's call path ----------------------------------------------


def _client_gets() -> list[str]:
    """Names the S3 client's GetObject calls from now on (a GET signed by hand makes none)."""
    calls: list[str] = []
    objects.s3_client().meta.events.register("before-call.s3.GetObject", lambda params, **_: calls.append(params["url_path"]))
    return calls


@pytest.mark.parametrize("key", ["plain.tar", "dir/with space+plus~tilde=eq&amp.tar", "ünï/中文/%41.bin"])
def test_reads_are_signed_by_hand_and_return_the_stores_bytes(s3_bucket: str, key: str) -> None:
    url = f"{s3_bucket}/{key}"
    objects.write_bytes(url, PAYLOAD)
    calls = _client_gets()
    assert objects.read_bytes(url) == PAYLOAD
    assert objects.read_bytes(url, byte_range=(100, 5000)) == PAYLOAD[100:5000]
    with pytest.raises(ObjectMissing, match="no such object"):
        objects.read_bytes(f"{s3_bucket}/{key}.missing")
    assert calls == []  # every answer, the error included, came without the client
    body = objects.s3_client().get_object(Bucket=s3_bucket.removeprefix("s3://"), Key=key, Range="bytes=100-4999")["Body"].read()
    assert body == PAYLOAD[100:5000] and len(calls) == 1  # the same object as the client reads


def test_a_range_from_the_store_arrives_in_one_receive_call(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 << 20)
    objects.write_bytes(f"{s3_bucket}/big.bin", data)
    objects.reset_clients()  # the reads below open new connections, counted
    counter = counted_connections(monkeypatch)
    assert objects.read_bytes(f"{s3_bucket}/big.bin", byte_range=(1000, 3_000_000)) == data[1000:3_000_000]
    # the answer's headers, then the rest of its 3 MB at once (the GIL given up once, not per 64 KB)
    assert 1 <= counter.calls <= 3, counter.calls


def test_through_a_proxy_reads_take_botocores_session(scripted_s3: Callable[..., ScriptedS3], monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = scripted_s3([(200, b"through the proxy", 0.0)])
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://store.invalid:8333")
    objects.reset_clients()
    assert objects.read_bytes("s3://bucket/key", byte_range=(0, 100)) == b"through the proxy"
    assert proxy.requests == ["GET http://store.invalid:8333/bucket/key"]  # a proxy's request line: the whole URL


def test_adaptive_retry_mode_reads_through_the_client(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects.write_bytes(f"{s3_bucket}/k", PAYLOAD)
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")  # its rate limiter is in the client's call path
    objects.reset_clients()
    calls = _client_gets()
    assert objects.read_bytes(f"{s3_bucket}/k", byte_range=(0, 10)) == PAYLOAD[:10]
    assert len(calls) == 1


# --- bucket zones ----------------------------------------------------------------------------


def test_bucket_zones_registry() -> None:
    env = {"FSDTRAIN_BUCKET_ZONES": "fleet-global=global, fleet-cn=cn"}
    assert objects.bucket_zones(env) == {"fleet-global": "global", "fleet-cn": "cn"}
    assert objects.bucket_zones({}) == {}
    assert objects.format_bucket_zones(objects.bucket_zones(env)) == "fleet-global=global,fleet-cn=cn"
    with pytest.raises(ConfigError, match="not bucket=zone"):
        objects.bucket_zones({"FSDTRAIN_BUCKET_ZONES": "fleet-cn"})
    with pytest.raises(ConfigError, match="not a zone name"):
        objects.bucket_zones({"FSDTRAIN_BUCKET_ZONES": "fleet-cn=China"})


def test_zone_key_reads_writes_lists_and_deletes_its_bucket(use_zone_key: Callable[[str], dict[str, str]]) -> None:
    use_zone_key("cn")
    url = f"s3://fleet-cn/own/{time.monotonic_ns()}.bin"
    objects.ensure_bucket(url)  # exists already: a zone key may check its own bucket
    objects.write_bytes(url, PAYLOAD)
    assert objects.read_bytes(url) == PAYLOAD
    assert objects.read_bytes(url, byte_range=(10, 20)) == PAYLOAD[10:20]
    assert url in list(objects.list_keys("s3://fleet-cn/own"))
    assert objects.exists(url)
    objects.delete(url)
    assert not objects.exists(url)


def _denied_calls(url: str) -> dict[str, Callable[[], object]]:
    return {
        "read": lambda: objects.read_bytes(url),
        "write": lambda: objects.write_bytes(url, b"x"),
        "list": lambda: list(objects.list_keys(url.rsplit("/", 1)[0])),
        "check": lambda: objects.exists(url),
        "delete": lambda: objects.delete(url),
    }


@pytest.mark.parametrize("action", ["read", "write", "list", "check", "delete"])
@pytest.mark.parametrize("zone", ["global", "us"])
def test_other_zone_key_is_denied_on_the_cn_bucket(
    use_zone_key: Callable[[str], dict[str, str]], s3_env: LocalStore, zone: str, action: str
) -> None:
    objects.write_bytes("s3://fleet-cn/denied/clip.tar", PAYLOAD)  # with the admin key
    use_zone_key(zone)
    with pytest.raises(StoreError) as info:
        _denied_calls("s3://fleet-cn/denied/clip.tar")[action]()
    message = str(info.value)
    assert message.startswith(f"cannot {action} s3://fleet-cn/denied") and "(zone cn)" in message
    assert "bucket 'fleet-cn' of zone 'cn'" in message and "use a key of zone 'cn'" in message
    assert "\n" not in message
    if action != "check":  # HEAD answers carry no error code
        assert "access denied" in message


def test_wrong_secret_names_bucket_and_zone(use_zone_key: Callable[[str], dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    env = use_zone_key("cn")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + env["AWS_SECRET_ACCESS_KEY"][6:])
    objects.reset_clients()
    with pytest.raises(StoreError) as info:
        objects.read_bytes("s3://fleet-cn/any")
    assert str(info.value) == (
        "cannot read s3://fleet-cn/any (zone cn): the store rejected the credentials (SignatureDoesNotMatch: "
        "wrong secret key); check AWS_SECRET_ACCESS_KEY for the key of zone 'cn'"
    )


def test_unknown_access_key_names_bucket_and_zone(s3_env: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FSDNOSUCHKEY")
    objects.reset_clients()
    with pytest.raises(StoreError, match=r"^cannot write s3://fleet-global/x \(zone global\): .*InvalidAccessKeyId"):
        objects.write_bytes("s3://fleet-global/x", b"x")


@pytest.mark.parametrize("drop", [("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_SECRET_ACCESS_KEY",)])
def test_missing_credentials_name_bucket_and_zone(
    s3_env: LocalStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, drop: tuple[str, ...]
) -> None:
    # No other source of keys either: no shared files, no instance metadata (env() disables it).
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in drop:
        monkeypatch.delenv(name)
    objects.reset_clients()
    with pytest.raises(StoreError) as info:
        objects.read_bytes("s3://fleet-cn/clip.tar")
    message = str(info.value)
    assert message.startswith("cannot read s3://fleet-cn/clip.tar (zone cn): ")
    assert "credentials" in message and "zone 'cn'" in message and "\n" not in message


def test_no_credential_ever_reaches_a_message_or_log(
    use_zone_key: Callable[[str], dict[str, str]],
    s3_env: LocalStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fsdtrain")
    secrets = [s3_env.secret_key] + [s3_env.zone_env(z)["AWS_SECRET_ACCESS_KEY"] for z in s3_env.zones]
    key_ids = [s3_env.access_key] + [s3_env.zone_env(z)["AWS_ACCESS_KEY_ID"] for z in s3_env.zones]
    messages = []
    use_zone_key("global")
    for call in _denied_calls("s3://fleet-cn/secret-test/x").values():
        with pytest.raises(StoreError) as info:
            call()
        messages.append(str(info.value))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + secrets[1])
    objects.reset_clients()
    with pytest.raises(StoreError) as info:
        objects.read_bytes("s3://fleet-global/x")
    messages.append(str(info.value))
    # The retry path logs too: an unreachable endpoint with a zone key.
    monkeypatch.setenv("FSDTRAIN_S3_RETRY_ATTEMPTS", "3")
    use_zone_key("cn")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    objects.reset_clients()
    with pytest.raises(StoreError) as info:
        objects.read_bytes("s3://fleet-cn/x")
    messages.append(str(info.value))
    assert any("retrying" in r.getMessage() for r in caplog.records)

    weed_log = s3_env.log_path.read_text(errors="replace") if s3_env.log_path else ""
    texts = {"messages": "\n".join(messages), "fsdtrain log": caplog.text, "weed log": weed_log}
    for where, text in texts.items():
        for credential in secrets + key_ids:
            assert credential not in text, f"a credential appears in the {where}"
    assert len(messages) == 7


def test_missing_bucket_is_store_error(s3_env: LocalStore) -> None:
    with pytest.raises(StoreError, match="does-not-exist-bucket"):
        objects.read_bytes("s3://does-not-exist-bucket/key")


def in_a_forked_child(check: Callable[[], bool]) -> bool:
    """``check()`` run in a forked child (as in a loader worker); its answer, or False if it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_a_forked_reader_of_its_parents_buckets_makes_no_client(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects.write_bytes(f"{s3_bucket}/a", b"from the parent")
    assert objects.read_bytes(f"{s3_bucket}/a") == b"from the parent"  # the parent's GETs know the bucket's URL
    made: list[int] = []
    new_client = objects._new_client
    monkeypatch.setattr(objects, "_new_client", lambda *args, **kwargs: made.append(os.getpid()) or new_client(*args, **kwargs))

    def child() -> bool:  # a loader worker: reads over connections of its own, with the parent's endpoint and bucket URLs
        fine = objects.read_bytes(f"{s3_bucket}/a", byte_range=(5, 8)) == b"the" and made == []
        objects.write_bytes(f"{s3_bucket}/b", b"written by the child")  # a write is a client call: one is made
        return fine and made == [os.getpid()] and objects.read_bytes(f"{s3_bucket}/b") == b"written by the child"

    assert in_a_forked_child(child)
    assert made == []  # nor did the parent make another


def test_ensure_bucket_is_idempotent(s3_bucket: str) -> None:
    objects.ensure_bucket(s3_bucket)
    objects.ensure_bucket(objects.join_url(s3_bucket, "some/prefix"))
    objects.write_bytes(objects.join_url(s3_bucket, "k"), b"v")
    assert objects.read_bytes(objects.join_url(s3_bucket, "k")) == b"v"


def test_a_forked_worker_makes_its_own_client_from_the_session_its_parent_kept(s3_bucket: str) -> None:
    objects.write_bytes(f"{s3_bucket}/a", b"from the parent")
    parent = objects.s3_client()
    kept = objects._sessions[None]

    def child() -> bool:  # a loader worker: a new client (sockets are not shared), the inherited session
        return objects.s3_client() is not parent and objects._sessions[None] is kept and objects.read_bytes(f"{s3_bucket}/a") == b"from the parent"

    assert in_a_forked_child(child)
    objects.reset_clients()  # after a change of environment, the session is made again
    assert None not in objects._sessions and objects.read_bytes(f"{s3_bucket}/a") == b"from the parent"
    assert objects._sessions[None] is not kept
