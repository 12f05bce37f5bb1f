"""The metadata of a weights file (and of a checkpoint's ``fsdtrain.json``) as one typed record.

Weights files carry JSON metadata under the ``fsdtrain`` key (fsdtrain/weights/files.py).
:class:`WeightsMeta` is that JSON as a record: :meth:`WeightsMeta.from_dict` parses and checks it in
one place (type and range of every field; a bad value is a one-line
:class:`~fsdtrain.errors.ConfigError` naming the file and the field) and
:meth:`WeightsMeta.to_dict` gives back exactly the JSON dict it came from, so files written before
and after this record existed are interchangeable:

- every field is optional: a key a file lacks (weights written before ``trained_on_zones``, ``kind``
  or ``format`` existed, or by a test) reads as None, and readers fall back as they always have
  (:meth:`WeightsMeta.part_zones` to ``zones``; no ``kind`` is a full model);
- a key written as JSON null also reads as None, and is written back as null (``nulls``);
- keys this fsdtrain does not know (written by another version or tool) are kept aside, unchecked,
  in ``extra`` and written back unchanged: such files load. A newer ``format`` is refused, as its
  known keys may mean something else.

Records are frozen: writers make them with :meth:`WeightsMeta.of` and change them with
:meth:`WeightsMeta.updated`, both checked like :meth:`WeightsMeta.from_dict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from fsdtrain.errors import ConfigError
from fsdtrain.residency import SITE_ZONE_ENV, ResidencyError, check_zone, validate_zone

__all__ = ["FORMAT", "HEAD_KIND", "HEAD_FIELDS", "LINEAGE_FIELDS", "WeightsMeta"]

FORMAT = 1  # the metadata layout this fsdtrain writes and reads
HEAD_KIND = "head"  # ``kind`` of a head-only file (fsdtrain/weights/head_only.py); a full model has none
HEAD_FIELDS = ("kind", "head_only", "backbone_sha256", "backbone_source", "sizes")  # only head-only files have these
LINEAGE_FIELDS = ("weights", "zones", "trained_on_zones", "manifests", "git_sha", "artifact")  # ``parent``: what a child records of its starting weights
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WRITING = "(metadata being written)"  # source of records made in code


@dataclass(frozen=True)
class WeightsMeta:
    """Metadata of a weights file (the ``fsdtrain`` key of its safetensors header) or of a checkpoint
    (``fsdtrain.json``). Every field is None when the file does not record it.

    Args:
        format: version of the metadata layout (:data:`FORMAT`); written by every run.
        net: the model config (``ModelConfig`` as a dict, :mod:`fsdtrain.model.driving`).
        cameras: camera names, in the order the model reads them.
        window: the ``WindowSpec`` the model was trained on, as a dict (:mod:`fsdtrain.format.windows`).
        heads: head names of the model, ``global`` first.
        trained_heads: heads that trained in the run that wrote it (all heads unless a fine-tune named some).
        zones: zones of all data the weights learned from, the starting weights' included.
        trained_on_zones: part (``backbone`` or a head name) -> zones of the data that part learned
            from (docs/residency.md); absent in weights from before per-part zones.
        site_zone: zone of the site the run ran at.
        countries_trained: countries of all data the weights learned from, the starting weights' included.
        manifests: manifest URL -> sha256 of the manifests the run read.
        git_sha: git SHA of the fsdtrain source the run ran from.
        parent: lineage of the starting weights of a fine-tune (``init_from``): a record holding only
            their :data:`LINEAGE_FIELDS` (:meth:`lineage`); None for a run from scratch.
        artifact: the W&B model artifact (``<project>/model-<run id>:weights``) of the run's weights.
        global_step: optimizer step the weights are from.
        epoch: epoch of the checkpoint (``fsdtrain.json``, and weights exported from it).
        world_size: ranks of the run that wrote the checkpoint.
        strategy: Lightning strategy class of that run (``FleetDeepSpeedStrategy``, ``DDPStrategy``, ...).
        config: the run's resolved config (``config.yaml``); set by export from a checkpoint, null
            when the checkpoint had no ``config.yaml``.
        checkpoint: the checkpoint the weights were exported from.
        weights: path the file was written to.
        backbone_weights: the weights file a head-only file was put back on (export ``--head``).
        exported_from: what ``fsdtrain export`` read (checkpoint or weights file).
        exported_for_zone: zone ``fsdtrain export`` wrote the file for.
        kind: ``head`` for a head-only file; None for a full model.
        head_only: heads a head-only file holds.
        backbone_sha256: hash of every tensor outside ``head_only`` of the model a head-only file was
            trained in (:func:`fsdtrain.weights.head_only.backbone_hash`): the backbone it needs.
        backbone_source: where that backbone came from (the fine-tune's ``init_from``), when known.
        sizes: bytes of the files written with a head-only file (``full_weights_bytes``,
            ``checkpoint_bytes``).
        extra: keys this fsdtrain does not know (another version or tool wrote them), kept as read
            and written back unchanged.
        nulls: fields written as JSON null (None otherwise means absent), so that a file re-written
            keeps its bytes.
        source: where the record was read from (a file), named in error messages; not written.
    """

    format: int | None = None
    net: dict[str, Any] | None = None
    cameras: list[str] | None = None
    window: dict[str, Any] | None = None
    heads: list[str] | None = None
    trained_heads: list[str] | None = None
    zones: list[str] | None = None
    trained_on_zones: dict[str, list[str]] | None = None
    site_zone: str | None = None
    countries_trained: list[str] | None = None
    manifests: dict[str, str] | None = None
    git_sha: str | None = None
    parent: WeightsMeta | None = None
    artifact: str | None = None
    global_step: int | None = None
    epoch: int | None = None
    world_size: int | None = None
    strategy: str | None = None
    config: dict[str, Any] | None = None
    checkpoint: str | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    exported_from: str | None = None
    exported_for_zone: str | None = None
    kind: str | None = None
    head_only: list[str] | None = None
    backbone_sha256: str | None = None
    backbone_source: str | None = None
    sizes: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    nulls: frozenset[str] = frozenset()
    source: str = field(default="", compare=False, repr=False)

    # --- reading and writing ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Any, source: str, *, _prefix: str = "") -> WeightsMeta:
        """Parses and checks the metadata JSON ``d`` read from ``source`` (named in errors).

        Raises ConfigError (one line: ``source``, the field, what it must be and what it is) for a
        value of the wrong type or range, or metadata of a newer ``format``. Unknown keys are kept
        in ``extra``.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: weights metadata{f' field {_prefix[:-1]!r}' if _prefix else ''} must be a JSON object, got {_short(d)}")
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        nulls: set[str] = set()
        for key, value in d.items():
            if key not in _CHECKS:
                extra[key] = _plain(value)
            elif value is None:
                nulls.add(key)
            elif key == "parent":
                known[key] = value if isinstance(value, WeightsMeta) else cls.from_dict(value, source, _prefix=f"{_prefix}parent.")
            else:
                value = _plain(value)
                problem = _CHECKS[key](value)
                if problem is not None:
                    raise ConfigError(f"{source}: weights metadata field {_prefix + key!r} {problem}, got {_short(value)}")
                known[key] = _plain(value)
        problems = _consistency(known)
        if problems:
            raise ConfigError(f"{source}: weights metadata {problems[0]}")
        return cls(**known, extra=extra, nulls=frozenset(nulls), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The metadata JSON: every recorded field (None ones in ``nulls`` as null) plus ``extra``."""
        out: dict[str, Any] = {}
        for name in _CHECKS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict() if isinstance(value, WeightsMeta) else _plain(value)
            elif name in self.nulls:
                out[name] = None
        out.update(_plain(self.extra))
        return out

    @classmethod
    def of(cls, **values: Any) -> WeightsMeta:
        """A record of exactly these fields (None: written as null), checked like :meth:`from_dict`."""
        _known_names(values)
        return cls.from_dict(values, _WRITING)

    def updated(self, **changes: Any) -> WeightsMeta:
        """This record with ``changes`` (None: written as null), checked like :meth:`from_dict`."""
        _known_names(changes)
        return type(self).from_dict({**self.to_dict(), **changes}, self.source or _WRITING)

    def without(self, *names: str) -> WeightsMeta:
        """This record without the fields ``names`` (neither value nor null is written)."""
        _known_names(dict.fromkeys(names))
        return type(self).from_dict({k: v for k, v in self.to_dict().items() if k not in names}, self.source)

    def require(self, *names: str) -> None:
        """One-line ConfigError naming the file when any field of ``names`` is not recorded."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{self.source or 'weights metadata'}: records no {', '.join(missing)}; "
                "give weights written by `fsdtrain fit` or `fsdtrain export`"
            )

    # --- what readers derive from it ------------------------------------------------------------

    @property
    def is_head_only(self) -> bool:
        """A head-only file (``kind`` ``head``): heads without the backbone they need."""
        return self.kind == HEAD_KIND

    def part_zones(self, parts: list[str]) -> dict[str, list[str]]:
        """Zones each of ``parts`` was trained on (``trained_on_zones``; weights written before it
        have only ``zones``, which then count for every part)."""
        per_part = self.trained_on_zones or {}
        return {p: list(per_part.get(p, self.zones or [])) for p in parts}

    def trained_zones(self) -> list[str]:
        """Every zone the weights learned from: ``zones``, each part's ``trained_on_zones`` and the parent's."""
        zones = set(self.zones or [])
        for part in (self.trained_on_zones or {}).values():
            zones |= set(part)
        if self.parent is not None:
            zones |= set(self.parent.trained_zones())
        return sorted(zones)

    def check_site(self, site_zone: str, use: str) -> None:
        """Raises :class:`~fsdtrain.residency.ResidencyError` (one line naming the file) unless a job at
        ``site_zone`` may ``use`` these weights: each zone they were trained on is ``global`` or the site's
        (weights learned from a zone's data stay in it, docs/residency.md), or ``fsdtrain export`` wrote
        them for ``site_zone`` (``exported_for_zone``: the export policy let them leave their zones).
        Weights that record no zone (written by hand or by tests) pass."""
        if self.exported_for_zone == site_zone:
            return
        for zone in self.trained_zones():
            try:
                check_zone(self.source, zone, site_zone)
            except ResidencyError:
                raise ResidencyError(
                    f"residency: {self.source or 'these weights'} were trained on zone '{zone}' data and may not be used "
                    f"({use}) at site zone '{site_zone}'; run it at a '{zone}' site (site.zone / {SITE_ZONE_ENV}={zone})"
                ) from None

    def lineage(self) -> WeightsMeta:
        """What a run started from these weights records of them as its ``parent``: every
        :data:`LINEAGE_FIELDS` field, null where these weights do not record it."""
        return WeightsMeta.of(**{name: getattr(self, name) for name in LINEAGE_FIELDS})


# --- checks: each returns what is wrong with a value (not None), or None ---------------------------


def _plain(value: Any) -> Any:
    """A copy of ``value`` as JSON reads it back (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_zone(v: Any) -> bool:
    try:
        validate_zone(v)
    except ConfigError:
        return False
    return True


def _int_from(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if _is_int(v) and v >= low else f"must be an integer >= {low}"


def _format(v: Any) -> str | None:
    if _is_int(v) and v > FORMAT:
        return f"is from a newer fsdtrain (this one reads metadata format {FORMAT} and older); upgrade fsdtrain to read it"
    return None if _is_int(v) and v >= 1 else f"must be an integer from 1 to {FORMAT}"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _names(*, nonempty: bool = False, unique: bool = False) -> Callable[[Any], str | None]:
    what = f"must be a{' non-empty' if nonempty else ''} list of{' distinct' if unique else ''} names"

    def check(v: Any) -> str | None:
        ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
        ok = ok and (v or not nonempty) and (len(set(v)) == len(v) or not unique)
        return None if ok else what

    return check


def _zone(v: Any) -> str | None:
    return None if _is_zone(v) else "must be a zone name (lower-case letters, digits and '-', e.g. 'global' or 'cn')"


def _zones(v: Any) -> str | None:
    return None if isinstance(v, list) and all(_is_zone(z) for z in v) else "must be a list of zone names (like ['cn', 'global'])"


def _part_zones(v: Any) -> str | None:
    ok = isinstance(v, dict) and all(isinstance(p, str) and p and _zones(z) is None for p, z in v.items())
    return None if ok else "must map parts ('backbone', head names) to lists of zone names"


def _mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) and all(isinstance(k, str) for k in v) else "must be a mapping with string keys"


def _record_problem(cls: type, v: dict[str, Any]) -> str | None:
    """What is wrong with ``v`` as the fields of the dataclass ``cls``: an unknown key, or a value its checks refuse."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(v) - set(known))
    if unknown:
        return f"has unknown key {unknown[0]!r} ({cls.__name__} fields are {', '.join(known)})"
    try:
        cls(**v)
    except (ConfigError, TypeError, ValueError) as exc:
        text = str(exc).strip()
        return f"is not a valid {cls.__name__} ({text.splitlines()[0] if text else type(exc).__name__})"
    return None


def _net(v: Any) -> str | None:
    if _mapping(v) is not None:
        return "must be a model config mapping (ModelConfig fields)"
    if "heads" in v and _names(nonempty=True)(v["heads"]) is not None:
        return "must have 'heads' as a list of head names"
    from fsdtrain.model.driving import ModelConfig

    return _record_problem(ModelConfig, v)


def _window(v: Any) -> str | None:
    ok = _mapping(v) is None and all((_is_int(x) or isinstance(x, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v.values())
    if not ok:
        return "must map window fields (history, horizon_s, ...) to positive numbers"
    from fsdtrain.format.windows import WindowSpec

    return _record_problem(WindowSpec, v)


def _strings(v: Any) -> str | None:
    ok = isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())
    return None if ok else "must map manifest URLs to sha256 strings"


def _sizes(v: Any) -> str | None:
    ok = isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) and x >= 0 for k, x in v.items())
    return None if ok else "must map names to byte counts (integers >= 0)"


def _kind(v: Any) -> str | None:
    return None if v == HEAD_KIND else f"must be {HEAD_KIND!r} (a head-only file) or absent (a full model)"


def _sha256(v: Any) -> str | None:
    return None if isinstance(v, str) and _SHA256.match(v) else "must be a sha256 (64 lower-case hex digits)"


def _parent(v: Any) -> str | None:  # parsed by from_dict; here only for the list of fields
    return None


# every known field, in the order of WeightsMeta's fields
_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "format": _format,
    "net": _net,
    "cameras": _names(nonempty=True),
    "window": _window,
    "heads": _names(nonempty=True, unique=True),
    "trained_heads": _names(unique=True),
    "zones": _zones,
    "trained_on_zones": _part_zones,
    "site_zone": _zone,
    "countries_trained": _names(),
    "manifests": _strings,
    "git_sha": _text,
    "parent": _parent,
    "artifact": _text,
    "global_step": _int_from(0),
    "epoch": _int_from(0),
    "world_size": _int_from(1),
    "strategy": _text,
    "config": _mapping,
    "checkpoint": _text,
    "weights": _text,
    "backbone_weights": _text,
    "exported_from": _text,
    "exported_for_zone": _zone,
    "kind": _kind,
    "head_only": _names(nonempty=True, unique=True),
    "backbone_sha256": _sha256,
    "backbone_source": _text,
    "sizes": _sizes,
}
assert list(_CHECKS) == [f.name for f in fields(WeightsMeta)][: len(_CHECKS)], "one check per field, in field order"


def _consistency(known: dict[str, Any]) -> list[str]:
    """What is wrong between fields (each checked on its own already)."""
    problems = []
    heads, trained = known.get("heads"), known.get("trained_heads")
    if heads is not None and trained is not None and not set(trained) <= set(heads):
        problems.append(f"field 'trained_heads' {_short(trained)} names heads not in 'heads' {_short(heads)}")
    if known.get("kind") == HEAD_KIND:
        missing = [n for n in ("head_only", "backbone_sha256") if n not in known]
        if missing:
            problems.append(f"of a head-only file (kind 'head') lacks {' and '.join(repr(n) for n in missing)}")
    elif "head_only" in known:
        problems.append("field 'head_only' is set but 'kind' is not 'head'")
    return problems


def _known_names(values: dict[str, Any]) -> None:
    unknown = [k for k in values if k not in _CHECKS]
    if unknown:
        raise TypeError(f"WeightsMeta has no field {', '.join(unknown)}")
