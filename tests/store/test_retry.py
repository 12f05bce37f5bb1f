"""Tests for fsdtrain.store.retry: the budget (attempts, time cap, backoff) of retried calls.

The same loop against real servers (an unreachable port, a stopped SeaweedFS, an HTTP server that
answers 503 or never answers) is tested through the object API in test_objects.py.
"""

from __future__ import annotations

import logging
import random
import time

import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.store.retry import RetriesExhausted, RetryPolicy, call_with_retries


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def failing(times: int, exc: type[Exception] = Flaky):
    """A function that raises ``exc`` its first ``times`` calls, then returns how many calls it took."""
    calls = []

    def fn() -> int:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise exc("boom")
        return len(calls)

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def _call(fn, policy: RetryPolicy):
    return call_with_retries(
        fn, policy, catch=(Flaky, Fatal), transient=lambda e: isinstance(e, Flaky), what="test call", rng=random.Random(0)
    )


FAST = RetryPolicy(attempts=4, max_seconds=10.0, base_delay_s=0.01, max_delay_s=0.02)


def test_transient_failures_are_retried_until_success() -> None:
    assert _call(failing(3), FAST) == 4


def test_attempts_bound_the_tries() -> None:
    fn = failing(10)
    with pytest.raises(RetriesExhausted) as info:
        _call(fn, FAST)
    assert len(fn.calls) == 4
    assert info.value.attempts == 4
    assert isinstance(info.value.last, Flaky)


def test_time_cap_bounds_the_whole_call() -> None:
    policy = RetryPolicy(attempts=1000, max_seconds=0.5, base_delay_s=0.05, max_delay_s=0.1)
    fn = failing(10_000)
    started = time.monotonic()
    with pytest.raises(RetriesExhausted) as info:
        _call(fn, policy)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.5 + 0.2  # stops at the cap, not after 1000 tries
    assert 1 < info.value.attempts < 1000
    assert max(fn.calls) - min(fn.calls) <= 0.5 + 0.05  # no try starts after the cap (+ sleep slack)


def test_non_transient_errors_are_not_retried() -> None:
    fn = failing(1, Fatal)
    with pytest.raises(Fatal):
        _call(fn, FAST)
    assert len(fn.calls) == 1


def test_uncaught_errors_pass_through() -> None:
    fn = failing(1, KeyError)
    with pytest.raises(KeyError):
        _call(fn, FAST)
    assert len(fn.calls) == 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(1)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (10, 1.0)):
        delays = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # full jitter spans the range


def test_retries_are_logged_without_details_beyond_the_error_type(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fsdtrain.store.retry")
    _call(failing(2), FAST)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["test call failed (Flaky)"] * 2


def test_policy_from_env() -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy()
    policy = RetryPolicy.from_env(
        {"FSDTRAIN_S3_RETRY_ATTEMPTS": "2", "FSDTRAIN_S3_RETRY_SECONDS": "1.5", "FSDTRAIN_S3_TIMEOUT": "0.5"}
    )
    assert (policy.attempts, policy.max_seconds, policy.read_timeout_s, policy.connect_timeout_s) == (2, 1.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"FSDTRAIN_S3_RETRY_ATTEMPTS": "many"}, "FSDTRAIN_S3_RETRY_ATTEMPTS='many' is not an integer"),
        ({"FSDTRAIN_S3_RETRY_ATTEMPTS": "0"}, "must be an integer >= 1"),
        ({"FSDTRAIN_S3_RETRY_SECONDS": "-1"}, "max_seconds=-1.0 must be positive"),
        ({"FSDTRAIN_S3_TIMEOUT": "soon"}, "FSDTRAIN_S3_TIMEOUT='soon' is not a number"),
    ],
)
def test_bad_policy_env_is_a_config_error(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RetryPolicy.from_env(env)


def test_policy_rejects_inverted_delays() -> None:
    with pytest.raises(ConfigError, match="base_delay_s <= max_delay_s"):
        RetryPolicy(base_delay_s=2.0, max_delay_s=1.0)
