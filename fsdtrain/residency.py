"""Data residency: which zones a job may read, and which trained parts may leave their zone.

docs/residency.md: a job runs at a site with a zone (``site.zone`` or ``FSDTRAIN_SITE_ZONE``;
``global`` when undeclared). It may read a shard only when the shard's zone is ``global`` or
equals the site zone. This module holds the rules; :class:`fsdtrain.store.gate.ZoneGate` applies
them before the first byte of any fleet data is requested, and keeps the audit log.

A country's zone is not a free field: :data:`COUNTRY_ZONES` is the policy (``CN`` -> ``cn``, every other
country ``global``), and :func:`zone_of_country` / :func:`check_country_zone` are the only way writers,
``data verify`` and the loader decide which zone a clip, a drive or a manifest of a country belongs to.

Weights carry the zones each part was trained on (``trained_on_zones``: ``backbone`` and each head);
:class:`ExportPolicy` says which parts may leave the zone of their data, and ``fsdtrain export``
enforces it (:func:`check_export`) from the weights' metadata, before their tensors are read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fsdtrain.errors import ConfigError, FsdtrainError

__all__ = [
    "GLOBAL_ZONE",
    "COUNTRY_ZONES",
    "ResidencyError",
    "ExportPolicy",
    "check_zone",
    "check_country_zone",
    "zone_of_country",
    "check_export",
    "resolve_site_zone",
    "validate_zone",
    "SITE_ZONE_ENV",
]

GLOBAL_ZONE = "global"
SITE_ZONE_ENV = "FSDTRAIN_SITE_ZONE"
_ZONE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

COUNTRY_ZONES: dict[str, str] = {"CN": "cn"}
"""The residency policy: country (ISO 3166-1 alpha-2) -> the zone its data must stay in. A country not
listed is ``global``. Changing it is a policy decision (docs/residency.md), not a setting."""


class ResidencyError(FsdtrainError):
    """A job tried to read data whose zone does not allow this site."""


def validate_zone(zone: str, what: str = "zone") -> str:
    """Returns ``zone`` when it is a valid zone name (lower case, e.g. ``global``, ``cn``)."""
    if not isinstance(zone, str) or not _ZONE_RE.match(zone):
        raise ConfigError(f"{what} {zone!r} is not a zone name: use lower-case letters, digits and '-', e.g. 'global' or 'cn'")
    return zone


def zone_of_country(country: str) -> str:
    """The zone the residency policy puts ``country``'s data in (``CN`` -> ``cn``, others ``global``)."""
    return COUNTRY_ZONES.get(country, GLOBAL_ZONE)


def check_country_zone(country: str, zone: str) -> str | None:
    """None when ``zone`` is the policy's zone for ``country``, else the one-line reason it is not
    (callers prefix the file and field and raise their own error type)."""
    want = zone_of_country(country)
    if zone == want:
        return None
    return f"zone {zone!r} is not the residency policy's zone {want!r} for country {country} (docs/residency.md); data of {country} belongs in zone {want!r}"


def resolve_site_zone(configured: str | None = None) -> str:
    """The zone this job runs in: the configured one, else ``$FSDTRAIN_SITE_ZONE``, else ``global``."""
    zone = configured or os.environ.get(SITE_ZONE_ENV) or GLOBAL_ZONE
    return validate_zone(zone, "site zone")


def check_zone(url: str, data_zone: str, site_zone: str) -> None:
    """Raises :class:`ResidencyError` unless a job at ``site_zone`` may read data of ``data_zone``."""
    if data_zone == GLOBAL_ZONE or data_zone == site_zone:
        return
    raise ResidencyError(
        f"residency: {url} is in zone '{data_zone}' but this job runs at site zone '{site_zone}'; "
        f"run it at a '{data_zone}' site (site.zone / {SITE_ZONE_ENV}={data_zone}) or drop that data"
    )


@dataclass
class ExportPolicy:
    """Which parts of trained weights may leave the zone of the data they were trained on.

    Args:
        allow: data zone -> parts (head names such as ``CN``, or ``backbone``) whose weights, trained
            on that zone's data, may be exported outside it. A part not listed never leaves: exporting
            it needs a job at a site in that zone writing for that zone. Empty (the default): nothing
            trained on restricted data leaves its zone.
    """

    allow: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for zone, parts in self.allow.items():
            validate_zone(zone, "export policy zone")
            if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
                raise ConfigError(f"export policy: zone {zone!r} needs a list of parts (head names or 'backbone'), got {parts!r}")

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> ExportPolicy:
        """From a YAML file mapping zone -> parts (``cn: [CN]``); None gives the empty policy."""
        if path is None:
            return cls()
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"export policy {path}: unreadable ({type(exc).__name__}); give a YAML file like 'cn: [CN]'") from None
        if not isinstance(data, dict):
            raise ConfigError(f"export policy {path}: must map zones to parts, like 'cn: [CN]'")
        return cls(allow={str(k): v for k, v in data.items()})


def check_export(zones_by_part: dict[str, list[str]], *, site_zone: str, dest_zone: str, policy: ExportPolicy, source: str) -> None:
    """Raises :class:`ResidencyError` unless every part may be read at ``site_zone`` and written for
    ``dest_zone``: each restricted zone it was trained on equals both, or the policy lets the part leave it.
    ``zones_by_part`` comes from the weights' metadata (:meth:`fsdtrain.weights.metadata.WeightsMeta.part_zones`)."""
    for part, zones in sorted(zones_by_part.items()):
        for zone in zones:
            if zone == GLOBAL_ZONE or (zone == site_zone == dest_zone) or part in policy.allow.get(zone, []):
                continue
            where = f"this export runs at site zone '{site_zone}'" if site_zone != zone else f"this export is for zone '{dest_zone}'"
            raise ResidencyError(
                f"residency: {part} in {source} was trained on zone '{zone}' data and may not leave it, but {where}; "
                f"export it at a '{zone}' site for '{zone}' (--site.zone/--dest-zone {zone}), or allow it in the export policy "
                f"('{zone}: [{part}]') if your approval lets it leave"
            )
