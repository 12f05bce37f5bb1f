"""Tests for fsdtrain.store.local.identities: zone specs, bucket names and the SeaweedFS identities file.

Whether weed really enforces these identities is tested against a running store in test_seaweed.py
and test_objects.py.
"""

from __future__ import annotations

import json

import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.store.local.identities import (
    Credentials,
    identities_json,
    parse_zones,
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
