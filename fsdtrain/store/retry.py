"""The retry budget of object-store calls: how many attempts, how long in all, how long between.

A call that fails with a transient error (connection refused or reset, a timeout, an HTTP 5xx or
throttling answer) is tried again after an exponential backoff with full jitter, until it succeeds,
fails with an error that is not transient, or runs out of budget: ``attempts`` tries in all, and no
new try (nor any backoff sleep) past ``max_seconds`` after the first one started. A try already in
flight is bounded by its own ``connect_timeout_s`` and ``read_timeout_s``, so the worst case for
one call is ``max_seconds`` plus one try's timeouts.

The budget comes from :class:`RetryPolicy`, by default read from the environment::

    FSDTRAIN_S3_RETRY_ATTEMPTS=5     tries per call, the first included
    FSDTRAIN_S3_RETRY_SECONDS=30     total time cap in seconds
    FSDTRAIN_S3_TIMEOUT=60           read timeout of one try in seconds (connect: min(5, this))

The standard ``AWS_MAX_ATTEMPTS`` (and a profile's ``max_attempts``) means the same as
``FSDTRAIN_S3_RETRY_ATTEMPTS`` (tries, the first included) and sets the attempts when the fsdtrain
variable is unset; ``FSDTRAIN_S3_RETRY_ATTEMPTS`` wins when both are set. Either way this loop is the
only one that retries: botocore makes one attempt per try, so the two never multiply.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from fsdtrain.errors import ConfigError

__all__ = [
    "RETRY_ATTEMPTS_ENV",
    "AWS_MAX_ATTEMPTS_ENV",
    "RETRY_SECONDS_ENV",
    "TIMEOUT_ENV",
    "RetryPolicy",
    "RetriesExhausted",
    "call_with_retries",
]

RETRY_ATTEMPTS_ENV = "FSDTRAIN_S3_RETRY_ATTEMPTS"
AWS_MAX_ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"
RETRY_SECONDS_ENV = "FSDTRAIN_S3_RETRY_SECONDS"
TIMEOUT_ENV = "FSDTRAIN_S3_TIMEOUT"

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retry budget of one object-store call; validated on construction."""

    attempts: int = 5
    """Tries per call, the first included; 1 means no retry (``FSDTRAIN_S3_RETRY_ATTEMPTS``)."""
    max_seconds: float = 30.0
    """Total time cap: no try starts and no backoff sleeps past this many seconds after the first
    try started (``FSDTRAIN_S3_RETRY_SECONDS``)."""
    base_delay_s: float = 0.2
    """Backoff before try ``n + 1`` is uniform in ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]``."""
    max_delay_s: float = 5.0
    """Longest single backoff sleep, seconds."""
    connect_timeout_s: float = 5.0
    """How long one try waits for the TCP connection, seconds."""
    read_timeout_s: float = 60.0
    """How long one try waits for bytes from the server, seconds (``FSDTRAIN_S3_TIMEOUT``)."""
    attempts_source: str = "default"
    """Where ``attempts`` came from (a variable, a config file key, or the default), for messages."""

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            where = RETRY_ATTEMPTS_ENV if self.attempts_source == "default" else self.attempts_source
            raise ConfigError(f"{where}: retry attempts={self.attempts!r} must be an integer >= 1")
        for name in ("max_seconds", "connect_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"retry {name}={getattr(self, name)!r} must be positive")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ConfigError(
                f"retry delays base={self.base_delay_s} max={self.max_delay_s}: need 0 <= base_delay_s <= max_delay_s"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, aws_max_attempts: tuple[str, str] | None = None
    ) -> RetryPolicy:
        """The default policy with the ``FSDTRAIN_S3_*`` variables and ``AWS_MAX_ATTEMPTS`` applied
        (see the module docstring).

        Args:
            environ: the variables (default ``os.environ``).
            aws_max_attempts: the AWS config profile's ``max_attempts`` and where it was read
                (``"<file> [profile P]: max_attempts"``); used when neither variable is set.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, float | int | str] = {}
        # The first that is set wins: ours, then the standard variable, then the AWS profile's key.
        candidates = [(env.get(RETRY_ATTEMPTS_ENV, ""), RETRY_ATTEMPTS_ENV), (env.get(AWS_MAX_ATTEMPTS_ENV, ""), AWS_MAX_ATTEMPTS_ENV)]
        if aws_max_attempts is not None:
            candidates.append(aws_max_attempts)
        text, source = next(((t, src) for t, src in candidates if t.strip()), ("", "default"))
        if text.strip():
            kwargs["attempts"], kwargs["attempts_source"] = _number({source: text.strip()}, source, int), source
        if env.get(RETRY_SECONDS_ENV):
            kwargs["max_seconds"] = _number(env, RETRY_SECONDS_ENV, float)
        if env.get(TIMEOUT_ENV):
            timeout = _number(env, TIMEOUT_ENV, float)
            kwargs["read_timeout_s"] = timeout
            kwargs["connect_timeout_s"] = min(cls.connect_timeout_s, timeout)
        return cls(**kwargs)

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Sleep before try ``attempt + 1`` (full jitter, as AWS recommends, so clients spread out)."""
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> int | float:
    text = env[name]
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r} is not {what}: unset it or give e.g. {name}=5") from None


class RetriesExhausted(Exception):
    """A transient failure that outlasted the budget; ``last`` is the final error.

    Internal: :mod:`fsdtrain.store.objects` turns it into a one-line StoreError.
    """

    def __init__(self, last: BaseException, attempts: int, elapsed_s: float) -> None:
        super().__init__(f"gave up after {attempts} attempt(s) in {elapsed_s:.1f} s: {type(last).__name__}")
        self.last = last
        self.attempts = attempts
        self.elapsed_s = elapsed_s


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    catch: tuple[type[BaseException], ...],
    transient: Callable[[BaseException], bool],
    what: str,
    rng: random.Random | None = None,
) -> T:
    """``fn()``, tried again on transient failures within ``policy``'s budget.

    Args:
        fn: the call; it must be safe to repeat (a whole GET including its body read, a PUT of
            the same bytes, a listing from its start).
        policy: attempts, time cap and backoff.
        catch: the exception types ``fn`` may raise that are looked at here; others pass through.
        transient: whether a caught error is worth another try.
        what: what the call does, for the log (e.g. ``read s3://bucket/key``); never credentials.
        rng: source of the backoff jitter (tests pass a seeded one).

    Raises:
        RetriesExhausted: the last try failed transiently and the budget is spent.
        Exception: a caught error that is not transient, unchanged, on the try that raised it.
    """
    start = time.monotonic()
    attempt = 1
    while True:
        try:
            return fn()
        except catch as exc:
            if not transient(exc):
                raise
            elapsed = time.monotonic() - start
            left = policy.max_seconds - elapsed
            if attempt >= policy.attempts or left <= 0:
                raise RetriesExhausted(exc, attempt, elapsed) from exc
            rng = rng or random.Random()  # made on the first retry: seeding one costs more than a GET's signing
            delay = min(policy.backoff_s(attempt, rng), left)
            _log.info(
                "%s failed (%s), try %d of %d; retrying in %.2f s", what, type(exc).__name__, attempt, policy.attempts, delay
            )
            time.sleep(delay)
            attempt += 1
