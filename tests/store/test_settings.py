"""Tests for fsdtrain/store/settings.py: addressing style, checksums and retry mode come
from the AWS config file and the variables, reach the boto3 client, and change the requests a real
SeaweedFS receives (virtual-hosted requests go through the store's own port as an HTTP proxy, since
``<bucket>.localhost`` does not resolve on every host)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.store import objects
from fsdtrain.store.local.seaweed import LocalStore
from fsdtrain.store.settings import ADDRESSING_STYLE_ENV, s3_settings

PAYLOAD = bytes(range(256)) * 16
_SETTING_ENV = (
    "AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", ADDRESSING_STYLE_ENV,
    "FSDTRAIN_S3_RETRY_ATTEMPTS", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
)  # fmt: skip


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    """Unsets every variable that changes the settings; ``write_config(text)`` writes an AWS config file
    and points ``AWS_CONFIG_FILE`` at it (without one, a file that does not exist)."""
    for name in _SETTING_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))

    def write_config(text: str) -> Path:
        path = tmp_path / "aws-config"
        path.write_text(text)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
        objects.reset_clients()
        return path

    return write_config


def _virtual_hosted(monkeypatch: pytest.MonkeyPatch, store: LocalStore) -> str:
    """Endpoint ``http://localhost:PORT`` (the store serves ``<bucket>.localhost``), reached through the
    store's port as the HTTP proxy; returns the endpoint."""
    endpoint = f"http://localhost:{store.port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("HTTP_PROXY", store.endpoint)
    objects.reset_clients()
    return endpoint


def _record_requests() -> list[tuple[str, str, dict[str, str]]]:
    """(method, url, headers) of every request the shared client sends from now on."""
    sent: list[tuple[str, str, dict[str, str]]] = []

    def remember(request, **_) -> None:
        sent.append((request.method, request.url, {k.lower(): str(v) for k, v in request.headers.items()}))

    objects.s3_client().meta.events.register("before-send.s3", remember)
    return sent


def _sends_checksum(headers: dict[str, str]) -> bool:
    return any(h.startswith(("x-amz-checksum-", "x-amz-sdk-checksum-algorithm", "x-amz-trailer")) for h in headers)


def test_config_file_settings_reach_the_client_and_its_requests(
    s3_env: LocalStore, s3_bucket: str, clean_settings: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = clean_settings(
        "[default]\ns3 =\n    addressing_style = virtual\nrequest_checksum_calculation = when_supported\n"
        "response_checksum_validation = when_supported\nretry_mode = adaptive\n"
    )
    _virtual_hosted(monkeypatch, s3_env)
    client = objects.s3_client()
    assert client.meta.config.s3["addressing_style"] == "virtual"
    assert client.meta.config.request_checksum_calculation == "when_supported"
    assert client.meta.config.response_checksum_validation == "when_supported"
    assert client.meta.config.retries == {"total_max_attempts": 1, "mode": "adaptive"}
    settings = s3_settings()
    assert settings.sources["addressing_style"] == f"{config} [profile default]: s3.addressing_style"
    assert settings.sources["request_checksum"] == f"{config} [profile default]: request_checksum_calculation"

    sent = _record_requests()
    bucket = objects.parse_url(s3_bucket).bucket
    url = objects.join_url(s3_bucket, "virtual", "obj.bin")
    objects.write_bytes(url, PAYLOAD)
    assert objects.read_bytes(url, byte_range=(10, 20)) == PAYLOAD[10:20]
    assert list(objects.list_keys(objects.join_url(s3_bucket, "virtual"))) == [url]
    put = next(r for r in sent if r[0] == "PUT")
    assert put[1] == f"http://{bucket}.localhost:{s3_env.port}/virtual/obj.bin"
    assert _sends_checksum(put[2])
    assert all(r[1].startswith(f"http://{bucket}.localhost:") for r in sent)


def test_variables_win_over_the_config_file(
    s3_env: LocalStore, s3_bucket: str, clean_settings: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_settings(
        "[default]\ns3 =\n    addressing_style = virtual\nrequest_checksum_calculation = when_supported\nretry_mode = adaptive\n"
    )
    endpoint = _virtual_hosted(monkeypatch, s3_env)
    monkeypatch.setenv(ADDRESSING_STYLE_ENV, "path")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    client = objects.s3_client()
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    assert client.meta.config.retries["mode"] == "legacy"
    assert s3_settings().sources["addressing_style"] == ADDRESSING_STYLE_ENV

    sent = _record_requests()
    url = objects.join_url(s3_bucket, "path-style.bin")
    objects.write_bytes(url, PAYLOAD)
    assert objects.read_bytes(url) == PAYLOAD
    put = next(r for r in sent if r[0] == "PUT")
    assert put[1] == f"{endpoint}/{objects.parse_url(s3_bucket).bucket}/path-style.bin"
    assert not _sends_checksum(put[2])


def test_defaults_path_style_and_required_checksums_off_aws(
    s3_env: LocalStore, s3_bucket: str, clean_settings: Callable[[str], Path]
) -> None:
    objects.reset_clients()
    settings = s3_settings()
    assert (settings.addressing_style, settings.request_checksum, settings.response_checksum) == ("auto", "when_required", "when_required")
    assert (settings.retry_mode, settings.policy.attempts) == ("standard", 5)
    sent = _record_requests()
    url = objects.join_url(s3_bucket, "defaults.bin")
    objects.write_bytes(url, PAYLOAD)
    assert objects.read_bytes(url) == PAYLOAD
    put = next(r for r in sent if r[0] == "PUT")
    assert put[1] == f"{s3_env.endpoint}/{objects.parse_url(s3_bucket).bucket}/defaults.bin"  # botocore's auto: path on a custom endpoint
    assert not _sends_checksum(put[2])
    description = s3_settings().describe()
    assert s3_env.access_key not in description and s3_env.secret_key not in description


def test_defaults_on_aws_keep_botocores_checksums(clean_settings: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    objects.reset_clients()
    client = objects.s3_client()
    assert client.meta.endpoint_url.endswith(".amazonaws.com")
    assert client.meta.config.request_checksum_calculation == "when_supported"
    assert client.meta.config.s3["addressing_style"] == "auto"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.eu-central-1.amazonaws.com")
    assert s3_settings().request_checksum == "when_supported"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://oss-cn-hangzhou.aliyuncs.com")
    assert s3_settings().request_checksum == "when_required"
    objects.reset_clients()


def test_a_named_profile_of_the_config_file_is_used(
    clean_settings: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = clean_settings(
        "[default]\nretry_mode = legacy\n\n[profile oss]\nendpoint_url = https://oss-cn-shanghai.aliyuncs.com\n"
        "s3 =\n    addressing_style = virtual\nmax_attempts = 7\n"
    )
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_PROFILE", "oss")
    settings = s3_settings()
    assert settings.endpoint == "https://oss-cn-shanghai.aliyuncs.com"
    assert (settings.addressing_style, settings.request_checksum, settings.retry_mode) == ("virtual", "when_required", "standard")
    assert (settings.policy.attempts, settings.sources["attempts"]) == (7, f"{config} [profile oss]: max_attempts")


@pytest.mark.parametrize(
    ("config", "env", "match"),
    [
        ("", {"AWS_REQUEST_CHECKSUM_CALCULATION": "sometimes"}, "AWS_REQUEST_CHECKSUM_CALCULATION='sometimes' is not a valid checksum mode: use one of when_supported, when_required"),
        ("[default]\ns3 =\n    addressing_style = vhost\n", {}, r"aws-config \[profile default\]: s3.addressing_style='vhost' is not a valid addressing style: use one of auto, path, virtual"),
        ("", {ADDRESSING_STYLE_ENV: "dns"}, "FSDTRAIN_S3_ADDRESSING_STYLE='dns' is not a valid addressing style"),
        ("", {"AWS_RETRY_MODE": "eager"}, "AWS_RETRY_MODE='eager' is not a valid retry mode: use one of legacy, standard, adaptive"),
        ("", {"AWS_MAX_ATTEMPTS": "many"}, "AWS_MAX_ATTEMPTS='many' is not an integer"),
        ("[default]\nmax_attempts = 0\n", {}, r"aws-config \[profile default\]: max_attempts: retry attempts=0 must be an integer >= 1"),
        ("", {"AWS_PROFILE": "missing"}, "AWS profile 'missing' is in neither .*no-such-config"),
        ("[default\ns3 = x\n", {}, "cannot parse the AWS config file .*aws-config: fix its syntax"),
    ],
)
def test_bad_settings_are_one_line_config_errors(
    s3_env: LocalStore, clean_settings: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch,
    config: str, env: dict[str, str], match: str,
) -> None:  # fmt: skip
    if config:
        clean_settings(config)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    objects.reset_clients()
    with pytest.raises(ConfigError, match=match) as info:
        objects.read_bytes("s3://fleet-global/x")
    assert "\n" not in str(info.value)
    objects.reset_clients()
