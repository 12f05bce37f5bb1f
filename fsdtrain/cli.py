"""``fsdtrain`` command line (DESIGN.md §7). Dispatches; the work lives in the modules it calls.

User errors (:class:`~fsdtrain.errors.FsdtrainError`, bad flags) print one line and exit 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from fsdtrain.errors import ConfigError, FsdtrainError

__all__ = ["main"]

_LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _countries(text: str) -> list[str]:
    return [c.strip().upper() for c in text.split(",") if c.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fsdtrain", description="Train end-to-end driving models on sharded fleet video.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store = sub.add_parser("store", help="local object store").add_subparsers(dest="store_command", required=True, metavar="ACTION")
    serve = store.add_parser("serve", help="run a SeaweedFS S3 endpoint on loopback; prints the export AWS_... lines")
    serve.add_argument("--dir", default=None, help="data directory (default: a temporary one, removed on exit)")
    serve.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")

    data = sub.add_parser("data", help="fleet data: synthesize, inspect, verify").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data.add_parser("synth", help="write a seeded synthetic fleet of clips")
    synth.add_argument("--out", required=True, help="dataset URL: s3://bucket/dataset or file:///path/dataset")
    synth.add_argument("--countries", required=True, type=_countries, help="comma-separated ISO codes, e.g. CN,US,DE")
    synth.add_argument("--clips", required=True, type=int, help="clips per country")
    synth.add_argument("--clips-per-shard", type=int, default=8)
    synth.add_argument("--split", default="train")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--zone", default=None, help="residency zone for all countries (default: cn for CN, global otherwise)")
    synth.add_argument("--seconds", type=float, default=10.0, help="clip length")
    synth.add_argument("--workers", type=int, default=1, help="processes rendering clips")
    inspect = data.add_parser("inspect", help="clips, hours and bytes per country, zone and split")
    inspect.add_argument("url")
    verify = data.add_parser("verify", help="check manifests, checksums, schema, and that every video decodes")
    verify.add_argument("url")

    for name in _LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (fsdtrain {name} --help for all options)", add_help=False)
    sub.add_parser("finetune", help="fine-tune a country head: fit with --from WEIGHTS (backbone frozen)", add_help=False)

    ev = sub.add_parser("eval", help="per-country metrics of a checkpoint vs baselines")
    ev.add_argument("--ckpt", required=True, help="weights file written by fit/finetune (<workdir>/model.safetensors)")
    ev.add_argument("--data", required=True, nargs="+", help="shard directory URLs to evaluate on")
    ev.add_argument("--out", default=None, help="report JSON path")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--site-zone", default=None, help="zone this job runs in (default $FSDTRAIN_SITE_ZONE or global)")

    demo = sub.add_parser("demo", help="the whole story on one machine: store, synth, pretrain, CN fine-tune, eval")
    demo.add_argument("--workdir", default="demo-run")
    demo.add_argument("--clips", type=int, default=None, help="training clips per country (default: the demo's size)")
    return p


def _run(argv: list[str]) -> int:
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        from fsdtrain.train.lightning_cli import FleetCLI

        FleetCLI(argv)
        return 0
    if argv and argv[0] == "finetune":
        from fsdtrain.train.lightning_cli import FleetCLI

        FleetCLI(_finetune_args(argv[1:]), job_type="finetune")
        return 0

    args = _parser().parse_args(argv)
    if args.command == "store":
        from fsdtrain.store.seaweed import serve

        return serve(args.dir, args.port)
    if args.command == "data":
        if args.data_command == "synth":
            from fsdtrain.data.synth import synth_fleet

            synth_fleet(
                args.out, args.countries, args.clips, clips_per_shard=args.clips_per_shard, split=args.split, seed=args.seed,
                zone=args.zone, seconds=args.seconds, workers=args.workers, progress=print,
            )  # fmt: skip
            return 0
        from fsdtrain.data import inspect as inspect_mod

        if args.data_command == "inspect":
            print(inspect_mod.format_inspect(inspect_mod.inspect(args.url)))
            return 0
        problems = inspect_mod.verify(args.url, progress=print)
        for line in problems:
            print(f"PROBLEM {line}")
        print(f"{len(problems)} problem(s)")
        return 1 if problems else 0
    if args.command == "eval":
        from fsdtrain.eval.evaluate import evaluate
        from fsdtrain.eval.report import format_table, write_report

        report = evaluate(args.ckpt, args.data, batch_size=args.batch_size, site_zone=args.site_zone)
        print(format_table(report))
        if args.out:
            write_report(report, args.out)
            print(f"report: {args.out}")
        return 0
    if args.command == "demo":
        from fsdtrain.demo import run_demo

        return run_demo(args.workdir, train_clips=args.clips)
    raise AssertionError(f"unhandled command {args.command}")


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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except FsdtrainError as exc:
        print(f"fsdtrain: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fsdtrain: interrupted", file=sys.stderr)
        return 130
    except argparse.ArgumentError as exc:
        # LightningCLI (jsonargparse, exit_on_error=False) reports bad flags and config values this way
        print(f"fsdtrain: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
