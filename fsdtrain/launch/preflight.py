"""Pre-flight checks of ``fsdtrain launch``: what would fail (or hang) on many nodes, found on the login node.

Each check raises a one-line :class:`~fsdtrain.errors.ConfigError` that says what to change:

- **counts**: ``trainer.num_nodes`` x ``trainer.devices`` of the resolved config are ``--nodes`` x
  ``--gpus-per-node`` (launchers and Lightning must agree, or ranks wait for peers that never come);
- **batch**: the global batch (``data.batch_size`` x accumulation x world size, or
  ``data.global_batch_size``) splits over the world size (:func:`fsdtrain.batching.plan_batches`);
- **site zone**: ``site.zone`` or ``$FSDTRAIN_SITE_ZONE`` is set, so every node runs at the same
  declared site (a node without one would run at ``global``), and no data URL is in a bucket tied to
  another zone (``FSDTRAIN_BUCKET_ZONES``; no request is made);
- **store**: the S3 endpoint (``AWS_ENDPOINT_URL`` or the AWS profile's) accepts a connection, and
  ``file://`` data exists. Where only compute nodes reach the store, ``--skip-store-check`` skips it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from fsdtrain.batching import plan_batches
from fsdtrain.errors import ConfigError
from fsdtrain.residency import SITE_ZONE_ENV, validate_zone
from fsdtrain.store.gate import ZoneGate

__all__ = ["PreflightReport", "preflight", "s3_endpoint"]

_SINGLE_PROCESS = ("single_device", "dp")


@dataclass(frozen=True)
class PreflightReport:
    """What the checks found: the site zone the job runs at and one line per check that passed."""

    site_zone: str
    notes: tuple[str, ...]


def _check_counts(trainer: dict, nodes: int, gpus_per_node: int) -> str:
    num_nodes, devices = trainer.get("num_nodes"), trainer.get("devices")
    if num_nodes != nodes or devices != gpus_per_node:
        raise ConfigError(
            f"the resolved config has trainer.num_nodes={num_nodes} and trainer.devices={devices}, but the job is "
            f"--nodes {nodes} x --gpus-per-node {gpus_per_node}: drop those overrides (fsdtrain launch sets both)"
        )
    strategy = trainer.get("strategy")
    if nodes * gpus_per_node > 1 and isinstance(strategy, str) and strategy in _SINGLE_PROCESS:
        raise ConfigError(f"trainer.strategy {strategy!r} runs one process; a {nodes * gpus_per_node}-process job needs ddp or deepspeed_stage_N")
    note = f"{nodes} node(s) x {gpus_per_node} process(es) = world size {nodes * gpus_per_node}, strategy {strategy}"
    if trainer.get("accelerator") == "cpu":
        note += "; trainer.accelerator is cpu (gloo): pass -- --trainer.accelerator gpu to train on the GPUs"
    return note


def _check_batch(config: dict, world: int) -> str:
    data, trainer = config.get("data") or {}, config.get("trainer") or {}
    global_batch = data.get("global_batch_size")
    accumulation = trainer.get("accumulate_grad_batches") or 1
    if global_batch is not None and accumulation == 1:
        accumulation = None  # derived from the global batch (the Trainer's default of 1 means unset)
    plan = plan_batches(micro_batch=int(data.get("batch_size") or 1), world_size=world, accumulation=accumulation, global_batch=global_batch)
    return plan.describe()


def _data_urls(config: dict) -> list[str]:
    data = config.get("data") or {}
    urls = [*(data.get("train") or []), *(data.get("val") or [])]
    init = (config.get("model") or {}).get("init_from")
    if isinstance(init, str) and init:
        urls.append(init)
    return [str(u) for u in urls]


def _check_zone(config: dict, environ) -> str:
    zone = ((config.get("site") or {}).get("zone")) or environ.get(SITE_ZONE_ENV)
    if not zone:
        raise ConfigError(
            f"no site zone: set site.zone in the config (or -- --site.zone ZONE) or {SITE_ZONE_ENV}, e.g. global or cn, "
            "so that every node runs at the same declared site (docs/residency.md)"
        )
    zone = validate_zone(zone, "site zone")
    ZoneGate(zone).check_urls(_data_urls(config))  # no bucket of a zone the site may not read
    return zone


def s3_endpoint() -> str:
    """The S3 endpoint boto3 would use here: ``AWS_ENDPOINT_URL(_S3)``, the profile's, or AWS's own."""
    import boto3

    session = boto3.session.Session()
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    return session.client("s3", region_name=region).meta.endpoint_url


def _reachable(endpoint: str, timeout_s: float) -> str | None:
    """None when ``endpoint`` accepts a TCP connection, else why not."""
    parsed = urlparse(endpoint)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return "not a URL"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return type(exc).__name__


def _check_store(config: dict, timeout_s: float) -> str:
    urls = _data_urls(config)
    s3 = [u for u in urls if u.startswith("s3://")]
    for url in urls:
        if url.startswith("s3://"):
            continue
        path = urlparse(url).path if url.startswith("file://") else url
        if not os.path.exists(path):
            raise ConfigError(f"pre-flight: {url} does not exist on this machine; fix the path, or pass --skip-store-check if only the compute nodes see it")
    if not s3:
        return f"{len(urls)} data location(s) on file://, all present"
    try:
        endpoint = s3_endpoint()
    except ValueError as exc:  # botocore: invalid endpoint URL
        raise ConfigError(f"pre-flight: AWS_ENDPOINT_URL is not a valid URL ({exc})") from None
    why = _reachable(endpoint, timeout_s)
    if why is not None:
        source = "AWS_ENDPOINT_URL" if os.environ.get("AWS_ENDPOINT_URL") else "the AWS default"
        raise ConfigError(
            f"pre-flight: the object store {endpoint} ({source}) is not reachable from this machine ({why}): start it or fix "
            "AWS_ENDPOINT_URL; where only compute nodes reach it, pass --skip-store-check"
        )
    return f"object store {endpoint} reachable ({len(s3)} s3:// location(s))"


def preflight(config: dict, *, nodes: int, gpus_per_node: int, check_store: bool = True, environ=None, timeout_s: float = 5.0) -> PreflightReport:
    """Runs every check on a resolved config (see the module docstring); the first failure raises."""
    env = os.environ if environ is None else environ
    notes = [_check_counts(config.get("trainer") or {}, nodes, gpus_per_node), _check_batch(config, nodes * gpus_per_node)]
    zone = _check_zone(config, env)  # a ResidencyError names the URL, its zone and the site zone
    notes.append(f"site zone {zone}")
    notes.append(_check_store(config, timeout_s) if check_store else "store check skipped (--skip-store-check)")
    return PreflightReport(zone, tuple(notes))
