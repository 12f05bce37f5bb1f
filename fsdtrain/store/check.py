"""``fsdtrain store check URL``: proves a store works for fsdtrain before a long job relies on it.

Under a fresh scratch prefix ``<URL>/.fsdtrain-check/<id>/`` the check writes one large object and a
few small ones, reads the large one whole and in part, lists the prefix, and deletes everything it
wrote, through the same client, settings and retry budget as every job (:mod:`fsdtrain.store.objects`)
and the same zone gate (:class:`~fsdtrain.store.gate.ZoneGate`): a URL whose bucket belongs to a zone
this site may not read is refused before any request. Each check prints one line with what it saw
(bytes, time, MiB/s, latency); the first failure prints its one-line cause and ends the run.

Given another zone's key (``--foreign-profile NAME``, a profile of the shared credentials file, so the
key never appears on a command line), the check also shows that the store refuses that key on this
URL's bucket: listing, reading and writing must each be answered with a refusal. Only objects this
run wrote are deleted, never anything else under the URL. No credential is printed or logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fsdtrain.errors import ConfigError, StoreError
from fsdtrain.store import objects
from fsdtrain.store.gate import ZoneGate
from fsdtrain.store.settings import s3_settings

__all__ = ["CheckResult", "SCRATCH_DIR", "run_checks", "check_store"]

SCRATCH_DIR = ".fsdtrain-check"
"""The folder under the checked URL that holds each run's scratch prefix."""

_MIB = 2**20
_MAX_SIZE_MB = 4096.0
_SMALL_BYTES = 1024
_SMALL_OBJECTS = 10
_RANGE_BYTES = 64 * 1024
# Answers that mean "this key may not do that here"; a key unknown to the store is refused as well.
_REFUSED = ("AccessDenied", "AllAccessDisabled", "403", "Forbidden")
_UNKNOWN_KEY = ("InvalidAccessKeyId",)
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, whether it passed, and what it saw (one line, no credentials)."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``ok    get        ...`` or ``FAIL  get        ...``."""
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name:<10} {self.detail}"


class _Failed(Exception):
    """A check failed; ``detail`` is its one-line cause."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _mib(n: int) -> str:
    return f"{n / _MIB:.1f} MiB" if n >= _MIB else f"{n / 1024:.0f} KiB"


def _rate(n: int, seconds: float) -> str:
    return f"{n / _MIB / seconds:.1f} MiB/s" if seconds > 0 else "too fast to time"


def _spread(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1000:.1f} ms (max {max(seconds) * 1000:.1f})"


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class _Run:
    """The state of one check run: the scratch prefix and every object written under it."""

    def __init__(self, url: str, size_bytes: int, gate: ZoneGate) -> None:
        self.url = url
        self.gate = gate
        self.size = size_bytes
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.prefix = objects.join_url(url, SCRATCH_DIR, f"{stamp}-{secrets.token_hex(4)}")
        self.blob_url = objects.join_url(self.prefix, "blob.bin")
        self.blob = os.urandom(size_bytes)
        self.written: list[str] = []
        self.unconfirmed: list[str] = []

    def write(self, url: str, data: bytes) -> float:
        try:
            seconds = _timed(lambda: objects.write_bytes(url, data))[1]
        except StoreError:
            self.unconfirmed.append(url)  # a PUT that failed late may still have stored the bytes
            raise
        self.written.append(url)
        return seconds

    # --- checks -----------------------------------------------------------------------------------

    def put(self) -> str:
        seconds = self.write(self.blob_url, self.blob)
        return f"{_mib(self.size)} to {self.blob_url} in {seconds:.3f} s ({_rate(self.size, seconds)})"

    def get(self) -> str:
        data, seconds = _timed(lambda: self.gate.read(self.blob_url))
        if data != self.blob:
            raise _Failed(f"read {len(data)} bytes of {self.blob_url}, but they differ from the {self.size} written")
        return f"{_mib(self.size)} in {seconds:.3f} s ({_rate(self.size, seconds)}), bytes match"

    def range_get(self) -> str:
        start = self.size // 3
        end = min(self.size, start + _RANGE_BYTES)
        data, seconds = _timed(lambda: self.gate.read(self.blob_url, byte_range=(start, end)))
        if data != self.blob[start:end]:
            raise _Failed(f"bytes [{start}, {end}) of {self.blob_url} came back as {len(data)} bytes that differ from those written")
        return f"bytes [{start}, {end}) in {seconds * 1000:.1f} ms, bytes match"

    def latency(self) -> str:
        puts, gets = [], []
        for i in range(_SMALL_OBJECTS):
            url = objects.join_url(self.prefix, f"small-{i:03d}.bin")
            data = os.urandom(_SMALL_BYTES)
            puts.append(self.write(url, data))
            got, seconds = _timed(lambda url=url: self.gate.read(url))
            if got != data:
                raise _Failed(f"{url} read back different bytes than were written")
            gets.append(seconds)
        return f"{_mib(_SMALL_BYTES)} objects: put {_spread(puts)}, get {_spread(gets)}, {_SMALL_OBJECTS} each"

    def listing(self) -> str:
        listed, seconds = _timed(lambda: list(self.gate.list_keys(self.prefix)))
        if sorted(listed) != sorted(self.written):
            missing = sorted(set(self.written) - set(listed))
            extra = sorted(set(listed) - set(self.written))
            raise _Failed(f"listing {self.prefix} gave {len(listed)} objects, expected {len(self.written)} "
                          f"(missing {missing[:2]}, unexpected {extra[:2]})")  # fmt: skip
        return f"{len(listed)} objects under the scratch prefix in {seconds * 1000:.1f} ms"

    def delete(self) -> str:
        count = len(self.written)
        start = time.perf_counter()
        while self.written:
            objects.delete(self.written[-1])
            self.written.pop()
        seconds = time.perf_counter() - start
        if objects.parse_url(self.prefix).scheme == "file":
            objects.delete(self.prefix)  # the run's own folders (S3 has none); unique to this run
        left = list(self.gate.list_keys(self.prefix))
        if left:
            raise _Failed(f"{len(left)} object(s) still listed under {self.prefix} after deleting them, e.g. {left[0]}")
        return f"{count} objects in {seconds * 1000:.1f} ms; the scratch prefix lists empty"

    def foreign(self, profile: str) -> str:
        """The key of ``profile`` must be refused listing, reading and writing on this bucket."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = objects.parse_url(self.blob_url)
        probe = objects.join_url(self.prefix, "foreign-probe.bin")
        client = objects.s3_client(profile)
        attempts = {
            "list": lambda: client.list_objects_v2(Bucket=where.bucket, Prefix=objects.parse_url(self.prefix).key + "/"),
            "get": lambda: client.get_object(Bucket=where.bucket, Key=where.key)["Body"].read(),
            "put": lambda: client.put_object(Bucket=where.bucket, Key=objects.parse_url(probe).key, Body=b"foreign"),
        }
        answers = []
        for action, call in attempts.items():
            try:
                call()
            except ClientError as exc:
                code = objects.error_code(exc) or "no code"
                if code in _REFUSED:
                    answers.append(f"{action} {code}")
                    continue
                if code in _UNKNOWN_KEY:
                    answers.append(f"{action} {code} (the key is unknown to this store)")
                    continue
                if code == "SignatureDoesNotMatch":
                    raise _Failed(f"profile {profile}: the store knows its key but the secret is wrong, so this proves "
                                  "nothing; fix the profile's aws_secret_access_key") from None  # fmt: skip
                raise _Failed(f"profile {profile}: {action} got {code}, not a refusal; is it another zone's key?") from None
            except BotoCoreError as exc:
                raise _Failed(f"profile {profile}: {action} failed before the store answered ({type(exc).__name__})") from None
            else:
                if action == "put":
                    self.written.append(probe)  # the store took it: our own key removes it
                raise _Failed(f"the key of profile {profile} was allowed to {action} on bucket '{where.bucket}'"
                              f"{self._zone(where.bucket)}: the store does not keep that key out of this bucket")  # fmt: skip
        return f"profile {profile} refused on bucket '{where.bucket}'{self._zone(where.bucket)}: {', '.join(answers)}"

    def _zone(self, bucket: str) -> str:
        zone = self.gate.bucket_zones.get(bucket)
        return f" (zone {zone})" if zone else ""

    def clean_up(self) -> None:
        """Deletes whatever a failed run left (with the key in use); says what it could not delete."""
        for url in reversed(self.written):
            try:
                objects.delete(url)
            except StoreError as exc:
                _log.warning("store check could not delete its scratch object %s: %s", url, exc)
        for url in self.unconfirmed:
            try:
                objects.delete(url)
            except StoreError:
                # Its PUT failed: almost always nothing was stored (a refused key cannot delete either),
                # and the check's FAIL line already says why; a second line would only repeat it.
                _log.debug("store check: no delete of %s, whose write had failed", url)
        self.written.clear()
        self.unconfirmed.clear()


def run_checks(
    url: str, *, size_mb: float = 8.0, foreign_profile: str | None = None, site_zone: str | None = None
) -> Iterator[CheckResult]:
    """The checks of ``fsdtrain store check``, one result each as it completes; stops after the first failure.

    Args:
        url: ``s3://bucket/prefix`` (or ``file:///path``); the scratch objects go under
            ``<url>/.fsdtrain-check/<id>/``.
        size_mb: size of the large object (put, get, range get), MiB.
        foreign_profile: a profile of the shared credentials file holding another zone's key, which
            the store must refuse on this bucket; None skips that check.
        site_zone: the zone this site runs in (None: ``$FSDTRAIN_SITE_ZONE`` or ``global``).

    Raises:
        ConfigError: a bad argument, S3 setting or profile (before any request).
        ResidencyError: the URL's bucket belongs to a zone this site may not read (before any request).
        StoreError: the URL is not an object URL.
    """
    if not 0 < size_mb <= _MAX_SIZE_MB:
        raise ConfigError(f"--size-mb {size_mb:g} is out of range: give a size in (0, {_MAX_SIZE_MB:g}] MiB")
    size = max(1, int(size_mb * _MIB))
    where = objects.parse_url(url)
    if foreign_profile is not None and where.scheme != "s3":
        raise ConfigError(f"--foreign-profile is for s3:// URLs; {url} is a local path and has no keys")
    gate = ZoneGate(site_zone)
    gate.check_url(url)  # a bucket of a zone this site may not read gets no request at all
    if where.scheme == "s3":
        objects.s3_client()  # settings and credentials chain checked now, before the first line
        if foreign_profile is not None:
            objects.s3_client(foreign_profile)  # an unknown profile is a one-line ConfigError here
    run = _Run(url, size, gate)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("put", run.put), ("get", run.get), ("range get", run.range_get), ("latency", run.latency), ("list", run.listing),
    ]  # fmt: skip
    if foreign_profile is not None:
        steps.append(("foreign", lambda: run.foreign(foreign_profile)))
    steps.append(("delete", run.delete))
    try:
        for name, step in steps:
            try:
                detail = step()
            except (_Failed, StoreError) as exc:
                yield CheckResult(name, False, exc.detail if isinstance(exc, _Failed) else str(exc))
                return
            yield CheckResult(name, True, detail)
    finally:
        run.clean_up()


def check_store(
    url: str, *, size_mb: float = 8.0, foreign_profile: str | None = None, site_zone: str | None = None
) -> int:
    """Runs :func:`run_checks` and prints one line per check, then the settings in use.

    Returns:
        0 when every check passed, 1 after a failed one (whose line says why).
    """
    count = 0
    # closing(): the scratch objects are cleaned up when a failure ends the loop early, not at garbage collection
    with contextlib.closing(run_checks(url, size_mb=size_mb, foreign_profile=foreign_profile, site_zone=site_zone)) as results:
        for result in results:
            print(result.line(), flush=True)
            if not result.ok:
                return 1
            count += 1
    if objects.parse_url(url).scheme == "s3":
        print(f"settings: {s3_settings().describe()}")
    print(f"store check passed: {count} checks on {url}")
    return 0
