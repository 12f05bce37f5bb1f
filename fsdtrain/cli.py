"""``fsdtrain`` command line (docs/cli.md). Dispatches; the work lives in the modules it calls.

User errors (:class:`~fsdtrain.errors.FsdtrainError`, bad flags) print one line and exit 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from importlib import metadata

from fsdtrain import stopping
from fsdtrain.errors import ConfigError, FsdtrainError
from fsdtrain.logs import LEVEL_ENV, LEVELS, setup_logging
from fsdtrain.progress import Progress

__all__ = ["main"]

_LIGHTNING_COMMANDS = ("fit", "validate", "test")
_REPLACE_HELP = "replace the dataset already in the <split>/<country> folders written; the old one stays readable until the new one is complete"
_LOG_LEVEL_HELP = f"operations output on stderr: {', '.join(LEVELS)} (default $FSDTRAIN_LOG_LEVEL or INFO); any command, before or after its name"

_FINETUNE_HELP = """\
usage: fsdtrain finetune --config CONFIG --from WEIGHTS [fit options]

Fine-tunes a country head from pretrained weights: fsdtrain fit with --model.init_from WEIGHTS, all
but the config's model.finetune.train_heads frozen (docs/fine-tuning.md).

  --from WEIGHTS  the model.safetensors of the pretraining run (required)
  --config CONFIG the fine-tune config, e.g. configs/finetune_cn.yaml

Every other option is fsdtrain fit's, below.
"""

log = logging.getLogger(__name__)


def _countries(text: str) -> list[str]:
    return [c.strip().upper() for c in text.split(",") if c.strip()]


def _heads(text: str) -> list[str]:
    """``CN,global`` -> head names: country codes upper case, ``global`` as is."""
    return [h.lower() if h.lower() == "global" else h.upper() for h in (x.strip() for x in text.split(",")) if h]


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: still works (one release), with a warning naming the new one."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        log.warning("%s is deprecated and goes away in the next release; write %s", option_string, self.new)
        setattr(namespace, self.dest, values)


def _site_zone_flag(parser: argparse.ArgumentParser) -> None:
    """``--site.zone``: one spelling for every command (as ``fsdtrain fit --site.zone``); ``--site-zone`` still works."""
    parser.add_argument("--site.zone", dest="site_zone", default=None, metavar="ZONE", help="zone this job runs in (default $FSDTRAIN_SITE_ZONE or global)")
    parser.add_argument("--site-zone", dest="site_zone", action=_DeprecatedFlag, new="--site.zone", help=argparse.SUPPRESS)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that says, after each flag's text, whether it is required and its default (unless the default
    is None, False or already named in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text == argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            text += " (required)"
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)  # 0 is shown
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`_HelpFormatter`; sub-command parsers are made of the same class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _version() -> str:
    try:
        return f"fsdtrain {metadata.version('fsdtrain')}"
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "fsdtrain (version unknown: not installed; pip install -c constraints.txt -e .)"


def _wandb_flags(parser: argparse.ArgumentParser) -> None:
    """``--wandb.*`` of ``fsdtrain eval``, spelled and resolved as ``fit``'s (docs/wandb.md, Settings and precedence)."""
    w = parser.add_argument_group("W&B", "the eval run (job type eval); unset values come from WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR")
    w.add_argument("--wandb.mode", dest="wandb_mode", default=None, metavar="MODE", help="offline, online or disabled (nothing written); default $WANDB_MODE, else offline")
    w.add_argument("--wandb.project", dest="wandb_project", default=None, metavar="NAME", help="W&B project (default $WANDB_PROJECT or fsdtrain)")
    w.add_argument("--wandb.entity", dest="wandb_entity", default=None, metavar="NAME", help="W&B team or user (default $WANDB_ENTITY)")
    w.add_argument("--wandb.group", dest="wandb_group", default=None, metavar="NAME", help="run group: the experiment's pretrain, finetune and eval runs")
    w.add_argument("--wandb.name", dest="wandb_name", default=None, metavar="NAME", help="run name (default: W&B chooses)")
    w.add_argument("--wandb.tags", dest="wandb_tags", default=None, metavar="A,B", help="run tags, comma-separated (or [a,b] as fit takes them)")
    w.add_argument("--wandb.notes", dest="wandb_notes", default=None, metavar="TEXT", help="a line about the run")
    w.add_argument("--wandb.dir", dest="wandb_dir", default=None, metavar="DIR", help="folder for wandb/ (default $WANDB_DIR, else the folder of --out, else the current one)")
    w.add_argument("--wandb.base_url", dest="wandb_base_url", default=None, metavar="URL", help="self-hosted W&B server")
    w.add_argument("--wandb.zone", dest="wandb_zone", default=None, metavar="ZONE", help="zone the --wandb.base_url server is in (camera frames go only to their own zone)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fsdtrain", description="Train end-to-end driving models on sharded fleet video.")
    p.add_argument("--version", action="version", version=_version(), help="print fsdtrain's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store = sub.add_parser("store", help="object store: run a local one, check one").add_subparsers(dest="store_command", required=True, metavar="ACTION")
    serve = store.add_parser("serve", help="run a SeaweedFS S3 endpoint on loopback; prints the export AWS_... lines")
    serve.add_argument("--dir", default=None, help="data directory (default: a temporary one, removed on exit)")
    serve.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")
    serve.add_argument("--zones", default=None, help="zone=bucket,... e.g. global=fleet-global,cn=fleet-cn: one key per zone, alone allowed on its bucket")
    check = store.add_parser("check", help="put, get, range get, list and delete under a scratch prefix of URL, with latency and throughput; exit 1 on a failure")
    check.add_argument("url", metavar="URL", help="s3://bucket/prefix (or file:///path) to check; the scratch objects go under URL/.fsdtrain-check/ and are deleted")
    check.add_argument("--foreign-profile", default=None, metavar="PROFILE", help="profile of the shared credentials file holding another zone's key: the store must refuse it on URL's bucket (default: not checked)")
    check.add_argument("--size-mb", type=float, default=8.0, help="size of the large object for put/get throughput, MiB (default 8)")
    _site_zone_flag(check)

    data = sub.add_parser("data", help="fleet data: synthesize, ingest raw drives, inspect, verify").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data.add_parser("synth", help="write a seeded synthetic fleet of clips")
    synth.add_argument("--out", required=True, help="dataset URL: s3://bucket/dataset or file:///path/dataset")
    synth.add_argument("--countries", required=True, type=_countries, help="comma-separated ISO codes, e.g. CN,US,DE")
    synth.add_argument("--clips", required=True, type=int, help="clips per country")
    synth.add_argument("--clips-per-shard", type=int, default=8, help="clips in one tar shard")
    synth.add_argument("--split", default="train", help="split folder the clips go to: train, val or test")
    synth.add_argument("--seed", type=int, default=0, help="seed of the whole fleet: the same seed writes the same clips")
    synth.add_argument("--seconds", type=float, default=10.0, help="clip length")
    synth.add_argument("--fps", type=float, default=10.0, help="frame rate")
    synth.add_argument("--width", type=int, default=160, help="image width, pixels (even)")
    synth.add_argument("--height", type=int, default=96, help="image height, pixels (even)")
    synth.add_argument("--cameras", default=None, help="cameras of the rig to render, e.g. CAM_FRONT_NARROW (default: all; each camera's frames are the same either way)")
    synth.add_argument("--rig", default="surround6", help="camera rig: surround6 (nuScenes-like), surround6_narrow (+ CAM_FRONT_NARROW, 30 degrees, long range) or surround8 (+ CAM_LEFT, CAM_RIGHT)")
    synth.add_argument("--conditions", default=None, help="weights of day, night and rain clips, e.g. day=3,night=1,rain=1 (default: day)")
    synth.add_argument("--vehicles", default="0-4", help="other vehicles per clip, MIN-MAX or N")
    synth.add_argument("--lane-change", type=float, default=0.0, help="fraction of clips in which the ego changes lanes, 0..1")
    synth.add_argument("--workers", type=int, default=1, help="processes rendering clips")
    synth.add_argument("--raw", action="store_true", help="write raw drives (docs/data-format.md) to the local folder --out; --clips is drives per country")
    synth.add_argument("--replace", action="store_true", help=_REPLACE_HELP)
    write = data.add_parser("write", help="ingest raw drives or a nuScenes release (docs/data-format.md) into shards per country")
    write.add_argument("source", nargs="?", default=None, metavar="DIR", help="input folder: raw drives (--from raw) or the nuScenes DATAROOT (--from nuscenes); or --raw DIR")
    write.add_argument("--raw", default=None, metavar="DIR", help="the input folder as a flag: a local folder of drive folders (or one drive folder) or an s3:// prefix of them, or the nuScenes DATAROOT")
    write.add_argument("--from", dest="source_format", choices=["raw", "nuscenes"], default="raw", help="input layout: raw drives (default) or a nuScenes release")
    write.add_argument("--version", default=None, choices=["v1.0-mini", "v1.0-trainval", "v1.0-test"], help="--from nuscenes: the release, its tables in DATAROOT/<version>/")
    write.add_argument("--scenes", default=None, metavar="FILE", help="--from nuscenes: file of scene names, one a line (e.g. the official val split); default: every scene")
    write.add_argument("--out", required=True, help="dataset URL: s3://bucket/dataset or file:///path/dataset")
    write.add_argument("--clip-seconds", type=float, default=None, help="clip length (default 10; --from nuscenes: 9.5, two clips of a 20 s scene)")
    write.add_argument("--fps", type=float, default=None, help="output frame rate (default 10; --from nuscenes: 12, the camera sweep rate)")
    write.add_argument("--gop", type=int, default=10, help="keyframe interval of the encoded videos, frames")
    write.add_argument("--shard-bytes", type=int, default=256 * 2**20, help="target shard size in bytes (default 256 MiB)")
    write.add_argument("--workers", type=int, default=1, help="processes checking and encoding drives")
    write.add_argument("--skip-bad", action="store_true", help="skip bad drives and list them instead of stopping at the first")
    write.add_argument("--split", default="train", help="split folder the clips go to: train, val or test")
    write.add_argument("--replace", action="store_true", help=_REPLACE_HELP)
    write.add_argument("--max-pose-gap", type=float, default=0.5, help="largest gap between poses, seconds")
    write.add_argument("--max-edge", type=float, default=1.0, help="how far a camera's first/last frame may lie from the first/last pose, seconds")
    write.add_argument("--frame-tolerance", type=float, default=0.6, help="largest distance from a frame time to the camera frame used, as a fraction of the longer of the output and the camera's frame period")
    write.add_argument("--accept-implausible", default="", metavar="DRIVE[,DRIVE]", help="write these drives although their motion is implausible (heading, speed, acceleration, yaw rate, ECEF); their clips are tagged")
    write.add_argument("--part", default=None, metavar="I/N", help="write part I of N (1..N) of the drives into the run's staging folder; the last part to finish publishes (docs/data-format.md, Ingest at scale)")
    write.add_argument("--publish", type=int, default=None, metavar="N", help="publish the run written as N parts (--part I/N), or name the parts still missing")
    write.add_argument("--group-drives", type=int, default=1, metavar="G", help="drives per group, in name order: a shard holds clips of one group only, and parts take whole groups (default 1)")
    write.add_argument("--audit-log", default=None, help="JSONL file recording every raw object read from the store")
    _site_zone_flag(write)
    inspect = data.add_parser("inspect", help="clips, hours and bytes per country, zone and split")
    inspect.add_argument("url", help="shard directory or dataset root: s3://bucket/dataset or file:///path/dataset")
    _site_zone_flag(inspect)
    verify = data.add_parser("verify", help="check manifests, checksums, schema, and that every video decodes")
    verify.add_argument("url", help="shard directory or dataset root: s3://bucket/dataset or file:///path/dataset")
    verify.add_argument("--fast", action="store_true", help="skip decoding videos (checksums, structure and schema only)")
    _site_zone_flag(verify)

    for name in _LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (fsdtrain {name} --help for all options)", add_help=False)
    sub.add_parser("finetune", help="fine-tune a country head: fit with --from WEIGHTS (backbone frozen)", add_help=False)

    ev = sub.add_parser("eval", help="per-country metrics of a checkpoint vs baselines, or of the baselines alone (--baselines)")
    ev_what = ev.add_mutually_exclusive_group(required=True)
    ev_what.add_argument("--ckpt", help="weights file written by fit/finetune (<workdir>/model.safetensors); this or --baselines is required")
    ev_what.add_argument("--baselines", action="store_true", help="no model: constant velocity and CTRA (constant turn rate and acceleration) alone")
    ev.add_argument("--window", default=None, metavar="FILE", help="with --baselines: YAML of data.window fields (as configs/data/demo_window.yaml); default: the defaults")
    ev.add_argument("--head", default=None, help="head-only file (head-CN.safetensors) to put on --ckpt, the backbone weights it was fine-tuned from")
    ev.add_argument("--audit-log", default=None, help="JSONL file recording every shard read")
    ev.add_argument("--data", required=True, nargs="+", help="shard directory URLs to evaluate on")
    ev.add_argument("--out", default=None, help="report JSON path")
    ev.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs: cuda (bf16 autocast where the GPU has bf16), cpu, or auto: cuda when a GPU is visible")
    ev.add_argument("--num-workers", type=int, default=1, metavar="N", help="loader processes decoding video (0: in this process)")
    _site_zone_flag(ev)
    ev.add_argument("--plots", default=None, metavar="DIR", help="folder for PNG pictures of predictions")
    ev.add_argument("--plots-per-country", type=int, default=4, metavar="N", help="pictures per country")
    _wandb_flags(ev)

    export = sub.add_parser("export", help="a training checkpoint -> one safetensors weights file with metadata (no DeepSpeed needed to load it)")
    export.add_argument("--ckpt", required=True, help="checkpoint (<workdir>/checkpoints/step=N.ckpt or last.ckpt), a run's workdir (its last checkpoint), or a weights file")
    export.add_argument("--out", required=True, help="the .safetensors file to write")
    export.add_argument("--heads", type=_heads, default=None, help="comma-separated heads to keep, e.g. CN (global always stays); default: all")
    export.add_argument("--head-only", action="store_true", help="write only --heads, with the hash of the backbone they need (head-CN.safetensors)")
    export.add_argument("--head", default=None, help="head-only file to put back on --ckpt (the backbone weights it was fine-tuned from)")
    _site_zone_flag(export)
    export.add_argument("--dest-zone", default=None, help="zone the written file is for (default: the site zone)")
    export.add_argument("--policy", default=None, help="export policy YAML: zone -> parts allowed to leave it, e.g. 'cn: [CN]' (default: none may)")

    launch = sub.add_parser(
        "launch", help="render a multi-node job file (SLURM, torchrun, DeepSpeed, Kubernetes) for a config, after pre-flight checks",
        usage="fsdtrain launch {slurm,torchrun,deepspeed,k8s} --config X --nodes N --gpus-per-node G [options] [-- FIT_OVERRIDES...]\n"
        "       fsdtrain launch {slurm,k8s} --parts N [options] -- data write DATA_WRITE_FLAGS...",
        description="Resolves the config as `fsdtrain fit` would, checks it for the job's size and writes the job file with the "
        "resolved config inside (docs/multi-node.md). Flags after `--` override the config, as on the fsdtrain fit command line.",
    )  # fmt: skip
    launch.add_argument("kind", choices=["slurm", "torchrun", "deepspeed", "k8s"], help="the launcher")
    launch.add_argument("--config", default=None, help="the fsdtrain fit config, e.g. configs/pretrain_global.yaml (required for a training job)")
    launch.add_argument("--nodes", default=None, type=int, help="nodes (pods on Kubernetes) (required for a training job)")
    launch.add_argument("--gpus-per-node", default=None, type=int, help="GPUs per node: one process each (required for a training job)")
    launch.add_argument("--parts", default=None, type=int, metavar="N", help="an ingest job: `-- data write ...` in N parallel parts (SLURM array, Kubernetes Indexed Job)")
    launch.add_argument("--dry-run", action="store_true", help="print the job file to stdout instead of writing it")
    launch.add_argument("--out", default=None, help="job file (or folder) to write; default launch-jobs/<name>/<file>")
    launch.add_argument("--name", default=None, help="job name (default fsdtrain-<config file name>)")
    launch.add_argument("--image", default=None, help="k8s: the container image with fsdtrain installed, built from launch/container/Dockerfile "
                        "(default registry.example.com/fsdtrain:<fsdtrain version>, a registry name to replace)")
    launch.add_argument("--no-embed", action="store_true", help="reference --config by path (it must be readable on every node) instead of embedding the resolved config")
    launch.add_argument("--skip-store-check", action="store_true", help="skip the store/data reachability check (for stores only the compute nodes reach)")

    report = sub.add_parser("report", help="one self-contained HTML page of runs for reviewers: curves, eval tables, pictures, lineage")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="fit/finetune --workdir folders and eval folders (report.json, plots/)")
    report.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    _site_zone_flag(report)
    report.add_argument("--dest-zone", default=None, help="zone the page is for: camera frames only of windows that zone may hold (default: the site zone, else the zone the runs ran at)")

    demo = sub.add_parser("demo", help="the whole story on one machine: store, synth, pretrain, CN fine-tune, eval")
    demo.add_argument("--workdir", default="demo-run", help="folder for the demo's store, data, runs and report")
    demo.add_argument("--clips", type=int, default=None, help="training clips per country (default: the demo's size)")
    _log_level_flag(p)
    return p


def _log_level_flag(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` in the help of ``parser`` and of its sub-commands (main() takes it out of argv before parsing)."""
    if parser.add_help:
        parser.add_argument("--log-level", choices=LEVELS, metavar="LEVEL", help=_LOG_LEVEL_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                _log_level_flag(child)


def _run(argv: list[str]) -> int:
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        from fsdtrain.train.lightning_cli import FleetCLI

        FleetCLI(argv)
        return 0
    if argv and argv[0] == "finetune":
        from fsdtrain.train.lightning_cli import FleetCLI

        if any(a in ("-h", "--help") for a in argv[1:]):
            print(_FINETUNE_HELP)  # then fit's own options, which finetune takes as they are
        FleetCLI(_finetune_args(argv[1:]), job_type="finetune")
        return 0

    overrides: list[str] = []
    if argv and argv[0] == "launch" and "--" in argv:  # fsdtrain fit flags for the rendered job
        argv, overrides = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = _parser().parse_args(argv)
    if args.command == "store" and args.store_command == "check":
        from fsdtrain.store.check import check_store

        return check_store(args.url, size_mb=args.size_mb, foreign_profile=args.foreign_profile, site_zone=args.site_zone)
    if args.command == "store":
        from fsdtrain.store.local.seaweed import serve

        return serve(args.dir, args.port, zones=args.zones)
    if args.command == "data":
        if args.data_command == "synth" and args.raw:
            if args.replace:
                raise ConfigError("data synth --raw writes new drive folders and never replaces any: drop --replace")
            from fsdtrain.synth.raw_drives import synth_raw_drives

            synth_raw_drives(args.out, args.countries, args.clips, seed=args.seed, seconds=args.seconds, progress=log.info)
            return 0
        if args.data_command == "write":
            args.raw = _write_source(args)
            if args.source_format == "nuscenes":
                from fsdtrain.ingest import nuscenes

                summary = nuscenes.write_nuscenes(
                    args.raw, args.out, version=args.version, gop=args.gop, shard_bytes=args.shard_bytes, workers=args.workers,
                    clip_seconds=nuscenes.NUSCENES_CLIP_SECONDS if args.clip_seconds is None else args.clip_seconds,
                    fps=nuscenes.NUSCENES_FPS if args.fps is None else args.fps, skip_bad=args.skip_bad, split=args.split,
                    scenes=nuscenes.read_scene_names(args.scenes) if args.scenes else None, max_pose_gap_s=args.max_pose_gap,
                    accept_implausible=frozenset(n.strip() for n in args.accept_implausible.split(",") if n.strip()),
                    replace=args.replace, progress=Progress("data write", unit="scenes"),
                )  # fmt: skip
                print(summary.format())
                return 0
            args.fps = 10.0 if args.fps is None else args.fps
            args.clip_seconds = 10.0 if args.clip_seconds is None else args.clip_seconds
            from fsdtrain.ingest.drives import write_drives
            from fsdtrain.ingest.parts import PartSpec
            from fsdtrain.ingest.raw import RawLimits

            summary = write_drives(
                args.raw, args.out, clip_seconds=args.clip_seconds, fps=args.fps, gop=args.gop, shard_bytes=args.shard_bytes,
                group_drives=args.group_drives, part=PartSpec.parse(args.part) if args.part is not None else None, publish=args.publish,
                site_zone=args.site_zone, audit_log=args.audit_log,
                workers=args.workers, skip_bad=args.skip_bad, split=args.split, replace=args.replace, progress=Progress("data write", unit="drives"),
                limits=RawLimits(max_pose_gap_s=args.max_pose_gap, max_edge_s=args.max_edge, frame_tolerance=args.frame_tolerance,
                                 accept_implausible=frozenset(d.strip() for d in args.accept_implausible.split(",") if d.strip())),
            )  # fmt: skip
            print(summary.format())
            return 0
        if args.data_command == "synth":
            from fsdtrain.synth.fleet import ClipSpec, synth_fleet
            from fsdtrain.synth.scene import Scenario

            only = tuple(args.cameras.split(",")) if args.cameras else None
            clip = ClipSpec(width=args.width, height=args.height, fps=args.fps, seconds=args.seconds, rig=args.rig, only=only)
            scenario = Scenario(conditions=args.conditions or {"day": 1.0}, vehicles=args.vehicles, lane_change=args.lane_change)
            synth_fleet(
                args.out, args.countries, args.clips, clips_per_shard=args.clips_per_shard, split=args.split, seed=args.seed,
                clip=clip, scenario=scenario, workers=args.workers, replace=args.replace, progress=log.info,
            )  # fmt: skip
            return 0
        from fsdtrain.format import verify as verify_mod

        if args.data_command == "inspect":
            print(verify_mod.format_inspect(verify_mod.inspect(args.url, site_zone=args.site_zone)))
            return 0
        problems = verify_mod.verify(args.url, fast=args.fast, progress=Progress("data verify", unit="shards"), site_zone=args.site_zone)
        for line in problems:
            print(f"PROBLEM {line}")
        print(f"{len(problems)} problem(s)")
        return 1 if problems else 0
    if args.command == "eval":
        from fsdtrain.eval.evaluate import evaluate, load_window
        from fsdtrain.eval.report import format_table, write_report

        if args.window is not None and not args.baselines:
            raise ConfigError("--window is for --baselines: a model is evaluated on the windows it was trained on (its metadata)")
        from fsdtrain.train.wandb_eval import EvalWandb, parse_tags

        wandb_run = EvalWandb.resolve(  # before the evaluation: a bad --wandb.* value fails before any window is read
            mode=args.wandb_mode, project=args.wandb_project, entity=args.wandb_entity, dir=args.wandb_dir, group=args.wandb_group,
            name=args.wandb_name, tags=parse_tags(args.wandb_tags), notes=args.wandb_notes, base_url=args.wandb_base_url,
            zone=args.wandb_zone, site_zone=args.site_zone, report=args.out,
        )  # fmt: skip
        samples: list[dict] | None = [] if wandb_run.enabled else None
        report = evaluate(
            args.ckpt, args.data, batch_size=args.batch_size, site_zone=args.site_zone, plots=args.plots,
            plots_per_country=args.plots_per_country, head=args.head, audit_log=args.audit_log,
            window=load_window(args.window) if args.window is not None else None, samples=samples,
            device=args.device, num_workers=args.num_workers, progress=Progress("eval", unit="windows"),
        )  # fmt: skip
        print(format_table(report))
        if args.out:
            write_report(report, args.out)
            print(f"report: {args.out}")
        if args.plots:
            print(f"plots: {args.plots}")
        upload = wandb_run.log(report, weights=args.ckpt, head=args.head, samples=samples) if wandb_run.enabled else None
        for n, text in enumerate((upload or "").splitlines()):  # how to upload; then a zone warning, if any
            (log.warning if n else log.info)(text)
        return 0
    if args.command == "export":
        from fsdtrain.residency import ExportPolicy
        from fsdtrain.weights.export import export_weights

        meta = export_weights(
            args.ckpt, args.out, heads=args.heads, head_only=args.head_only, head=args.head, site_zone=args.site_zone,
            dest_zone=args.dest_zone, policy=ExportPolicy.load(args.policy),
        )  # fmt: skip
        heads = meta.head_only or meta.heads
        what = "head-only" if meta.head_only else "heads"
        print(f"fsdtrain: exported {meta.exported_from} (step {meta.global_step}, {what} {','.join(heads)}) to {args.out} for zone {meta.exported_for_zone}")
        return 0
    if args.command == "launch":
        from fsdtrain.launch.jobs import LaunchSpec, launch

        if args.parts is not None or overrides[:2] == ["data", "write"]:
            return _launch_ingest(args, overrides)
        missing = [f for f, v in (("--config", args.config), ("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node)) if v is None]
        if missing:
            raise ConfigError(f"launch {args.kind} needs {', '.join(missing)} for a training job (an ingest job: --parts N -- data write ...)")
        spec = LaunchSpec(
            args.kind, args.config, args.nodes, args.gpus_per_node, overrides=overrides, embed=not args.no_embed, name=args.name, image=args.image
        )  # fmt: skip
        return launch(spec, out=args.out, dry_run=args.dry_run, check_store=not args.skip_store_check)
    if args.command == "report":
        from fsdtrain.review.page import write_page

        print(f"report: {write_page(args.runs, args.out, dest_zone=args.dest_zone, site_zone=args.site_zone)}")
        return 0
    if args.command == "demo":
        from fsdtrain.demo import run_demo

        return run_demo(args.workdir, train_clips=args.clips)
    raise AssertionError(f"unhandled command {args.command}")


def _launch_ingest(args: argparse.Namespace, rest: list[str]) -> int:
    """``launch slurm|k8s --parts N -- data write ...``: the data write flags checked by its own parser, then the job rendered."""
    from fsdtrain.launch.jobs import IngestJobSpec, launch_ingest

    if args.parts is None or rest[:2] != ["data", "write"]:
        raise ConfigError("an ingest job is `fsdtrain launch slurm|k8s --parts N -- data write --raw s3://... --out s3://... [flags]`")
    extra = [f for f, v in (("--config", args.config), ("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node), ("--no-embed", args.no_embed)) if v]
    if extra:
        raise ConfigError(f"{extra[0]} is for training jobs; an ingest job takes --parts N and the data write flags after `--`")
    write = _parser().parse_args(rest)
    _write_source(write)
    if write.source_format != "raw":
        raise ConfigError("an ingest job in parts reads raw drives (--from raw); a nuScenes release is converted in one run")
    spec = IngestJobSpec(args.kind, args.parts, rest[2:], cpus=write.workers, site_zone=write.site_zone, name=args.name, image=args.image)
    return launch_ingest(spec, out=args.out, dry_run=args.dry_run)


def _write_source(args: argparse.Namespace) -> str:
    """``data write``'s input folder, given as ``DIR`` or ``--raw DIR``, with the flags its ``--from`` takes."""
    if args.source is not None and args.raw is not None and args.source != args.raw:
        raise ConfigError(f"data write got two input folders ({args.source} and --raw {args.raw}); give the input folder once")
    source = args.source or args.raw
    if source is None:
        raise ConfigError("data write needs the input folder: fsdtrain data write --raw DIR --out URL, or --from nuscenes DATAROOT --version v1.0-mini --out URL")
    if args.source_format == "nuscenes" and args.version is None:
        raise ConfigError("--from nuscenes needs --version: the release whose tables are in DATAROOT/<version>/, e.g. v1.0-mini or v1.0-trainval")
    if args.source_format == "nuscenes" and (args.part is not None or args.publish is not None or args.group_drives != 1):
        raise ConfigError("--part, --publish and --group-drives are for raw drives; a nuScenes release is converted in one run")
    if args.source_format == "raw" and (args.version is not None or args.scenes is not None):
        raise ConfigError(f"{'--version' if args.version is not None else '--scenes'} is for --from nuscenes; raw drives have neither")
    return source


def _finetune_args(rest: list[str]) -> list[str]:
    """``finetune --config X --from W ...`` -> ``fit --config X --model.init_from W ...``."""
    out, i, weights = ["fit"], 0, None
    while i < len(rest):
        a = rest[i]
        if a == "--from" and i + 1 < len(rest):
            weights = rest[i + 1]
            i += 2
            continue
        if a.startswith("--from="):
            weights = a.split("=", 1)[1]
            i += 1
            continue
        out.append(a)
        i += 1
    if weights is None and not any(a in ("-h", "--help") for a in rest):
        raise ConfigError("finetune needs --from WEIGHTS: the model.safetensors of the pretraining run")
    if weights is not None:
        out += ["--model.init_from", weights]
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text and text.split(": ", 1)[0].endswith("Error") else text
    return text.splitlines()[0] if text else type(exc).__name__


def _argument_error(exc: argparse.ArgumentError) -> str:
    """A LightningCLI (jsonargparse) error on one line, with its reason: ``data.batch_size: expected an int,
    got abc`` rather than its first line alone (``Parser key "data.batch_size":``)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return _one_line(exc)
    key = re.match(r'^Parser key "([^"]+)":?$', lines[0])
    head = key.group(1) if key else lines[0].rstrip(":")
    alternatives = [line[2:] for line in lines[1:] if line.startswith("- ")]
    reason = " or ".join(alternatives) if alternatives else lines[1]
    given = next((line for line in lines if line.startswith("Given value:")), None)
    if alternatives and given:
        reason += f" ({given[0].lower()}{given[1:]})"
    reason = re.sub(r"Expected a <class '(\w+)'>\. Got value: ", r"expected \1, got ", reason)
    reason = re.sub(r"<class '(\w+)'>", r"\1", reason)
    return f"{head}: {reason}"


def _peer_lost(exc: BaseException) -> bool:
    """A collective failed because a peer process died (gloo/NCCL report it as a RuntimeError)."""
    dist_error = getattr(sys.modules.get("torch.distributed"), "DistError", ())
    text = str(exc)
    return isinstance(exc, dist_error) or "Connection closed by peer" in text or "Connection reset by peer" in text


def _take_log_level(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--log-level X`` (or ``--log-level=X``) anywhere before a ``--``, and argv without it: every command
    takes it, LightningCLI's included, which does not know the flag."""
    end = argv.index("--") if "--" in argv else len(argv)
    level, rest, i = None, [], 0
    while i < end:
        a = argv[i]
        if a == "--log-level":
            if i + 1 >= end:
                raise ConfigError(f"--log-level needs a level: {', '.join(LEVELS)}")
            level, i = argv[i + 1], i + 2
            continue
        if a.startswith("--log-level="):
            level = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return level, rest + argv[end:]


def _setup_logging(argv: list[str]) -> list[str]:
    """Configures the ``fsdtrain`` loggers (fsdtrain/logs.py) from ``--log-level`` or ``$FSDTRAIN_LOG_LEVEL``;
    a given flag goes into ``$FSDTRAIN_LOG_LEVEL`` too, so every child process (Lightning's per-rank
    re-launch, the demo's ``fsdtrain fit``) logs at the same level. Returns argv without the flag."""
    level, argv = _take_log_level(argv)
    try:
        setup_logging(level)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if level is not None:
        os.environ[LEVEL_ENV] = level.upper()
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with stopping.stop_on_signals():
        try:
            return _run(_setup_logging(argv))
        except (KeyboardInterrupt, SystemExit) as exc:
            # a stop signal (or Ctrl-C), or Lightning's exit after it tore the ranks it started down
            signum = stopping.received() or (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
            if signum is None:
                raise
            print(f"fsdtrain: stopped by {signum.name}", file=sys.stderr)
            return stopping.exit_code(signum)
        except FsdtrainError as exc:
            if stopping.received() is not None:  # an error on the way out of a stop: the stop is what happened
                print(f"fsdtrain: stopped by {stopping.received().name}", file=sys.stderr)
                return stopping.exit_code(stopping.received())
            print(f"fsdtrain: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            if stopping.received() is not None:  # a rank losing its peers while the job stops
                print(f"fsdtrain: stopped by {stopping.received().name}", file=sys.stderr)
                return stopping.exit_code(stopping.received())
            if not _peer_lost(exc):
                raise
            # another rank failed first and printed its own one-line error; this one only lost contact
            rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "?"
            print(f"fsdtrain: error: rank {rank} stopped: another rank failed first (its error is above)", file=sys.stderr)
            return 1
        except argparse.ArgumentError as exc:
            # LightningCLI (jsonargparse, exit_on_error=False) reports bad flags and config values this way
            print(f"fsdtrain: error: {_argument_error(exc)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
