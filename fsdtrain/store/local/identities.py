"""Who may do what in the local store: S3 key pairs, per-zone buckets and SeaweedFS identities.

docs/residency.md: the object store enforces residency too, because each zone's bucket has its own
credentials. A :class:`~fsdtrain.store.local.seaweed.LocalStore` given ``zones={"global": "fleet-global",
"cn": "fleet-cn"}`` runs with one admin identity (every action on every bucket) and one identity per
zone whose actions are scoped to that zone's bucket alone::

    {"name": "zone-cn", "credentials": [...], "actions": ["Read:fleet-cn", "Write:fleet-cn", "List:fleet-cn"]}

so the ``cn`` key reads, writes and lists ``fleet-cn`` and gets AccessDenied everywhere else.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from fsdtrain.errors import ConfigError
from fsdtrain.residency import validate_zone

__all__ = ["Credentials", "ZONE_ACTIONS", "parse_zones", "validate_bucket", "validate_zones", "identities_json"]

ZONE_ACTIONS: tuple[str, ...] = ("Read", "Write", "List")
"""SeaweedFS actions a zone key holds, each scoped to its bucket (``Read:fleet-cn``)."""
_ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
# S3 bucket naming rules (the subset every S3 implementation accepts): 3-63 characters, lower-case
# letters, digits, '-' and '.', starting and ending with a letter or digit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Credentials:
    """One S3 key pair. The secret is left out of ``repr``, so it never reaches a log by accident."""

    access_key: str
    """The access key id (``AWS_ACCESS_KEY_ID``)."""
    secret_key: str = field(repr=False)
    """The secret key (``AWS_SECRET_ACCESS_KEY``)."""

    @classmethod
    def random(cls) -> Credentials:
        """A fresh random pair: a 19-character access key id and a 40-hex-digit secret."""
        return cls(access_key="FSD" + secrets.token_hex(8).upper(), secret_key=secrets.token_hex(20))


def validate_bucket(name: str, what: str = "bucket") -> str:
    """Returns ``name`` when it is a valid S3 bucket name, else raises ConfigError saying the rule."""
    if not isinstance(name, str) or not _BUCKET_RE.match(name) or ".." in name:
        raise ConfigError(
            f"{what} {name!r} is not an S3 bucket name: use 3-63 lower-case letters, digits, '-' or '.', "
            "starting and ending with a letter or digit, e.g. 'fleet-cn'"
        )
    return name


def validate_zones(zones: Mapping[str, str]) -> dict[str, str]:
    """Checks a zone -> bucket mapping: valid zone and bucket names, one bucket per zone."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for zone, bucket in zones.items():
        validate_zone(zone, "zone")
        validate_bucket(bucket, f"bucket of zone '{zone}'")
        if bucket in owner:
            raise ConfigError(
                f"zones '{owner[bucket]}' and '{zone}' both use bucket '{bucket}': each zone needs its own bucket"
            )
        owner[bucket] = zone
        out[zone] = bucket
    return out


def parse_zones(text: str) -> dict[str, str]:
    """``"global=fleet-global,cn=fleet-cn"`` -> ``{"global": "fleet-global", "cn": "fleet-cn"}``.

    Raises:
        ConfigError: an entry is not ``zone=bucket``, a name is invalid, or a zone or bucket repeats.
    """
    zones: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        zone, sep, bucket = (s.strip() for s in item.partition("="))
        if not sep or not zone or not bucket:
            raise ConfigError(f"--zones entry {item!r} is not zone=bucket; write e.g. --zones global=fleet-global,cn=fleet-cn")
        if zone in zones:
            raise ConfigError(f"--zones names zone '{zone}' twice; give each zone one bucket")
        zones[zone] = bucket
    if not zones:
        raise ConfigError(f"--zones {text!r} names no zone; write e.g. --zones global=fleet-global,cn=fleet-cn")
    return validate_zones(zones)


def identities_json(admin: Credentials, zone_keys: Mapping[str, tuple[str, Credentials]]) -> str:
    """SeaweedFS ``-s3.config`` JSON: the admin identity, then one identity per zone.

    Args:
        admin: the key pair with every action on every bucket (creates the zone buckets).
        zone_keys: zone -> (its bucket, its key pair); the pair may only read, write and list that bucket.
    """

    def identity(name: str, creds: Credentials, actions: list[str]) -> dict:
        return {"name": name, "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}], "actions": actions}

    identities = [identity("fsdtrain-admin", admin, list(_ADMIN_ACTIONS))]
    for zone, (bucket, creds) in zone_keys.items():
        identities.append(identity(f"zone-{zone}", creds, [f"{action}:{bucket}" for action in ZONE_ACTIONS]))
    return json.dumps({"identities": identities}, indent=2)
