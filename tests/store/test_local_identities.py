"""Tests for fsdtrain.store.local.identities: zone specs, bucket names and the SeaweedFS identities file.

Whether weed really enforces these identities is tested against a running store in test_seaweed.py
and test_objects.py; whether security.toml closes every other port, in tests/security/test_store_ports.py.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import tomllib

from fsdtrain.errors import ConfigError, StoreError
from fsdtrain.store.local.identities import (
    Credentials,
    TlsFiles,
    identities_json,
    make_tls_files,
    parse_zones,
    security_toml,
    validate_bucket,
    validate_zones,
)


def test_parse_zones() -> None:
    assert parse_zones("global=fleet-global,cn=fleet-cn") == {"global": "fleet-global", "cn": "fleet-cn"}
    assert parse_zones(" us = fleet-us , ") == {"us": "fleet-us"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cn", "not zone=bucket"),
        ("cn=", "not zone=bucket"),
        ("=fleet-cn", "not zone=bucket"),
        ("", "names no zone"),
        ("cn=fleet-cn,cn=fleet-cn2", "zone 'cn' twice"),
        ("cn=fleet,us=fleet", "both use bucket 'fleet'"),
        ("CN=fleet-cn", "not a zone name"),
        ("cn=Fleet_CN", "not an S3 bucket name"),
        ("admin=fleet-admin", "zone name 'admin' is reserved for the store's admin key"),
    ],
)
def test_bad_zone_specs_say_how_to_fix(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_zones(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["ab", "-fleet", "fleet-", "fleet..cn", "a" * 64, "fleet/cn", "fleet cn"])
def test_invalid_bucket_names(name: str) -> None:
    with pytest.raises(ConfigError, match="S3 bucket name"):
        validate_bucket(name)


def test_validate_zones_keeps_order() -> None:
    assert list(validate_zones({"us": "fleet-us", "cn": "fleet-cn", "global": "fleet-global"})) == ["us", "cn", "global"]


def test_credentials_are_random_and_hide_the_secret() -> None:
    a, b = Credentials.random(), Credentials.random()
    assert a.access_key != b.access_key and a.secret_key != b.secret_key
    assert len(a.secret_key) >= 32
    assert a.secret_key not in repr(a)


def test_identities_scope_each_zone_key_to_its_bucket() -> None:
    admin = Credentials("ADMINKEY", "admin-secret")
    cn, us = Credentials("CNKEY", "cn-secret"), Credentials("USKEY", "us-secret")
    config = json.loads(identities_json(admin, {"cn": ("fleet-cn", cn), "us": ("fleet-us", us)}))
    by_name = {i["name"]: i for i in config["identities"]}
    assert set(by_name) == {"fsdtrain-admin", "zone-cn", "zone-us"}
    assert "Admin" in by_name["fsdtrain-admin"]["actions"]
    assert by_name["zone-cn"]["actions"] == ["Read:fleet-cn", "Write:fleet-cn", "List:fleet-cn"]
    assert by_name["zone-cn"]["credentials"] == [{"accessKey": "CNKEY", "secretKey": "cn-secret"}]
    assert by_name["zone-us"]["actions"] == ["Read:fleet-us", "Write:fleet-us", "List:fleet-us"]


def test_tls_files_are_private_and_the_ca_key_is_gone(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir(mode=0o700)
    tls = make_tls_files(tls_dir)
    assert sorted(p.name for p in tls_dir.iterdir()) == ["ca.crt", "node.crt", "node.key"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tls_dir.iterdir())
    verify = subprocess.run(["openssl", "verify", "-CAfile", tls.ca, tls.cert], capture_output=True)
    assert verify.returncode == 0, verify.stderr
    show = subprocess.run(["openssl", "x509", "-in", tls.cert, "-noout", "-text"], capture_output=True)
    text = show.stdout.decode()
    assert "IP Address:127.0.0.1" in text and "TLS Web Client Authentication" in text and "CA:FALSE" in text


def test_missing_openssl_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StoreError, match="apt install openssl") as info:
        make_tls_files(tmp_path)
    assert "\n" not in str(info.value)


def test_security_toml_has_fresh_keys_and_client_certificates_everywhere() -> None:
    tls = TlsFiles(ca=Path("/run/x/ca.crt"), cert=Path("/run/x/node.crt"), key=Path("/run/x/node.key"))
    one, two = tomllib.loads(security_toml(tls)), tomllib.loads(security_toml(tls))
    jwt = one["jwt"]
    keys = [jwt["signing"]["key"], jwt["signing"]["read"]["key"], jwt["filer_signing"]["key"]]
    keys += [jwt["filer_signing"]["read"]["key"], one["admin"]["password"]]
    assert len(set(keys)) == 5 and all(len(k) == 64 for k in keys)
    assert one["jwt"]["signing"]["key"] != two["jwt"]["signing"]["key"]  # fresh at every call
    assert one["grpc"]["ca"] == "/run/x/ca.crt"
    for component in ("master", "volume", "filer", "s3", "admin", "worker", "client"):
        assert one["grpc"][component] == {"cert": "/run/x/node.crt", "key": "/run/x/node.key"}
    for server in ("master", "volume"):
        assert one["https"][server] == {**one["grpc"]["client"], "ca": "/run/x/ca.crt"}
    assert one["https"]["client"]["enabled"] is True and one["https"]["client"]["ca"] == "/run/x/ca.crt"
    assert one["access"]["ui"] is False and one["filer"]["expose_directory_metadata"]["enabled"] is False
    assert "guard" not in one
