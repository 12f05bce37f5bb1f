"""The local store enforces keys on every port it opens (issue 16, item 1).

``weed mini`` opens master, volume, filer, S3 and admin ports, HTTP and gRPC. These tests find every
TCP port the weed process group listens on (from ``/proc``, not from what LocalStore says it asked
for), and try each without a key the way a stranger on the same host would: filer paths
(``/buckets/fleet-cn/...``), the volume server's real file ids (read from the volume's own index
on disk), the master's JWT-minting and collection-deleting calls, WebDAV methods, and a gRPC
handshake in plain text and over TLS without a client certificate. Every try must be refused; the
S3 port must serve the ``cn`` bucket to the ``cn`` key and refuse the ``global`` key; the data
directory must be private to its owner.

The store here is the tests' own (not the session ``local_store``): the probes try to delete and
overwrite, and on a store that lets them, they would destroy other tests' data.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from botocore.exceptions import ClientError

from fsdtrain.store.local.seaweed import LocalStore
from helpers.local_store import pids_where, store_client

ZONES = {"global": "fleet-global", "cn": "fleet-cn"}
CN_KEY = "v1/train/CN/shard-000000.tar"
CN_BYTES = b"CN clip bytes that must stay in zone cn. " * 2000
_LOOPBACK = "127.0.0.1"
# A status that says the server did not serve or accept the request.
_REFUSED_STATUS = {400, 401, 403, 404, 405}
# The HTTP/2 client preface plus an empty SETTINGS frame: a plain-text gRPC server answers with a
# SETTINGS frame of its own (frame type 4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    """A store of its own, with a CN object written by the admin key."""
    with LocalStore(tmp_path_factory.mktemp("ports") / "store", zones=ZONES) as store:
        store_client(store).put_object(Bucket="fleet-cn", Key=CN_KEY, Body=CN_BYTES)
        yield store


# --- what the weed processes listen on ---------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _hex_address(text: str) -> str:
    """``/proc/net/tcp``'s address (little-endian 32-bit words) as dotted IPv4 or hex IPv6."""
    raw = bytes.fromhex(text)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _listening(store: LocalStore) -> dict[int, str]:
    """Every TCP port the store's process group listens on -> the address it is bound to."""
    assert store.pid is not None
    inodes = set().union(*(_socket_inodes(pid) for pid in pids_where(group=store.pid)))
    ports: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[9]) in inodes:  # 0A: LISTEN
                address, port = cols[1].split(":")
                ports[int(port, 16)] = _hex_address(address)
    return ports


# --- file ids, straight from the volume's index ------------------------------------------------


def _fids(data_dir: Path, bucket: str) -> list[str]:
    """The file ids (``vid,keycookie``) of every needle in ``bucket``'s volumes: what a client that
    learnt them would ask the volume server for. weed 4.48 "8000GB" indexes with 17-byte entries:
    needle id (8), offset / 8 (5: four big-endian low bytes, then the high byte), size (4)."""
    fids = []
    for idx in sorted(data_dir.glob(f"{bucket}_*.idx")):
        vid = int(idx.stem.rsplit("_", 1)[1])
        raw = idx.read_bytes()
        assert len(raw) % 17 == 0, f"{idx}: not 17-byte index entries"
        with open(idx.with_suffix(".dat"), "rb") as dat:
            for i in range(0, len(raw), 17):
                key = int.from_bytes(raw[i : i + 8], "big")
                offset = ((raw[i + 12] << 32) | int.from_bytes(raw[i + 8 : i + 12], "big")) * 8
                dat.seek(offset)
                header = dat.read(12)
                cookie, needle_id = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")
                assert needle_id == key, f"{idx}: entry {i // 17} does not point at its needle"
                key_hex = key.to_bytes(8, "big").lstrip(b"\0").hex()
                fids.append(f"{vid},{key_hex}{cookie:08x}")
    return fids


# --- probes ------------------------------------------------------------------------------------


def _http(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int | None, bytes, str]:
    """(status, body, Authorization header) of one plain HTTP request; status None when the port
    closed or reset the connection (a gRPC or TLS port)."""
    conn = http.client.HTTPConnection(_LOOPBACK, port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Authorization") or ""
    except (OSError, http.client.HTTPException):
        return None, b"", ""
    finally:
        conn.close()


def _speaks_plain_grpc(port: int) -> bool:
    """Whether the port answers an HTTP/2 preface in plain text (as an open gRPC server does)."""
    with socket.create_connection((_LOOPBACK, port), timeout=5) as sock:
        try:
            sock.sendall(_H2_PREFACE)
            frame = sock.recv(9)
        except OSError:
            return False
    return len(frame) == 9 and frame[3] == 4


def _speaks_tls_without_a_certificate(port: int) -> bool:
    """Whether the port completes a TLS handshake and an HTTP/2 exchange with a client that shows
    no certificate (as a gRPC server with TLS but without client authentication does)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=5) as raw:
            with context.wrap_socket(raw) as sock:
                sock.sendall(_H2_PREFACE)
                frame = sock.recv(9)
    except (OSError, ssl.SSLError):
        return False
    return len(frame) == 9 and frame[3] == 4


def _probes(fids: list[str]) -> list[tuple[str, str, bytes | None]]:
    """(method, path, body) of every keyless request tried on every port."""
    cn = f"/buckets/fleet-cn/{CN_KEY}"
    new = "/buckets/fleet-cn/v1/train/CN/planted.tar"
    probes: list[tuple[str, str, bytes | None]] = [
        # filer HTTP (and WebDAV, which serves the same tree)
        ("GET", cn, None),
        ("GET", cn + "?metadata=true", None),
        ("GET", "/buckets/fleet-cn/", None),
        ("HEAD", cn, None),
        ("PUT", new, b"planted"),
        ("POST", new, b"planted"),
        ("DELETE", cn, None),
        ("PROPFIND", "/buckets/fleet-cn/", None),
        ("MOVE", cn, None),
        # master: minting JWTs, dropping a bucket's collection, growing volumes
        ("GET", "/dir/assign?collection=fleet-cn", None),
        ("POST", "/dir/assign?collection=fleet-cn", None),
        ("GET", "/col/delete?collection=fleet-cn", None),
        ("GET", "/vol/grow?collection=fleet-cn&count=1", None),
        ("POST", "/submit?collection=fleet-cn", b"planted"),
    ]
    for fid in fids:
        vid = fid.split(",")[0]
        probes += [
            ("GET", f"/dir/lookup?fileId={fid}", None),
            ("GET", f"/dir/lookup?volumeId={vid}", None),
            # volume server: the needle itself
            ("GET", f"/{fid}", None),
            ("GET", f"/{vid}/{fid.split(',')[1]}", None),
            ("HEAD", f"/{fid}", None),
            ("PUT", f"/{fid}", b"planted"),
            ("POST", f"/{fid}", b"planted"),
            ("DELETE", f"/{fid}", None),
        ]
    return probes


# --- tests -------------------------------------------------------------------------------------


def test_every_port_is_on_loopback_and_known(store: LocalStore) -> None:
    listening = _listening(store)
    assert listening, "found no listening socket of the weed process group"
    assert set(listening.values()) == {_LOOPBACK}, listening
    assert sorted(listening) == sorted(store.ports.values())
    assert store.ports["s3.port"] == store.port
    # No WebDAV, Iceberg, Lance, metrics or debug port: master, volume, filer, S3, admin and their gRPC.
    assert sorted(store.ports) == sorted(
        f"{name}.port{grpc}"
        for name in ("master", "volume", "filer", "s3", "admin")
        for grpc in ("", ".grpc")
    )


def test_no_port_serves_or_takes_data_without_a_key(store: LocalStore) -> None:
    assert store.data_dir is not None
    fids = _fids(store.data_dir, "fleet-cn")
    assert fids, "the CN object left no needle in a fleet-cn volume"
    others = sorted(port for port in _listening(store) if port != store.port)
    assert len(others) >= 8  # master, volume, filer, admin: HTTP and gRPC each
    served = []
    for port in others:
        for method, path, body in _probes(fids):
            status, content, auth = _http(port, method, path, body)
            if status not in (None, *_REFUSED_STATUS) or CN_BYTES[:64] in content or auth:
                served.append(f"{method} :{port}{path} -> {status} {content[:60]!r} {auth[:12]}")
    assert not served, "\n".join(served)
    # Nothing was deleted, overwritten or planted.
    admin = store_client(store)
    assert admin.get_object(Bucket="fleet-cn", Key=CN_KEY)["Body"].read() == CN_BYTES
    keys = [o["Key"] for o in admin.list_objects_v2(Bucket="fleet-cn").get("Contents", [])]
    assert keys == [CN_KEY]


def test_no_port_speaks_grpc_without_a_client_certificate(store: LocalStore) -> None:
    ports = sorted(_listening(store))
    assert [p for p in ports if _speaks_plain_grpc(p)] == []
    assert [p for p in ports if _speaks_tls_without_a_certificate(p)] == []


def test_s3_serves_the_cn_bucket_to_the_cn_key_only(store: LocalStore) -> None:
    store_client(store).put_object(Bucket="fleet-cn", Key=CN_KEY, Body=CN_BYTES)  # whatever the probes did
    cn, glob = store_client(store, zone="cn"), store_client(store, zone="global")
    assert cn.get_object(Bucket="fleet-cn", Key=CN_KEY)["Body"].read() == CN_BYTES
    for call in (
        lambda: glob.get_object(Bucket="fleet-cn", Key=CN_KEY),
        lambda: glob.list_objects_v2(Bucket="fleet-cn"),
        lambda: glob.put_object(Bucket="fleet-cn", Key="v1/planted", Body=b"x"),
        lambda: glob.delete_object(Bucket="fleet-cn", Key=CN_KEY),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    # Unsigned requests on the S3 port itself.
    for method, body in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
        status, content, _ = _http(store.port, method, f"/fleet-cn/{CN_KEY}", body)
        assert status == 403 and CN_BYTES[:64] not in content, (method, status)
    assert store_client(store).get_object(Bucket="fleet-cn", Key=CN_KEY)["Body"].read() == CN_BYTES


def test_data_files_are_private_to_the_owner(store: LocalStore) -> None:
    data_dir = store.data_dir
    assert data_dir is not None
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    exposed = []
    for path in data_dir.rglob("*"):
        mode = path.lstat().st_mode
        # weed writes its small volume-info files (.vif: version, replication; no data) with mode
        # 0644 whatever the umask; the 0700 directory keeps them from others too.
        if path.suffix != ".vif" and not stat.S_ISLNK(mode) and mode & 0o077:
            exposed.append(f"{path.relative_to(data_dir)} {stat.filemode(mode)}")
    assert exposed == []
    assert list(data_dir.glob("fleet-cn_*.dat")), "no CN volume file to check"


def test_weed_secrets_stay_in_a_private_file(store: LocalStore) -> None:
    assert store.pid is not None and store.log_path is not None
    cmdline = Path(f"/proc/{store.pid}/cmdline").read_bytes().decode().split("\0")
    (config_dir,) = [Path(arg.split("=", 1)[1]) for arg in cmdline if arg.startswith("-config_dir=")]
    security = config_dir / "security.toml"
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(security.stat().st_mode) == 0o600
    config = tomllib.loads(security.read_text())
    jwt = config["jwt"]
    secrets = [
        jwt["signing"]["key"],
        jwt["signing"]["read"]["key"],
        jwt["filer_signing"]["key"],
        jwt["filer_signing"]["read"]["key"],
        config["admin"]["password"],
    ]
    assert all(len(s) >= 32 for s in secrets) and len(set(secrets)) == len(secrets)
    tls_key = Path(config["grpc"]["client"]["key"])
    assert tls_key.parent.parent == config_dir and stat.S_IMODE(tls_key.stat().st_mode) == 0o600
    assert not list(tls_key.parent.glob("ca.key")), "the CA key outlived the signing"
    # Never on the command line, in weed's environment or its log.
    environ = Path(f"/proc/{store.pid}/environ").read_bytes().decode(errors="replace")
    log = store.log_path.read_text(errors="replace")
    pem = re.sub(r"-----[A-Z ]+-----|\s", "", tls_key.read_text())
    for secret in (*secrets, pem[:40]):
        assert secret not in " ".join(cmdline) and secret not in environ and secret not in log
