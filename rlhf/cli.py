"""The `rlhf` command. Thin by design: parse arguments, call one library function, print the outcome.

Errors a user can fix (RlhfError) print as one line and exit 2; anything else exits 1 with a hint to rerun
with `--debug`, which shows the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from rlhf.errors import RlhfError


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the subcommand; SUPPRESS keeps a subparser from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="rlhf", description="A staged RLHF pipeline: SFT, reward model, DPO/PPO."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline config end to end", parents=[common])
    run.add_argument("config", help="pipeline YAML")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.sft.max_steps=50")
    run.add_argument("--run-dir", help="run directory (default: a new one under runs_dir)")
    run.set_defaults(handler=_run)

    stage = commands.add_parser("stage", help="run one stage of a pipeline config", parents=[common])
    stage.add_argument("stage", help="stage name, e.g. sft")
    stage.add_argument("config", help="pipeline YAML")
    stage.add_argument("overrides", nargs="*", help="dotted overrides")
    stage.add_argument("--run-dir", help="run directory (default: a new one under runs_dir)")
    stage.set_defaults(handler=_stage)

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser(
        "synth", help="write the built-in synthetic task (demonstrations, prompts, export)", parents=[common]
    )
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("overrides", nargs="*", help="SynthConfig fields, e.g. num_sft_train=2000")
    synth.set_defaults(handler=_synth)
    return parser


def _run(args: argparse.Namespace) -> None:
    from rlhf.config import load_config
    from rlhf.distributed import configure_logging, rank_info
    from rlhf.pipeline import run_pipeline
    from rlhf.report import print_pipeline_summary

    configure_logging(rank_info(), args.debug)
    cfg = load_config(args.config, args.overrides)
    print_pipeline_summary(run_pipeline(cfg, Path(args.run_dir) if args.run_dir else None))


def _stage(args: argparse.Namespace) -> None:
    from rlhf.distributed import configure_logging, rank_info
    from rlhf.stage import run_standalone

    configure_logging(rank_info(), args.debug)
    try:
        program = importlib.import_module(f"stages.{args.stage}")
    except ModuleNotFoundError:
        raise RlhfError(f"unknown stage '{args.stage}'") from None
    result = run_standalone(args.stage, program.run, args.config, args.overrides, args.run_dir)
    print(f"{args.stage}: done in {result.seconds:.0f}s; output in {result.output_dir}")


def _synth(args: argparse.Namespace) -> None:
    from rlhf.config import SyntheticData, parse_overrides, validate_section
    from rlhf.data.synthetic import write_synthetic_task

    cfg = validate_section(
        SyntheticData, {"seed": args.seed, **parse_overrides(args.overrides)}, "rlhf data synth"
    )
    files = write_synthetic_task(args.out, cfg)
    for role, path in files.items():
        print(f"{role:>12}: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except RlhfError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
