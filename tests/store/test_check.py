"""Tests for ``fsdtrain store check`` (fsdtrain/store/check.py) against the session's SeaweedFS, with
the keys handed over as ``store serve`` does: a credentials file with one profile per zone."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsdtrain import cli
from fsdtrain.store import objects
from fsdtrain.store.check import SCRATCH_DIR
from fsdtrain.store.local.seaweed import CONFLICTING_AWS_ENV, LocalStore
from fsdtrain.store.settings import ADDRESSING_STYLE_ENV

CHECKS = ["put", "get", "range get", "latency", "list", "foreign", "delete"]


@pytest.fixture
def cn_site(s3_env: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as a CN site job: the ``fsdtrain-cn`` profile of a credentials file written as
    ``store serve`` writes it, no key variables, site zone ``cn``; returns the credentials file."""
    credentials = s3_env.write_credentials(tmp_path / "credentials")
    for name in (*CONFLICTING_AWS_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HTTP_PROXY", "http_proxy",
                 "NO_PROXY", "no_proxy", ADDRESSING_STYLE_ENV):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env.profile_env(credentials, "cn").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    objects.reset_clients()
    return credentials


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = cli.main(["store", "check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def _keys_of(store: LocalStore) -> list[str]:
    return [store.access_key, store.secret_key] + [v for z in store.zones for k, v in store.zone_env(z).items() if k.startswith("AWS_") and "KEY" in k]


def _left_under(url: str) -> list[str]:
    return list(objects.list_keys(objects.join_url(url, SCRATCH_DIR)))


def test_store_check_passes_and_the_other_zones_key_is_refused(
    cn_site: Path, s3_env: LocalStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = _check(capsys, "s3://fleet-cn/site-check", "--foreign-profile", "fsdtrain-global", "--size-mb", "1")
    assert code == 0, lines
    assert [line.split("  ")[0].strip() for line in lines[:7]] == ["ok"] * 7
    assert [line[6:16].strip() for line in lines[:7]] == CHECKS
    assert "1.0 MiB to s3://fleet-cn/site-check/.fsdtrain-check/" in lines[0] and "MiB/s" in lines[0]
    assert lines[5].endswith("refused on bucket 'fleet-cn' (zone cn): list AccessDenied, get AccessDenied, put AccessDenied")
    assert lines[7].startswith("settings: endpoint http://127.0.0.1:") and "addressing path (FSDTRAIN_S3_ADDRESSING_STYLE)" in lines[7]  # store serve's profile env
    assert lines[8] == "store check passed: 7 checks on s3://fleet-cn/site-check"
    assert _left_under("s3://fleet-cn/site-check") == []
    assert not any(key in "\n".join(lines) + err for key in _keys_of(s3_env))


def test_store_check_in_virtual_hosted_style(
    cn_site: Path, s3_env: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SeaweedFS serves <bucket>.localhost (weed -s3.domainName=localhost); this host cannot resolve that
    # name, so the requests go through the store's own port as an HTTP proxy, Host header intact.
    config = tmp_path / "aws-config"
    config.write_text("[profile fsdtrain-cn]\ns3 =\n    addressing_style = virtual\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv(ADDRESSING_STYLE_ENV)  # store serve's path-style variable would win over the file
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{s3_env.port}")
    monkeypatch.setenv("HTTP_PROXY", s3_env.endpoint)
    objects.reset_clients()
    hosts: list[str] = []
    objects.s3_client().meta.events.register("before-send.s3", lambda request, **_: hosts.append(request.url.split("/")[2]))
    code, lines, _ = _check(capsys, "s3://fleet-cn/vhost-check", "--foreign-profile", "fsdtrain-global", "--size-mb", "0.5")
    assert code == 0, lines
    assert f"addressing virtual ({config} [profile fsdtrain-cn]: s3.addressing_style)" in lines[7]
    assert len(hosts) > 20 and set(hosts) == {f"fleet-cn.localhost:{s3_env.port}"}
    assert _left_under("s3://fleet-cn/vhost-check") == []


def test_a_wrong_key_fails_in_one_line(cn_site: Path, s3_env: LocalStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FSDNOSUCHKEY0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789abcdef")
    objects.reset_clients()
    code, lines, err = _check(capsys, "s3://fleet-cn/site-check")
    assert code == 1
    assert len(lines) == 1 and err == ""
    assert lines[0].startswith("FAIL  put        cannot write s3://fleet-cn/site-check/.fsdtrain-check/")
    assert "InvalidAccessKeyId" in lines[0] and "not-the-secret" not in lines[0]


def test_a_wrong_secret_fails_in_one_line(cn_site: Path, s3_env: LocalStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.zone_env("cn")["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789abcdef")
    objects.reset_clients()
    code, lines, err = _check(capsys, "s3://fleet-cn/site-check")
    assert (code, len(lines), err) == (1, 1, "")
    assert "SignatureDoesNotMatch: wrong secret key" in lines[0] and "not-the-secret" not in lines[0]


def test_a_foreign_profile_with_a_wrong_secret_proves_nothing(
    cn_site: Path, s3_env: LocalStore, capsys: pytest.CaptureFixture[str]
) -> None:
    access_key = s3_env.zone_env("global")["AWS_ACCESS_KEY_ID"]
    with open(cn_site, "a") as f:
        f.write(f"[typo]\naws_access_key_id = {access_key}\naws_secret_access_key = wrong-secret-0123456789\n")
    code, lines, _ = _check(capsys, "s3://fleet-cn/typo-check", "--foreign-profile", "typo", "--size-mb", "0.25")
    assert code == 1
    assert lines[-1].startswith("FAIL  foreign    profile typo: the store knows its key but the secret is wrong, so this proves nothing")
    assert access_key not in "\n".join(lines)
    assert _left_under("s3://fleet-cn/typo-check") == []


def test_a_key_the_store_lets_in_is_no_proof(cn_site: Path, s3_env: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = _check(capsys, "s3://fleet-cn/same-key", "--foreign-profile", "fsdtrain-cn", "--size-mb", "0.25")
    assert code == 1
    assert lines[-1] == (
        "FAIL  foreign    the key of profile fsdtrain-cn was allowed to list on bucket 'fleet-cn' (zone cn): "
        "the store does not keep that key out of this bucket"
    )
    assert len(lines) == 6
    assert _left_under("s3://fleet-cn/same-key") == []  # a failed run still removes what it wrote


def test_another_zones_bucket_gets_no_request(cn_site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "global")
    sent: list[str] = []
    objects.s3_client().meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    code, lines, err = _check(capsys, "s3://fleet-cn/site-check")
    assert (code, lines, sent) == (2, [], [])
    assert err.startswith("fsdtrain: error: residency: s3://fleet-cn/site-check is in zone 'cn' but this job runs at site zone 'global'")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["s3://fleet-cn/x", "--foreign-profile", "nobody"], "AWS profile 'nobody' is in neither"),
        (["s3://fleet-cn/x", "--size-mb", "0"], "--size-mb 0 is out of range"),
        (["file:///tmp/x", "--foreign-profile", "fsdtrain-global"], "--foreign-profile is for s3:// URLs"),
    ],
)
def test_bad_arguments_are_one_line_errors(cn_site: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str) -> None:
    code, lines, err = _check(capsys, *args)
    assert (code, lines) == (2, [])
    assert err.startswith("fsdtrain: error: ") and match in err and err.count("\n") == 1


def test_a_local_folder_checks_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = _check(capsys, f"file://{tmp_path}/store", "--size-mb", "0.25")
    assert code == 0, lines
    assert [line[6:16].strip() for line in lines[:6]] == [c for c in CHECKS if c != "foreign"]
    assert lines[-1] == f"store check passed: 6 checks on file://{tmp_path}/store"
    assert not any(p.is_file() for p in (tmp_path / "store").rglob("*"))
