"""``fsdtrain launch slurm|torchrun|deepspeed|k8s``: one config -> a job file for a cluster.

The config is resolved as ``fsdtrain fit`` would resolve it (``--print_config`` of the same
LightningCLI, with the overrides after ``--`` and ``trainer.num_nodes``/``trainer.devices`` from
``--nodes``/``--gpus-per-node``), checked (:mod:`fsdtrain.launch.preflight`) and embedded in the job
file: a heredoc the job writes before it starts (SLURM, torchrun, DeepSpeed) or a ConfigMap
(Kubernetes). So the job runs the config as it was when rendered, whatever happens to the YAML
files later. ``--no-embed`` references the config file by path instead (it must then be readable
on every node): that is how the files in launch/ are made. Credentials are never written: the
files take them from the environment, an AWS profile or a Kubernetes Secret.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from fsdtrain.errors import ConfigError
from fsdtrain.launch.preflight import preflight
from fsdtrain.launch.templates import (
    FILE_NAMES,
    HOSTFILE,
    INGEST_FILE_NAMES,
    INGEST_TEMPLATES,
    PARTS,
    TEMPLATES,
)

__all__ = [
    "DEFAULT_IMAGE",
    "KINDS",
    "LaunchSpec",
    "RenderedJob",
    "resolve_config",
    "render_job",
    "hostfile",
    "launch",
    "IngestJobSpec",
    "render_ingest_job",
    "launch_ingest",
]

log = logging.getLogger(__name__)

KINDS = tuple(FILE_NAMES)
_HEREDOC = "FSDTRAIN_CONFIG"
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "WANDB_API_KEY")


def _version() -> str:
    try:
        return metadata.version("fsdtrain")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "latest"


#: the k8s job's image when --image is not given: launch/container/Dockerfile's image, tagged with
#: fsdtrain's version, under a registry name to replace (launch/container/README.md)
DEFAULT_IMAGE = f"registry.example.com/fsdtrain:{_version()}"


@dataclass
class LaunchSpec:
    """What to render.

    Args:
        kind: ``slurm``, ``torchrun``, ``deepspeed`` or ``k8s``.
        config: the ``fsdtrain fit`` config file.
        nodes: nodes (pods on Kubernetes).
        gpus_per_node: processes per node, one per GPU.
        overrides: ``fsdtrain fit`` flags applied on top of the config (``--trainer.max_steps 1000``).
        embed: write the resolved config into the job file; False references ``config`` by path.
        name: job name (SLURM job, rendezvous id, Kubernetes objects); default from the config's file name.
        image: container image with fsdtrain installed (Kubernetes); default :data:`DEFAULT_IMAGE`.
    """

    kind: str
    config: str
    nodes: int
    gpus_per_node: int
    overrides: list[str] = field(default_factory=list)
    embed: bool = True
    name: str | None = None
    image: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown launcher {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise ConfigError(f"--gpus-per-node must be >= 1, got {self.gpus_per_node}")
        if not Path(self.config).is_file():
            raise ConfigError(f"no config file at {self.config}")
        self.name = _job_name(self.name or f"fsdtrain-{Path(self.config).stem}")


@dataclass(frozen=True)
class RenderedJob:
    """A rendered job file: its name (as in launch/<kind>/), its text, and how to submit it."""

    kind: str
    file_name: str
    text: str
    submit: str
    notes: tuple[str, ...] = ()


def _job_name(text: str) -> str:
    """A name valid as a SLURM job, a rendezvous id and a Kubernetes object (DNS-1123 label)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50].strip("-")
    if not name or not name[0].isalpha():
        raise ConfigError(f"job name {text!r} must start with a letter; pass --name")
    return name


def resolve_config(config: str, overrides: list[str], nodes: int, gpus_per_node: int) -> dict:
    """The config ``fsdtrain fit --config config *overrides`` runs with on ``nodes`` x ``gpus_per_node``, every default filled in."""
    from fsdtrain.train.lightning_cli import FleetCLI

    args = ["fit", "--config", config, *overrides, "--trainer.num_nodes", str(nodes), "--trainer.devices", str(gpus_per_node), "--print_config"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            FleetCLI(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise ConfigError(f"{config}: the config does not resolve (fsdtrain fit --config {config} --print_config says why)") from None
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{config}: {str(exc).strip().splitlines()[0]}") from None
    resolved = yaml.safe_load(out.getvalue())
    if not isinstance(resolved, dict) or "trainer" not in resolved:
        raise ConfigError(f"{config}: not an fsdtrain fit config (no trainer section after resolving)")
    resolved.pop("ckpt_path", None)  # the job passes --ckpt_path last itself
    devices = resolved["trainer"].get("devices")
    if isinstance(devices, str) and devices.isdigit():  # jsonargparse keeps a number given on the command line as text
        resolved["trainer"]["devices"] = int(devices)
    return resolved


# a config field whose name says it holds a credential
_SECRET_FIELD = re.compile(r"(secret|password|passwd|token|api_?key|access_?key|credential|private_?key)", re.I)
# credentials recognised by their form, whichever zone's and whether or not this shell has them
_SECRET_FORMS = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an access key of fsdtrain's local store": re.compile(r"\bFSD[0-9A-F]{16}\b"),
    "a user name and password in a URL": re.compile(r"://[^/\s:@'\"]+:[^/\s@'\"]+@"),
    "a credential variable set to a value": re.compile(rf"\b(?:{'|'.join(_SECRET_ENV)})\s*[=:]\s*[^\s,}}]"),
}


def _secret_fields(node, path: str = "") -> list[str]:
    """Dotted names of the config fields named like a credential (``*secret*``, ``*token*``...) that hold a value."""
    if isinstance(node, dict):
        return [f for k, v in node.items() for f in _secret_fields(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [f for i, v in enumerate(node) for f in _secret_fields(v, f"{path}[{i}]")]
    return [path] if node not in (None, "") and _SECRET_FIELD.search(path.rsplit(".", 1)[-1]) else []


def _check_no_secrets(text: str, resolved: dict | None = None) -> None:
    """Refuses a job file that would hold a credential: this shell's keys by value, any key by its form
    (an access key id of AWS or of the local store, ``user:password@`` in a URL, ``AWS_SECRET_ACCESS_KEY=...``),
    and any config field named like one. Job files name the variables; the values stay in the environment."""
    fix = "keep credentials out of configs and flags: the job reads them from its environment (AWS_PROFILE, a secret store, a Kubernetes Secret)"
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8 and value in text:
            raise ConfigError(f"the rendered job would contain the value of ${name}; {fix}")
    for field_name in _secret_fields(resolved or {}):
        raise ConfigError(f"the rendered job would contain the credential in config field {field_name}; {fix}")
    for what, form in _SECRET_FORMS.items():
        found = form.search(text)
        if found:
            line = text.count("\n", 0, found.start()) + 1
            raise ConfigError(f"the rendered job would contain {what} (line {line} of the job file); {fix}")


def _store_env(kind: str, name: str = "", indent: int = 16) -> str:
    """Store settings from this shell: the endpoint and the bucket zones (never credentials); for
    Kubernetes, env entries at ``indent`` spaces, the key read from the Secret ``<name>-store``."""
    names = [n for n in ("AWS_ENDPOINT_URL", "AWS_REGION", "FSDTRAIN_BUCKET_ZONES") if os.environ.get(n)]
    if kind == "k8s":
        pad = " " * indent
        lines = [f"{pad}- name: {n}\n{pad}  value: {_yaml_str(os.environ[n])}" for n in names]
        if "AWS_ENDPOINT_URL" not in names:
            lines.insert(0, f"{pad}# EDIT: your S3 endpoint (SeaweedFS, MinIO, OSS); leave out for AWS S3\n"
                            f"{pad}# - name: AWS_ENDPOINT_URL\n{pad}#   value: http://seaweedfs.storage:8333")  # fmt: skip
        lines.append(f"{pad}# EDIT: the Secret holding this zone's store key (kubectl create secret generic {name}-store ...)")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            lines.append(f"{pad}- name: {key}\n{pad}  valueFrom: {{secretKeyRef: {{name: {name}-store, key: {key}, optional: true}}}}")
        return "\n".join(lines)
    lines = [f"export {n}={shlex.quote(os.environ[n])}" for n in names]
    if "AWS_ENDPOINT_URL" not in names:
        lines.insert(0, "# EDIT: your S3 endpoint (SeaweedFS, MinIO, OSS); leave out for AWS S3\n# export AWS_ENDPOINT_URL=http://store.example.com:8333")
    lines.append("# export AWS_PROFILE=fleet  # EDIT: or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from your secret store")
    return "\n".join(lines)


def _yaml_str(value: str) -> str:
    return yaml.safe_dump(value, default_style='"').strip()


def _config_block(spec: LaunchSpec, config_yaml: str, workdir: str) -> str:
    """Shell lines that set ``$CONFIG``: the embedded config written out, or the config file's path."""
    if not spec.embed:
        return f"# EDIT: the config, readable at this path on every node (a relative path: from where the job starts)\nCONFIG={shlex.quote(spec.config)}\n"
    if spec.kind == "torchrun":  # each node runs this file: each writes its own copy
        where = 'CONFIG=$(mktemp "${TMPDIR:-/tmp}/fsdtrain-config.XXXXXX")\ntrap \'rm -f "$CONFIG"\' EXIT\n'
    else:  # only the first node runs this file: the others read the copy in the (shared) workdir
        where = f'WORKDIR={shlex.quote(workdir)}\nmkdir -p "$WORKDIR"\nCONFIG="$WORKDIR/launch-config.yaml"\n'
    return (
        "# the resolved config (`fsdtrain launch` filled in every default): edit it here or render again\n"
        f"{where}cat > \"$CONFIG\" <<'{_HEREDOC}'\n{config_yaml}{_HEREDOC}\n"
    )


def _fill(template: str, values: dict[str, object]) -> str:
    def value(m: re.Match) -> str:
        assert m.group(1) in values, f"template key {m.group(1)} has no value"
        return str(values[m.group(1)])

    return re.sub(r"\{\{(\w+)\}\}", value, template)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def config_pieces(config: str | Path) -> dict[str, Path]:
    """The YAML files a config file references (a group given as a path, read from the config file's
    folder, e.g. ``net: model/demo_net.yaml``): relative path -> file, nested references included."""
    root = Path(config).parent
    found: dict[str, Path] = {}

    def walk(node, folder: Path) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v, folder)
        elif isinstance(node, list):
            for v in node:
                walk(v, folder)
        elif isinstance(node, str) and node.endswith((".yaml", ".yml")) and "://" not in node and (folder / node).is_file():
            path = (folder / node).resolve()
            rel = os.path.relpath(path, root.resolve())
            if rel not in found and not rel.startswith(".."):
                found[rel] = path
                walk(yaml.safe_load(path.read_text(encoding="utf-8")), path.parent)

    walk(yaml.safe_load(Path(config).read_text(encoding="utf-8")), root)
    return found


def _config_map_key(rel: str) -> str:
    """A ConfigMap key for a piece's relative path (keys allow only ``[-._a-zA-Z0-9]``)."""
    return re.sub(r"[^-._a-zA-Z0-9]", "--", rel)


def _k8s_parts(spec: LaunchSpec, values: dict, config_yaml: str, workdir: str) -> dict[str, str]:
    pieces = {} if spec.embed else config_pieces(spec.config)
    if spec.embed:
        config_map = "  config.yaml: |\n" + _indent(config_yaml, 4)
    else:  # a ConfigMap of the file as it is, with the pieces it references mounted at their relative paths
        config_map = "  # the config file as it is (EDIT: or kubectl create configmap NAME-config --from-file=config.yaml=...)\n"
        config_map += "  config.yaml: |\n" + _indent(Path(spec.config).read_text(encoding="utf-8"), 4)
        for rel, path in pieces.items():
            config_map += f"  # {rel}, which config.yaml references\n  {_config_map_key(rel)}: |\n" + _indent(path.read_text(encoding="utf-8"), 4)
    volume = f"configMap: {{name: {values['name']}-config}}"
    if pieces:
        items = ", ".join(f"{{key: {k}, path: {p}}}" for k, p in [("config.yaml", "config.yaml")] + [(_config_map_key(r), r) for r in pieces])
        volume = f"configMap: {{name: {values['name']}-config, items: [{items}]}}"
    extra = "".join(f", {_yaml_str(a)}" for a in ([] if spec.embed else spec.overrides))
    absolute = workdir.startswith("/")
    pod_values = {
        **values, "working_dir": "/workspace", "workdir_mount": workdir if absolute else "/workspace",
        "extra_list": extra, "k8s_store_env": _store_env("k8s", spec.name), "config_volume": volume,
    }  # fmt: skip
    pod = _fill(PARTS["k8s_pod"], pod_values)
    worker = _fill(PARTS["k8s_worker"], {**values, "worker_pod": pod}) if spec.nodes > 1 else ""
    return {"config_map": config_map.rstrip("\n"), "master_pod": pod, "worker": worker}


def render_job(spec: LaunchSpec, *, check_store: bool = True) -> RenderedJob:
    """Resolves and checks the config, then fills the job file template of ``spec.kind``."""
    resolved = resolve_config(spec.config, spec.overrides, spec.nodes, spec.gpus_per_node)
    report = preflight(resolved, nodes=spec.nodes, gpus_per_node=spec.gpus_per_node, check_store=check_store)
    resolved.setdefault("site", {})["zone"] = report.site_zone  # every node runs at the zone checked here
    config_yaml = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False)
    if any(line.strip() == _HEREDOC for line in config_yaml.splitlines()):
        raise ConfigError(f"the config contains a line {_HEREDOC}, which ends the job file's heredoc; rename that value")
    workdir = str(resolved.get("workdir") or "runs/fsdtrain")
    file_name = FILE_NAMES[spec.kind]
    workers = int((resolved.get("data") or {}).get("num_workers") or 0)
    values: dict[str, object] = {
        "title": f"fsdtrain {spec.kind} job `{spec.name}`, rendered by: fsdtrain launch {spec.kind} --config {spec.config} --nodes {spec.nodes} --gpus-per-node {spec.gpus_per_node}",
        "name": spec.name, "nodes": spec.nodes, "gpus": spec.gpus_per_node, "last_node": spec.nodes - 1, "workers": spec.nodes - 1,
        "file": file_name, "site_zone": report.site_zone, "cpus_per_task": workers + 1, "omp_threads": max(1, workers // 2 or 1),
        "image": spec.image or DEFAULT_IMAGE, "extra_args": "".join(f" {shlex.quote(a)}" for a in ([] if spec.embed else spec.overrides)),
    }  # fmt: skip
    if spec.kind == "k8s":
        values |= _k8s_parts(spec, values, config_yaml, workdir)
    else:
        values["env"] = _fill(PARTS["env"], {**values, "store_env": _store_env(spec.kind)})
        values["config_block"] = _config_block(spec, config_yaml, workdir)
    text = _fill(TEMPLATES[spec.kind], values)
    _check_no_secrets(text, resolved)
    submit = {
        "slurm": f"sbatch {file_name}",
        "torchrun": f"MASTER_ADDR=<first node> NODE_RANK=<0..{spec.nodes - 1}> bash {file_name}   # on each node",
        "deepspeed": f"HOSTFILE=hostfile bash {file_name}   # on the first node (hostfile: see hostfile.example)",
        "k8s": f"kubectl apply -f {file_name}",
    }[spec.kind]
    return RenderedJob(spec.kind, file_name, text, submit, report.notes)


def hostfile(nodes: int, gpus_per_node: int) -> str:
    """A DeepSpeed hostfile example for ``nodes`` hosts with ``gpus_per_node`` slots each."""
    return _fill(HOSTFILE, {"hosts": "\n".join(f"node{i:02d} slots={gpus_per_node}" for i in range(nodes))})


def _write_whole(path: Path, text: str, *, mode: int) -> None:
    """Writes ``path`` under a temporary name and renames it: an interrupted write never leaves a
    truncated job file under the real name (an old one stays as it was)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def launch(spec: LaunchSpec, *, out: str | None, dry_run: bool, check_store: bool = True) -> int:
    """The ``fsdtrain launch`` command: prints the job file (``dry_run``) or writes it and says how to submit it."""
    job = render_job(spec, check_store=check_store)
    for note in job.notes:
        log.info("pre-flight: %s", note)
    if dry_run:
        print(job.text, end="")
        return 0
    target = Path(out) if out else Path("launch-jobs") / spec.name / job.file_name
    if target.is_dir() or (out and out.endswith("/")):
        target = target / job.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_whole(target, job.text, mode=0o644 if spec.kind == "k8s" else 0o755)
    extra = ""
    if spec.kind == "deepspeed":
        hosts = target.parent / "hostfile.example"
        _write_whole(hosts, hostfile(spec.nodes, spec.gpus_per_node), mode=0o644)
        extra = f" (and {hosts})"
    print(f"fsdtrain: wrote {target}{extra}")
    print(f"fsdtrain: submit with: cd {target.parent} && {job.submit}")
    return 0


# --- ingest jobs: `fsdtrain launch slurm|k8s --parts N -- data write ...` ---------------------------


@dataclass
class IngestJobSpec:
    """An ingest job: ``fsdtrain data write`` in ``parts`` parallel parts (a SLURM array, a Kubernetes Indexed Job).

    Args:
        kind: ``slurm`` or ``k8s``.
        parts: the part count N; task/pod I runs ``--part I/N``.
        write_args: the ``fsdtrain data write`` flags every part runs with (checked by the CLI's parser),
            without ``--part`` or ``--publish``.
        cpus: CPUs per part (data write's ``--workers``).
        site_zone: the zone the job runs in (default ``$FSDTRAIN_SITE_ZONE`` or ``global``).
        name: job name; default ``fsdtrain-ingest``.
        image: container image with fsdtrain installed (Kubernetes); default :data:`DEFAULT_IMAGE`.
    """

    kind: str
    parts: int
    write_args: list[str]
    cpus: int = 1
    site_zone: str | None = None
    name: str | None = None
    image: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in INGEST_FILE_NAMES:
            raise ConfigError(f"an ingest job renders for {' or '.join(INGEST_FILE_NAMES)}, not {self.kind}: `fsdtrain launch slurm --parts N -- data write ...`")
        if self.parts < 1:
            raise ConfigError(f"--parts must be >= 1, got {self.parts}")
        if self.cpus < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.cpus}")
        taken = [a for a in self.write_args if a.split("=", 1)[0] in ("--part", "--publish")]
        if taken:
            raise ConfigError(f"the ingest job sets --part I/{self.parts} for each part itself: drop {taken[0]} after `-- data write`")
        self.name = _job_name(self.name or "fsdtrain-ingest")


def render_ingest_job(spec: IngestJobSpec) -> RenderedJob:
    """The SLURM array or Kubernetes Indexed Job that runs ``data write --part I/N`` for I = 1..N."""
    from fsdtrain.residency import resolve_site_zone

    file_name = INGEST_FILE_NAMES[spec.kind]
    site_zone = resolve_site_zone(spec.site_zone)
    store_env = _store_env(spec.kind, spec.name, indent=12)  # the Job's container sits two levels less deep than the PyTorchJob's
    values: dict[str, object] = {
        "title": f"fsdtrain ingest job `{spec.name}`, rendered by: fsdtrain launch {spec.kind} --parts {spec.parts} -- data write {shlex.join(spec.write_args)}",
        "name": spec.name, "parts": spec.parts, "file": file_name, "cpus": spec.cpus, "site_zone": site_zone,
        "image": spec.image or DEFAULT_IMAGE, "store_env": store_env, "k8s_store_env": store_env,
        "args": "".join(f" {shlex.quote(a)}" for a in spec.write_args), "args_list": "".join(f", {_yaml_str(a)}" for a in spec.write_args),
    }  # fmt: skip
    text = _fill(INGEST_TEMPLATES[spec.kind], values)
    _check_no_secrets(text)
    submit = {"slurm": f"sbatch {file_name}", "k8s": f"kubectl apply -f {file_name}"}[spec.kind]
    return RenderedJob(spec.kind, file_name, text, submit)


def launch_ingest(spec: IngestJobSpec, *, out: str | None, dry_run: bool) -> int:
    """``fsdtrain launch slurm|k8s --parts N -- data write ...``: prints the job file (``dry_run``) or writes it and says how to submit it."""
    job = render_ingest_job(spec)
    if dry_run:
        print(job.text, end="")
        return 0
    target = Path(out) if out else Path("launch-jobs") / spec.name / job.file_name
    if target.is_dir() or (out and out.endswith("/")):
        target = target / job.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_whole(target, job.text, mode=0o644 if spec.kind == "k8s" else 0o755)
    print(f"fsdtrain: wrote {target}")
    print(f"fsdtrain: submit with: cd {target.parent} && {job.submit}")
    return 0
