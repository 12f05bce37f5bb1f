"""Object access for ``s3://bucket/key`` and ``file:///path`` URLs (a plain path means file://).

S3 settings come from the standard AWS variables and profiles (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``), so the same job runs against
SeaweedFS, AWS S3, Aliyun OSS or MinIO. Clients are reused per process; connection errors, 5xx
and timeouts are retried by botocore with backoff within a bounded budget, then surface as a
one-line :class:`~fsdtrain.errors.StoreError` naming bucket and key. Credentials never appear in
messages.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from fsdtrain.errors import StoreError

__all__ = [
    "ObjectUrl",
    "parse_url",
    "join_url",
    "read_bytes",
    "write_bytes",
    "exists",
    "list_keys",
    "delete",
    "ensure_bucket",
    "reset_clients",
]

_RETRY_ATTEMPTS = 5
_CONNECT_TIMEOUT_S = 5
_READ_TIMEOUT_S = 60


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


# --- S3 ------------------------------------------------------------------------------------------

_clients: dict[int, object] = {}


def reset_clients() -> None:
    """Forgets cached S3 clients, e.g. after the AWS_* environment changed (a new local store)."""
    _clients.clear()


def _s3():
    """One boto3 client per process (clients are not fork-safe, so the pid is the cache key)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": _RETRY_ATTEMPTS, "mode": "standard"},
            connect_timeout=_CONNECT_TIMEOUT_S,
            read_timeout=_READ_TIMEOUT_S,
            s3={"addressing_style": "path"},
            max_pool_connections=16,
        )
        session = boto3.session.Session()
        region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
        client = session.client("s3", config=config, region_name=region)
        _clients[pid] = client
    return client


def _s3_error(exc: Exception, u: ObjectUrl, action: str) -> StoreError:
    """One line for a botocore failure: what, which bucket/key, and how to fix. Never the keys."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = f"s3://{u.bucket}/{u.key}" if u.key else f"s3://{u.bucket}"
    if isinstance(exc, NoCredentialsError):
        return StoreError(f"cannot {action} {where}: no S3 credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if isinstance(exc, EndpointConnectionError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
        return StoreError(f"cannot {action} {where}: store at {endpoint} unreachable after {_RETRY_ATTEMPTS} attempts; is it running (fsdtrain store serve)?")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StoreError(f"cannot {action} {where}: no such object")
        if code == "NoSuchBucket":
            return StoreError(f"cannot {action} {where}: bucket '{u.bucket}' does not exist")
        if code in ("AccessDenied", "403", "Forbidden"):
            return StoreError(f"cannot {action} {where}: access denied; the key in use is not allowed on bucket '{u.bucket}'")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
            return StoreError(f"cannot {action} {where}: the store rejected the credentials ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        return StoreError(f"cannot {action} {where}: {code}")
    return StoreError(f"cannot {action} {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _s3_call(u: ObjectUrl, action: str, fn, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(exc, u, action) from None


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
            raise StoreError(f"cannot read {u}: no such file") from None
        except IsADirectoryError:
            raise StoreError(f"cannot read {u}: is a directory") from None
    kwargs = {"Bucket": u.bucket, "Key": u.key}
    if byte_range is not None:
        kwargs["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
    resp = _s3_call(u, "read", _s3().get_object, **kwargs)
    from botocore.exceptions import BotoCoreError

    try:
        return resp["Body"].read()
    except BotoCoreError as exc:
        raise _s3_error(exc, u, "read") from None


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
    _s3_call(u, "write", _s3().put_object, Bucket=u.bucket, Key=u.key, Body=data)


def exists(url: str) -> bool:
    u = parse_url(url)
    if u.scheme == "file":
        return Path(u.key).is_file()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _s3().head_object(Bucket=u.bucket, Key=u.key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error(exc, u, "check") from None
    except BotoCoreError as exc:
        raise _s3_error(exc, u, "check") from None


def list_keys(url: str) -> Iterator[str]:
    """URLs of all objects under a prefix, sorted."""
    u = parse_url(url)
    if u.scheme == "file":
        root = Path(u.key)
        if not root.is_dir():
            return iter(())
        return iter(sorted(f"file://{p}" for p in root.rglob("*") if p.is_file() and not p.name.endswith(".partial")))
    prefix = u.key.rstrip("/") + "/" if u.key else ""
    paginator = _s3().get_paginator("list_objects_v2")
    out = []
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in paginator.paginate(Bucket=u.bucket, Prefix=prefix):
            out.extend(f"s3://{u.bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(exc, u, "list") from None
    return iter(sorted(out))


def delete(url: str) -> None:
    u = parse_url(url)
    if u.scheme == "file":
        path = Path(u.key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    _s3_call(u, "delete", _s3().delete_object, Bucket=u.bucket, Key=u.key)


def ensure_bucket(url: str) -> None:
    """Creates the URL's bucket when it does not exist yet (s3 only; no-op for file://)."""
    u = parse_url(url)
    if u.scheme != "s3":
        return
    from botocore.exceptions import BotoCoreError, ClientError

    client = _s3()
    try:
        client.head_bucket(Bucket=u.bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise _s3_error(exc, u, "open bucket of") from None
    except BotoCoreError as exc:
        raise _s3_error(exc, u, "open bucket of") from None
    _s3_call(u, "create bucket for", client.create_bucket, Bucket=u.bucket)
