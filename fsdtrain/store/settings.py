"""How the S3 client talks to a store: addressing style, checksums, retry mode and attempts.

botocore reads some of these from the AWS config file only, others from variables too, and its
defaults suit AWS but not every S3-compatible store. :func:`s3_settings` resolves each setting once,
in the order of docs/stores.md (variables, then the active profile of ``AWS_CONFIG_FILE`` /
``~/.aws/config``, then a default chosen for AWS or for a store elsewhere), checks it, and records
where it came from, so ``fsdtrain store check`` can say so. :mod:`fsdtrain.store.objects` builds its
client from the result. No credential is read here: keys stay with botocore's own chain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from fsdtrain.errors import ConfigError
from fsdtrain.store.retry import RetryPolicy

__all__ = ["ADDRESSING_STYLE_ENV", "S3Settings", "s3_settings", "session", "safe_url"]

ADDRESSING_STYLE_ENV = "FSDTRAIN_S3_ADDRESSING_STYLE"
"""``auto``, ``path`` or ``virtual``: botocore reads the addressing style from the config file only, so a
job that is handed variables (a Kubernetes secret, a job file) sets it here; it wins over the file."""

_ADDRESSING_STYLES = ("auto", "path", "virtual")
_CHECKSUM_MODES = ("when_supported", "when_required")
_RETRY_MODES = ("legacy", "standard", "adaptive")
_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """How the S3 client talks to the store, each setting with the place it came from.

    Resolved by :func:`s3_settings`; every value is checked where it enters, and a bad one is a
    ConfigError naming the variable or the config file's key.
    """

    endpoint: str | None
    """``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or the profile's ``endpoint_url``; None means AWS itself."""
    region: str
    """``AWS_DEFAULT_REGION``, the profile's ``region``, ``AWS_REGION``, or ``us-east-1``."""
    addressing_style: str
    """``auto`` (botocore: path style on a custom endpoint, virtual-hosted on AWS), ``path`` or ``virtual``."""
    request_checksum: str
    """``request_checksum_calculation``: ``when_supported`` (a CRC on every upload) or ``when_required``."""
    response_checksum: str
    """``response_checksum_validation``: ``when_supported`` or ``when_required``."""
    retry_mode: str
    """botocore's retry mode; each of our tries is one botocore attempt, so only ``adaptive``'s
    client-side rate limiting changes anything."""
    policy: RetryPolicy
    """The retry budget of one call (:mod:`fsdtrain.store.retry`)."""
    sources: Mapping[str, str]
    """Setting name -> where its value came from (a variable, ``<config file> [profile P]``, or a default)."""

    def describe(self) -> str:
        """One line for people: every setting and its source; no credential is part of it."""
        src = self.sources
        return (
            f"endpoint {safe_url(self.endpoint) if self.endpoint else 'AWS'} (region {self.region}); "
            f"addressing {self.addressing_style} ({src['addressing_style']}); "
            f"checksums request {self.request_checksum} ({src['request_checksum']}), "
            f"response {self.response_checksum} ({src['response_checksum']}); "
            f"retries {self.policy.attempts} attempt(s) ({src['attempts']}) within {self.policy.max_seconds:g} s, "
            f"botocore mode {self.retry_mode} ({src['retry_mode']})"
        )


def _is_aws(endpoint: str | None) -> bool:
    """Whether ``endpoint`` is AWS's own S3 (None: botocore picks AWS's from the region)."""
    return endpoint is None or (urlparse(endpoint).hostname or "").endswith(_AWS_HOSTS)


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    parsed = urlparse(url)
    if parsed.username or parsed.password:
        return parsed._replace(netloc=(parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")).geturl()
    return url


def _pick(
    name: str, allowed: tuple[str, ...], env_name: str | None, profile: Mapping[str, object], key: tuple[str, ...],
    where: str, default: tuple[str, str],
) -> tuple[str, str]:  # fmt: skip
    """A setting's value and source: the variable, else the profile's key, else ``default``; checked."""
    value: object = None
    source = ""
    if env_name and os.environ.get(env_name, "").strip():
        value, source = os.environ[env_name].strip(), env_name
    else:
        node: object = profile
        for part in key:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            value, source = node, f"{where}: {'.'.join(key)}"
    if value is None:
        return default
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise ConfigError(f"{source}={value!r} is not a valid {name}: use one of {', '.join(allowed)}")
    return value.strip().lower(), source


def session(profile: str | None = None):
    """A boto3 session with the AWS files read and checked: ``profile`` (None: ``AWS_PROFILE`` or
    ``default``) must be in the config or the credentials file.

    Raises:
        ConfigError: the profile is in neither file, or a file does not parse.
    """
    return _sessions(profile)[0]


def _sessions(profile: str | None = None):
    """A boto3 session over a botocore session of ours (the config file is read through the latter)."""
    import boto3
    import botocore.session

    core = botocore.session.Session(profile=profile)
    with _config_errors(core):
        boto = boto3.session.Session(botocore_session=core)
        core.get_scoped_config()  # an unknown profile or a broken file fails here, in one line
    return boto, core


@contextmanager
def _config_errors(core) -> Iterator[None]:
    """botocore's profile and config-file errors as one-line ConfigErrors naming the files."""
    from botocore.exceptions import ConfigParseError, ProfileNotFound

    try:
        yield
    except ProfileNotFound as exc:
        raise ConfigError(
            f"AWS profile '{exc.kwargs.get('profile', '?')}' is in neither {core.get_config_variable('config_file')} "
            f"(AWS_CONFIG_FILE) nor {core.get_config_variable('credentials_file')} (AWS_SHARED_CREDENTIALS_FILE); "
            "add it there or name one that is (AWS_PROFILE, --foreign-profile)"
        ) from None
    except ConfigParseError as exc:
        raise ConfigError(f"cannot parse the AWS config file {exc.kwargs.get('path', '')}: fix its syntax (INI sections and key = value)") from None


def s3_settings() -> S3Settings:
    """The S3 settings of this process: variables first, then the AWS config file's profile
    (``AWS_CONFIG_FILE``, default ``~/.aws/config``; ``AWS_PROFILE``), then the defaults.

    ====================  ===========================================  ===========================================
    setting               read from                                    default
    ====================  ===========================================  ===========================================
    addressing style      ``FSDTRAIN_S3_ADDRESSING_STYLE``, then the   ``auto``: path style on a custom endpoint,
                          profile's ``s3 = addressing_style = ...``    virtual-hosted on AWS
    request checksums     ``AWS_REQUEST_CHECKSUM_CALCULATION``, then   ``when_supported`` on AWS; ``when_required``
                          ``request_checksum_calculation``             elsewhere (S3-compatible stores differ)
    response checksums    ``AWS_RESPONSE_CHECKSUM_VALIDATION``, then   as request checksums
                          ``response_checksum_validation``
    attempts per call     ``FSDTRAIN_S3_RETRY_ATTEMPTS``, then         5
                          ``AWS_MAX_ATTEMPTS``, then ``max_attempts``
    botocore retry mode   ``AWS_RETRY_MODE``, then ``retry_mode``      ``standard``
    ====================  ===========================================  ===========================================

    Raises:
        ConfigError: a value is not one botocore knows, the profile does not exist, the config file
            does not parse, or a retry variable is malformed.
    """
    _, core = _sessions()
    profile = dict(core.get_scoped_config())
    where = f"{core.get_config_variable('config_file')} [profile {core.get_config_variable('profile') or 'default'}]"
    endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or profile.get("endpoint_url") or None
    )
    checksum_default = ("when_supported", "default on AWS") if _is_aws(endpoint) else ("when_required", "default off AWS")
    addressing = _pick(
        "addressing style", _ADDRESSING_STYLES, ADDRESSING_STYLE_ENV, profile, ("s3", "addressing_style"), where, ("auto", "default")
    )
    request = _pick(
        "checksum mode", _CHECKSUM_MODES, "AWS_REQUEST_CHECKSUM_CALCULATION", profile, ("request_checksum_calculation",), where, checksum_default
    )
    response = _pick(
        "checksum mode", _CHECKSUM_MODES, "AWS_RESPONSE_CHECKSUM_VALIDATION", profile, ("response_checksum_validation",), where, checksum_default
    )
    mode = _pick("retry mode", _RETRY_MODES, "AWS_RETRY_MODE", profile, ("retry_mode",), where, ("standard", "default"))
    aws_attempts = profile.get("max_attempts")
    policy = RetryPolicy.from_env(
        aws_max_attempts=(str(aws_attempts), f"{where}: max_attempts") if aws_attempts is not None else None
    )
    region = core.get_config_variable("region") or os.environ.get("AWS_REGION") or "us-east-1"
    return S3Settings(
        endpoint=endpoint, region=region, addressing_style=addressing[0], request_checksum=request[0],
        response_checksum=response[0], retry_mode=mode[0], policy=policy,
        sources={"addressing_style": addressing[1], "request_checksum": request[1], "response_checksum": response[1],
                 "retry_mode": mode[1], "attempts": policy.attempts_source},
    )  # fmt: skip
