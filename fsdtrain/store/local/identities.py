"""Who may do what in the local store: S3 key pairs, per-zone buckets, SeaweedFS identities, and the
keys that close weed's other ports.

docs/residency.md: the object store enforces residency too, because each zone's bucket has its own
credentials. A :class:`~fsdtrain.store.local.seaweed.LocalStore` given ``zones={"global": "fleet-global",
"cn": "fleet-cn"}`` runs with one admin identity (every action on every bucket) and one identity per
zone whose actions are scoped to that zone's bucket alone::

    {"name": "zone-cn", "credentials": [...], "actions": ["Read:fleet-cn", "Write:fleet-cn", "List:fleet-cn"]}

so the ``cn`` key reads, writes and lists ``fleet-cn`` and gets AccessDenied everywhere else.

Those identities guard the S3 port only. ``weed mini`` opens master, volume, filer and admin ports
as well, which by default serve every bucket to anyone on the host. :func:`security_toml` closes
them with SeaweedFS's own settings, fresh for every start: JWT signing keys for reads and writes on
the volume and filer HTTP ports, mutual TLS on every gRPC port and on the master's and volume
server's HTTP ports (a CA made by :func:`make_tls_files` that signs one certificate, after which its
key is deleted), and a random password on the admin server. Only the weed process holds these
secrets: they live in the store's private runtime directory (mode 0700, files 0600) and are never
printed or logged (docs/store.md, "Who can reach the data").
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fsdtrain.errors import ConfigError, StoreError
from fsdtrain.residency import validate_zone

__all__ = [
    "Credentials",
    "TlsFiles",
    "ZONE_ACTIONS",
    "identities_json",
    "make_tls_files",
    "parse_zones",
    "security_toml",
    "validate_bucket",
    "validate_zones",
]

ZONE_ACTIONS: tuple[str, ...] = ("Read", "Write", "List")
"""SeaweedFS actions a zone key holds, each scoped to its bucket (``Read:fleet-cn``)."""
_ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
_RESERVED_ZONE = "admin"
# S3 bucket naming rules (the subset every S3 implementation accepts): 3-63 characters, lower-case
# letters, digits, '-' and '.', starting and ending with a letter or digit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Every gRPC server and client section weed reads from security.toml; one certificate serves all.
_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")
# The certificates are made anew at every start, so their lifetime only needs to outlast one run.
_CERT_DAYS = 3650
# How long a JWT minted by weed for one volume or filer request stays valid (weed's default).
_JWT_SECONDS = 10


@dataclass(frozen=True)
class Credentials:
    """One S3 key pair. The secret is left out of ``repr``, so it never reaches a log by accident."""

    access_key: str
    """The access key id (``AWS_ACCESS_KEY_ID``)."""
    secret_key: str = field(repr=False)
    """The secret key (``AWS_SECRET_ACCESS_KEY``)."""

    @classmethod
    def random(cls) -> Credentials:
        """A fresh random pair: a 19-character access key id and a 40-hex-digit secret."""
        return cls(access_key="FSD" + secrets.token_hex(8).upper(), secret_key=secrets.token_hex(20))


def validate_bucket(name: str, what: str = "bucket") -> str:
    """Returns ``name`` when it is a valid S3 bucket name, else raises ConfigError saying the rule."""
    if not isinstance(name, str) or not _BUCKET_RE.match(name) or ".." in name:
        raise ConfigError(
            f"{what} {name!r} is not an S3 bucket name: use 3-63 lower-case letters, digits, '-' or '.', "
            "starting and ending with a letter or digit, e.g. 'fleet-cn'"
        )
    return name


def validate_zones(zones: Mapping[str, str]) -> dict[str, str]:
    """Checks a zone -> bucket mapping: valid zone and bucket names (no zone ``admin``: its profile
    would be the admin key's), one bucket per zone."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for zone, bucket in zones.items():
        validate_zone(zone, "zone")
        if zone == _RESERVED_ZONE:  # `store serve` names profiles fsdtrain-<zone>, and fsdtrain-admin is the admin key's
            raise ConfigError(f"zone name '{zone}' is reserved for the store's admin key (profile fsdtrain-admin); choose another")
        validate_bucket(bucket, f"bucket of zone '{zone}'")
        if bucket in owner:
            raise ConfigError(
                f"zones '{owner[bucket]}' and '{zone}' both use bucket '{bucket}': each zone needs its own bucket"
            )
        owner[bucket] = zone
        out[zone] = bucket
    return out


def parse_zones(text: str) -> dict[str, str]:
    """``"global=fleet-global,cn=fleet-cn"`` -> ``{"global": "fleet-global", "cn": "fleet-cn"}``.

    Raises:
        ConfigError: an entry is not ``zone=bucket``, a name is invalid, or a zone or bucket repeats.
    """
    zones: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        zone, sep, bucket = (s.strip() for s in item.partition("="))
        if not sep or not zone or not bucket:
            raise ConfigError(f"--zones entry {item!r} is not zone=bucket; write e.g. --zones global=fleet-global,cn=fleet-cn")
        if zone in zones:
            raise ConfigError(f"--zones names zone '{zone}' twice; give each zone one bucket")
        zones[zone] = bucket
    if not zones:
        raise ConfigError(f"--zones {text!r} names no zone; write e.g. --zones global=fleet-global,cn=fleet-cn")
    return validate_zones(zones)


def identities_json(admin: Credentials, zone_keys: Mapping[str, tuple[str, Credentials]]) -> str:
    """SeaweedFS ``-s3.config`` JSON: the admin identity, then one identity per zone.

    Args:
        admin: the key pair with every action on every bucket (creates the zone buckets).
        zone_keys: zone -> (its bucket, its key pair); the pair may only read, write and list that bucket.
    """

    def identity(name: str, creds: Credentials, actions: list[str]) -> dict:
        return {"name": name, "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}], "actions": actions}

    identities = [identity("fsdtrain-admin", admin, list(_ADMIN_ACTIONS))]
    for zone, (bucket, creds) in zone_keys.items():
        identities.append(identity(f"zone-{zone}", creds, [f"{action}:{bucket}" for action in ZONE_ACTIONS]))
    return json.dumps({"identities": identities}, indent=2)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for weed's mutual TLS: the CA every side trusts and the one key pair all present."""

    ca: Path
    """The CA certificate (its key is deleted once it has signed :attr:`cert`)."""
    cert: Path
    """The certificate of every weed server and client, signed by :attr:`ca`, for 127.0.0.1."""
    key: Path
    """Its private key (mode 0600)."""


def _openssl(openssl: str, args: list[str], cwd: Path) -> None:
    """Runs one openssl command in ``cwd`` with files private to the owner (umask 077)."""
    result = subprocess.run(
        [openssl, *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, umask=0o077
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()] or ["no output"]
        raise StoreError(
            f"cannot make the local store's TLS certificates: `openssl {args[0]}` failed "
            f"({lines[-1].strip()}); check that `openssl version` works"
        )


def make_tls_files(directory: Path) -> TlsFiles:
    """Makes a fresh CA and one certificate for 127.0.0.1 it signs, in ``directory`` (which should be
    private: mode 0700); deletes the CA key, so no other certificate can ever be signed.

    Raises:
        StoreError: the ``openssl`` command is missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StoreError(
            "the local store needs the `openssl` command to make its TLS certificates and none is on PATH: "
            "install it (e.g. `apt install openssl`)"
        )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days = ["-days", str(_CERT_DAYS)]
    ext = directory / "node.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    ca_args = ["-subj", "/CN=fsdtrain local store CA", "-addext", "basicConstraints=critical,CA:TRUE"]
    ca_args += ["-addext", "keyUsage=critical,keyCertSign"]
    ca_args += ["-keyout", "ca.key", "-out", "ca.crt"]
    _openssl(openssl, ["req", "-x509", *ec, *days, *ca_args], directory)
    node_args = ["-subj", "/CN=fsdtrain-weed", "-keyout", "node.key", "-out", "node.csr"]
    _openssl(openssl, ["req", "-new", *ec, *node_args], directory)
    sign_args = ["-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-extfile", ext.name]
    sign_args += ["-set_serial", str(secrets.randbits(63)), "-out", "node.crt"]
    _openssl(openssl, ["x509", "-req", *sign_args, *days], directory)
    for name in ("ca.key", "node.csr", ext.name):
        os.unlink(directory / name)
    return TlsFiles(ca=directory / "ca.crt", cert=directory / "node.crt", key=directory / "node.key")


def security_toml(tls: TlsFiles, admin_password: str | None = None) -> str:
    """weed's ``security.toml`` with fresh random signing keys, read by every component of ``weed mini``.

    - ``[jwt.signing]`` and ``[jwt.signing.read]``: the volume server serves and takes a needle only
      with a JWT the master minted (for the S3 gateway and filer, over mutual-TLS gRPC);
    - ``[jwt.filer_signing]`` and ``.read``: the same for the filer HTTP port;
    - ``[grpc.*]``: every gRPC server demands a client certificate signed by ``tls.ca``;
    - ``[https.master]``, ``[https.volume]``: the same on the master's and the volume server's HTTP
      ports (the master's otherwise mints JWTs for anyone), and ``[https.client]`` makes weed's own
      components use HTTPS with that certificate when they call them;
    - ``[access] ui = false``, ``[filer.expose_directory_metadata] enabled = false``: no status pages
      or directory listings without a key;
    - ``[admin]``: a random password on the admin server (``admin_password``, or a fresh one).

    ``[guard] white_list`` is left out: every client is on 127.0.0.1, so an address list cannot tell
    the owner from another user of the host, and weed 4.48 denies its own in-process gRPC calls with it.
    """

    def key() -> str:
        return secrets.token_hex(32)

    def section(name: str, **values: str | int | bool) -> str:
        # json.dumps writes a valid TOML basic string (and TOML's true/false and integers).
        return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    pem = {"cert": str(tls.cert), "key": str(tls.key)}
    parts = [
        "# Written by fsdtrain for one run of its local store; private to its owner (0600). Never copy it.\n",
        section("jwt.signing", key=key(), expires_after_seconds=_JWT_SECONDS),
        section("jwt.signing.read", key=key(), expires_after_seconds=_JWT_SECONDS),
        section("jwt.filer_signing", key=key(), expires_after_seconds=_JWT_SECONDS),
        section("jwt.filer_signing.read", key=key(), expires_after_seconds=_JWT_SECONDS),
        section("access", ui=False),
        section("filer.expose_directory_metadata", enabled=False),
        section("grpc", ca=str(tls.ca)),
        *(section(f"grpc.{component}", **pem) for component in _GRPC_COMPONENTS),
        section("grpc.client", **pem),
        # HTTPS with client certificates where weed itself is the only client: the master's HTTP
        # API mints JWTs for anyone who asks, and the volume server's status page lists buckets.
        section("https.master", **pem, ca=str(tls.ca)),
        section("https.volume", **pem, ca=str(tls.ca)),
        section("https.client", enabled=True, **pem, ca=str(tls.ca)),
        section("admin", user="fsdtrain-admin", password=admin_password or key()),
    ]
    return "\n".join(parts)
