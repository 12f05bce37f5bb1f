"""Object access for ``s3://bucket/key`` and ``file:///path`` URLs (a plain path means file://).

S3 settings come from the standard AWS variables and profiles (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_CONFIG_FILE``), so the same
job runs against SeaweedFS, AWS S3, Aliyun OSS, Tencent COS or MinIO. How the client talks to the
store (addressing style, checksum behaviour, retry mode and attempts) comes from
:func:`fsdtrain.store.settings.s3_settings`: the AWS config file's profile and the ``AWS_*``
variables, with defaults that suit both AWS and S3-compatible stores (docs/stores.md). One client per process is
reused (its connection pool too). Connection errors, timeouts, 5xx and throttling answers are
retried with backoff within the budget of :class:`~fsdtrain.store.retry.RetryPolicy`
(``FSDTRAIN_S3_RETRY_ATTEMPTS`` or ``AWS_MAX_ATTEMPTS``, ``FSDTRAIN_S3_RETRY_SECONDS``,
``FSDTRAIN_S3_TIMEOUT``), then surface as a one-line :class:`~fsdtrain.errors.StoreError` naming
bucket and key.

Buckets can be tied to residency zones with ``FSDTRAIN_BUCKET_ZONES="fleet-global=global,fleet-cn=cn"``
(``LocalStore.env()`` sets it); errors on such a bucket name its zone, so "access denied" says
which zone's key is needed. Credentials never appear in messages or logs: messages are built from
error codes, and the key values in the environment are masked in whatever text is quoted.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

from fsdtrain.errors import ConfigError, ObjectMissing, StoreError
from fsdtrain.residency import validate_zone
from fsdtrain.store.retry import (
    RETRY_ATTEMPTS_ENV,
    RETRY_SECONDS_ENV,
    TIMEOUT_ENV,
    RetriesExhausted,
    call_with_retries,
)
from fsdtrain.store.settings import S3Settings, s3_settings, safe_url, session
from fsdtrain.store.signed_get import SignedGets

log = logging.getLogger(__name__)

__all__ = [
    "BUCKET_ZONES_ENV",
    "ObjectUrl",
    "s3_client",
    "error_code",
    "parse_url",
    "join_url",
    "bucket_zones",
    "format_bucket_zones",
    "read_bytes",
    "write_bytes",
    "exists",
    "list_keys",
    "delete",
    "ensure_bucket",
    "reset_clients",
]

BUCKET_ZONES_ENV = "FSDTRAIN_BUCKET_ZONES"
"""``bucket=zone,bucket=zone``: which residency zone each bucket belongs to, for error messages."""

_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_NO_BUCKET = ("NoSuchBucket",)
_DENIED = ("AccessDenied", "AllAccessDisabled", "AccountProblem")
_FORBIDDEN = ("403", "Forbidden")  # a HEAD answer has no body, so no code: denied or bad credentials
_BAD_SECRET = ("SignatureDoesNotMatch",)
_BAD_KEY_ID = ("InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "TokenRefreshRequired")
_THROTTLED = ("SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException", "RequestTimeout")
_BUCKET_EXISTS = ("BucketAlreadyOwnedByYou",)
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectUrl:
    """A parsed object URL: ``scheme`` is ``s3`` or ``file``; for file, ``bucket`` is empty and ``key`` the path."""

    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"
        return f"file://{self.key}"


def parse_url(url: str) -> ObjectUrl:
    """Parses ``s3://bucket/key``, ``file:///abs/path`` or a plain path; anything else is a StoreError."""
    if not isinstance(url, str) or not url:
        raise StoreError(f"empty object URL {url!r}: use s3://bucket/prefix or file:///path")
    if "://" not in url:
        return ObjectUrl("file", "", str(Path(url).expanduser().resolve()))
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"bad URL {url}: file URLs look like file:///absolute/path")
        return ObjectUrl("file", "", str(Path(unquote(parsed.path)).resolve()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"bad URL {url}: s3 URLs look like s3://bucket/prefix")
        return ObjectUrl("s3", parsed.netloc, parsed.path.lstrip("/"))
    raise StoreError(f"unsupported URL scheme '{parsed.scheme}' in {url}: use s3://bucket/prefix or file:///path")


def join_url(base: str, *parts: str) -> str:
    """Appends path parts to an object URL: ``join_url("s3://b/x", "y.tar") == "s3://b/x/y.tar"``."""
    u = parse_url(base)
    key = "/".join([u.key.rstrip("/")] + [p.strip("/") for p in parts if p])
    if u.scheme == "s3":
        key = key.lstrip("/")
    return str(ObjectUrl(u.scheme, u.bucket, key))


# --- bucket zones --------------------------------------------------------------------------------


def bucket_zones(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Bucket -> residency zone, from ``FSDTRAIN_BUCKET_ZONES`` (empty when unset).

    Raises:
        ConfigError: the variable is not a comma-separated list of ``bucket=zone``.
    """
    env = os.environ if environ is None else environ
    text = env.get(BUCKET_ZONES_ENV, "").strip()
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        bucket, sep, zone = item.partition("=")
        if not sep or not bucket.strip() or not zone.strip():
            raise ConfigError(
                f"{BUCKET_ZONES_ENV}: entry {item!r} is not bucket=zone; write e.g. {BUCKET_ZONES_ENV}=fleet-global=global,fleet-cn=cn"
            )
        out[bucket.strip()] = validate_zone(zone.strip(), f"{BUCKET_ZONES_ENV}: zone of bucket '{bucket.strip()}'")
    return out


def format_bucket_zones(zones: Mapping[str, str]) -> str:
    """The ``FSDTRAIN_BUCKET_ZONES`` value for a bucket -> zone mapping (inverse of :func:`bucket_zones`)."""
    return ",".join(f"{bucket}={zone}" for bucket, zone in zones.items())


# --- S3 ------------------------------------------------------------------------------------------


class _Client:
    """This process's S3 access: the retry policy, the signed GETs (None in adaptive retry mode) and
    the boto3 client, made when first needed. A process forked from one that has read (a loader
    worker) takes its parent's endpoint and bucket URLs for its GETs and makes no client while it
    only reads those buckets (:class:`~fsdtrain.store.signed_get.SignedGets`)."""

    def __init__(self, settings: S3Settings, inherited: _Client | None) -> None:
        self.policy = settings.policy
        self._settings = settings
        self._s3 = None
        self._lock = threading.Lock()
        # adaptive mode's client-side rate limiter sits in the client's call path: its GETs go through it
        self.gets = None if settings.retry_mode == "adaptive" else SignedGets(
            lambda: self.s3, _session(None), timeout_s=(settings.policy.connect_timeout_s, settings.policy.read_timeout_s),
            known=inherited.gets if inherited is not None else None,
        )  # fmt: skip

    @property
    def s3(self):
        """The boto3 S3 client (made on first use)."""
        with self._lock:
            if self._s3 is None:
                self._s3 = _new_client(self._settings)
            return self._s3

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint in use, for messages: never makes a client (an error may be that it cannot be made)."""
        if self.gets is not None:
            return self.gets.endpoint
        return getattr(self._s3.meta, "endpoint_url", None) if self._s3 is not None else self._settings.endpoint


_clients: dict[int, _Client] = {}
# boto3 sessions by profile. Unlike a client (its connection pool), a session is safe to use after a
# fork, and building one reads the AWS files and service models again in every loader worker of every
# epoch (timed by hand in forked children: 90-200 ms for a new session, 18-44 ms for a client from the
# kept one; benchmarks/data_throughput.py's s3_vs_file is too noisy here to show the difference).
_sessions: dict[str | None, object] = {}
# The settings, read once like the sessions and inherited by forked children: reading them builds a
# botocore session of its own (14 ms of a loader worker's start, every epoch; timed by hand).
_settings: list[S3Settings] = []


def reset_clients() -> None:
    """Forgets cached S3 clients, sessions and settings, e.g. after the AWS_* or FSDTRAIN_S3_*
    environment changed (a new local store, another key, another retry budget)."""
    mine = _clients.get(os.getpid())
    if mine is not None and mine.gets is not None:
        mine.gets.close()
    _clients.clear()
    _sessions.clear()
    _settings.clear()


def _s3_settings() -> S3Settings:
    """:func:`~fsdtrain.store.settings.s3_settings`, read once (until :func:`reset_clients`)."""
    if not _settings:
        _settings.append(s3_settings())
    return _settings[0]


def _session(profile: str | None):
    """This process's boto3 session of ``profile``, made once (and inherited by forked children)."""
    cached = _sessions.get(profile)
    if cached is None:
        cached = _sessions[profile] = session(profile)
    return cached


def _new_client(settings: S3Settings, profile: str | None = None):
    """A boto3 S3 client with ``settings``; keys from ``profile`` (None: the usual chain)."""
    from botocore.config import Config

    checksums = {
        "request_checksum_calculation": settings.request_checksum,
        "response_checksum_validation": settings.response_checksum,
    }
    config = Config(
        # Retries are ours (fsdtrain.store.retry), with an explicit budget; botocore tries once, in the
        # mode asked for (adaptive's rate limiter works on single attempts too).
        retries={"total_max_attempts": 1, "mode": settings.retry_mode},
        connect_timeout=settings.policy.connect_timeout_s,
        read_timeout=settings.policy.read_timeout_s,
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=16,
        # botocore < 1.36 has no checksum settings (and sends no checksums by default).
        **{k: v for k, v in checksums.items() if k in Config.OPTION_DEFAULTS},
    )
    boto_session = _session(profile)
    try:
        return boto_session.client("s3", config=config, region_name=settings.region)
    except ValueError as exc:  # botocore's "Invalid endpoint: ..."
        raise StoreError(f"AWS_ENDPOINT_URL is not a valid URL ({exc}); use e.g. http://127.0.0.1:8333") from None


def _s3() -> _Client:
    """This process's S3 access (clients are not fork-safe, so the pid is the cache key; a forked
    child starts from its parent's, :class:`_Client`)."""
    pid = os.getpid()
    cached = _clients.get(pid)
    if cached is None:
        settings = _s3_settings()
        bucket_zones()  # a malformed FSDTRAIN_BUCKET_ZONES fails here, not inside an error message
        inherited = next((c for p, c in _clients.items() if p != pid and c.gets is not None), None)  # a parent's
        cached = _Client(settings, inherited)
        _clients[pid] = cached
    return cached


def s3_client(profile: str | None = None) -> object:
    """The boto3 S3 client: this process's shared one, or with ``profile`` a new one that holds that
    profile's key (from the shared credentials file) and this process's other settings.

    Raises:
        ConfigError: the settings or the profile are invalid.
    """
    return _s3().s3 if profile is None else _new_client(_s3_settings(), profile)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError (``AccessDenied``, ``NoSuchKey``...), '' for others."""
    return _code(exc)


def _response(exc: BaseException) -> dict:
    """The parsed S3 answer of a ClientError (other errors may have a ``response`` that is not one)."""
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def _code(exc: BaseException) -> str:
    return str(_response(exc).get("Error", {}).get("Code", ""))


def _status(exc: BaseException) -> int:
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _transient(exc: BaseException) -> bool:
    """Whether another try may succeed: transport failures, timeouts, 5xx, throttling."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, SSLError
    from botocore.exceptions import ConnectionError as TransportError

    if isinstance(exc, ClientError):
        return _status(exc) >= 500 or _status(exc) == 429 or _code(exc) in _THROTTLED
    if isinstance(exc, SSLError):  # a certificate problem does not heal by itself
        return False
    return isinstance(exc, (TransportError, HTTPClientError, IncompleteReadError))


def _endpoint(client: _Client | None) -> str:
    """The endpoint in use, without any user:password part."""
    url = client.endpoint_url if client else None
    url = url or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
    return safe_url(url)


def _redact(text: str) -> str:
    """``text`` with the credential values of this environment masked (a guard: messages are built
    from codes, but quoted library text must never carry a key either)."""
    for name in _CREDENTIAL_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _s3_error(
    exc: BaseException, u: ObjectUrl, action: str, client: _Client | None, spent: RetriesExhausted | None = None
) -> StoreError:
    """One line for a botocore failure: what, which bucket/key (and zone), and how to fix. Never the keys."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as TransportError

    zone = bucket_zones().get(u.bucket)
    where = (f"s3://{u.bucket}/{u.key}" if u.key else f"s3://{u.bucket}") + (f" (zone {zone})" if zone else "")
    zone_key = f" of zone '{zone}'" if zone else ""
    tries = (
        f" after {spent.attempts} attempt(s) in {spent.elapsed_s:.1f} s (retry budget: {RETRY_ATTEMPTS_ENV}, {RETRY_SECONDS_ENV})"
        if spent
        else ""
    )
    code = _code(exc)
    if isinstance(exc, NoCredentialsError):
        message = f"no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key{zone_key} allowed on bucket '{u.bucket}'"
    elif isinstance(exc, PartialCredentialsError):
        missing = exc.kwargs.get("cred_var", "a variable")
        message = f"incomplete S3 credentials ({missing} is missing); set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY{' to a key' + zone_key if zone else ''}"
    elif isinstance(exc, ReadTimeoutError):
        message = f"the store at {_endpoint(client)} did not answer in time{tries}; the wait per try is {TIMEOUT_ENV}"
    elif isinstance(exc, TransportError) or (spent and not isinstance(exc, ClientError)):
        message = f"the store at {_endpoint(client)} is unreachable ({type(exc).__name__}){tries}; is it running (fsdtrain store serve)?"
    elif code in _NOT_FOUND:
        message = "no such object"
    elif code in _NO_BUCKET:
        message = f"bucket '{u.bucket}' does not exist"
    elif code in _DENIED:
        fix = f"use a key of zone '{zone}'" if zone else "use a key that is allowed on it"
        message = f"access denied on bucket '{u.bucket}'{zone_key}: the key in use (AWS_ACCESS_KEY_ID) may not {action} there; {fix}"
    elif code in _FORBIDDEN:
        fix = f"use a key of zone '{zone}'" if zone else "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        message = f"forbidden (HTTP 403): the key in use is not allowed on bucket '{u.bucket}'{zone_key}, or its secret is wrong; {fix}"
    elif code in _BAD_SECRET:
        message = f"the store rejected the credentials (SignatureDoesNotMatch: wrong secret key); check AWS_SECRET_ACCESS_KEY{' for the key' + zone_key if zone else ''}"
    elif code in _BAD_KEY_ID:
        message = f"the store rejected the credentials ({code}: unknown or expired access key); check AWS_ACCESS_KEY_ID{' for the key' + zone_key if zone else ''}"
    elif spent:
        message = f"the store at {_endpoint(client)} answered HTTP {_status(exc)} ({code or 'no code'}){tries}; try again later"
    elif code:
        message = f"the store answered {code} (HTTP {_status(exc)})"
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        message = f"{type(exc).__name__}: {first}"
    return StoreError(_redact(f"cannot {action} {where}: {message}"))


def _s3_call(u: ObjectUrl, action: str, fn: Callable[[_Client], T]) -> T:
    """``fn(client)`` with retries; any botocore failure becomes one StoreError line."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = None
    try:
        client = _s3()  # reads the credentials: missing or partial ones fail here
        return call_with_retries(
            lambda: fn(client), client.policy, catch=(BotoCoreError, ClientError), transient=_transient, what=f"{action} {u}"
        )
    except RetriesExhausted as spent:
        raise _s3_error(spent.last, u, action, client, spent) from None
    except (BotoCoreError, ClientError) as exc:
        error = _s3_error(exc, u, action, client)
        if isinstance(exc, ClientError) and _code(exc) in _NOT_FOUND:
            error = ObjectMissing(str(error))
        raise error from None


# --- public API ----------------------------------------------------------------------------------


def read_bytes(url: str, *, byte_range: tuple[int, int] | None = None) -> bytes:
    """The object's bytes (or ``[start, end)`` of them)."""
    u = parse_url(url)
    if u.scheme == "file":
        try:
            with open(u.key, "rb") as f:
                if byte_range is None:
                    return f.read()
                f.seek(byte_range[0])
                return f.read(byte_range[1] - byte_range[0])
        except FileNotFoundError:
            raise ObjectMissing(f"cannot read {u}: no such file") from None
        except IsADirectoryError:
            raise StoreError(f"cannot read {u}: is a directory") from None
        except PermissionError:
            raise StoreError(f"cannot read {u}: permission denied; check the file's owner and mode") from None
    kwargs = {"Bucket": u.bucket, "Key": u.key}
    if byte_range is not None:
        kwargs["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"

    def get(c: _Client) -> bytes:
        # The body is read inside the retried call: a connection lost mid-body retries the GET.
        data = c.gets.get(u.bucket, u.key, byte_range) if c.gets is not None else None
        if data is None:  # adaptive mode, or an answer the client follows by itself (a redirect)
            data = c.s3.get_object(**kwargs)["Body"].read()
        return data

    return _s3_call(u, "read", get)


def write_bytes(url: str, data: bytes) -> None:
    """Writes an object whole. Readers never see a partial object: file:// writes a temp file then
    renames it; an S3 PUT is atomic."""
    u = parse_url(url)
    if u.scheme == "file":
        path = Path(u.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    _s3_call(u, "write", lambda c: c.s3.put_object(Bucket=u.bucket, Key=u.key, Body=data))


COPY_IN_ONE_REQUEST = 5 << 30  # the most S3 copies with one CopyObject
COPY_PART = 1 << 30  # bytes per UploadPartCopy above that (S3 takes 5 MiB to 5 GiB per part, 10,000 parts)


def copy(src: str, dst: str, *, in_one_request: int = COPY_IN_ONE_REQUEST, part: int = COPY_PART) -> None:
    """Copies an object inside one store: on S3 server-side (the bytes never pass through this
    process), with one ``CopyObject`` up to ``in_one_request`` bytes and as a multipart upload of
    ``UploadPartCopy`` ranges of ``part`` bytes above (shards over 5 GB); on file:// a copy to a
    temporary name and a rename. ``dst`` appears whole or not at all: a multipart copy that fails is
    aborted, so no part of it stays in the store. Raises :class:`~fsdtrain.errors.ObjectMissing` when
    ``src`` is gone."""
    s, d = parse_url(src), parse_url(dst)
    if s.scheme != d.scheme:
        raise ValueError(f"copy from {s.scheme}:// to {d.scheme}:// is not one store: read and write instead")
    if s.scheme == "file":
        try:
            data = Path(s.key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"cannot copy {s}: no such file") from None
        write_bytes(dst, data)
        return
    source = {"Bucket": s.bucket, "Key": s.key}
    size = _s3_call(s, "copy", lambda c: c.s3.head_object(**source)["ContentLength"])
    if size <= in_one_request:
        _s3_call(s, "copy", lambda c: c.s3.copy_object(Bucket=d.bucket, Key=d.key, CopySource=source))
        return
    target = {"Bucket": d.bucket, "Key": d.key}
    upload = _s3_call(d, "copy", lambda c: c.s3.create_multipart_upload(**target)["UploadId"])
    try:
        parts = []
        for number, start in enumerate(range(0, size, part), start=1):
            span = f"bytes={start}-{min(start + part, size) - 1}"

            def copy_part(c: _Client, number: int = number, span: str = span) -> str:
                answer = c.s3.upload_part_copy(**target, UploadId=upload, PartNumber=number, CopySource=source, CopySourceRange=span)
                return answer["CopyPartResult"]["ETag"]

            parts.append({"PartNumber": number, "ETag": _s3_call(s, "copy", copy_part)})
        _s3_call(d, "copy", lambda c: c.s3.complete_multipart_upload(**target, UploadId=upload, MultipartUpload={"Parts": parts}))
    except BaseException:
        try:
            _s3_call(d, "abort the copy to", lambda c: c.s3.abort_multipart_upload(**target, UploadId=upload))
        except StoreError as exc:  # the copy's own error is the one to raise; the store drops stale uploads by its lifecycle rules
            log.warning("%s", exc)
        raise


def exists(url: str) -> bool:
    """Whether the object exists (a prefix with objects under it is not an object)."""
    u = parse_url(url)
    if u.scheme == "file":
        return Path(u.key).is_file()
    from botocore.exceptions import ClientError

    def head(c: _Client) -> bool:
        try:
            c.s3.head_object(Bucket=u.bucket, Key=u.key)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise
        return True

    return _s3_call(u, "check", head)


def list_keys(url: str) -> Iterator[str]:
    """URLs of all objects under a prefix, sorted."""
    u = parse_url(url)
    if u.scheme == "file":
        root = Path(u.key)
        if not root.is_dir():
            return iter(())
        return iter(sorted(f"file://{p}" for p in root.rglob("*") if p.is_file() and not p.name.endswith(".partial")))
    prefix = u.key.rstrip("/") + "/" if u.key else ""

    def listing(c: _Client) -> list[str]:
        # A retry starts the listing over, so no page is counted twice.
        pages = c.s3.get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=prefix)
        return [f"s3://{u.bucket}/{obj['Key']}" for page in pages for obj in page.get("Contents", [])]

    return iter(sorted(_s3_call(u, "list", listing)))


def delete(url: str) -> None:
    """Removes an object (file:// also a directory tree); a missing one is not an error."""
    u = parse_url(url)
    if u.scheme == "file":
        path = Path(u.key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    _s3_call(u, "delete", lambda c: c.s3.delete_object(Bucket=u.bucket, Key=u.key))


def ensure_bucket(url: str) -> None:
    """Creates the URL's bucket when it does not exist yet (s3 only; no-op for file://)."""
    u = parse_url(url)
    if u.scheme != "s3":
        return
    from botocore.exceptions import ClientError

    def head(c: _Client) -> bool:
        try:
            c.s3.head_bucket(Bucket=u.bucket)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND + _NO_BUCKET:
                return False
            raise
        return True

    def create(c: _Client) -> None:
        try:
            c.s3.create_bucket(Bucket=u.bucket)
        except ClientError as exc:
            if _code(exc) not in _BUCKET_EXISTS:  # created meanwhile by another writer of ours
                raise

    bucket = ObjectUrl("s3", u.bucket, "")
    if not _s3_call(bucket, "open bucket", head):
        _s3_call(bucket, "create bucket", create)
