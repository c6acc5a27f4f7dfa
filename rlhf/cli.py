"""The `rlhf` command. Thin by design: parse arguments, call one library function, print the outcome.

Errors a user can fix (RlhfError) print as one line and exit 2; anything else exits 1 with a hint to rerun
with `--debug`, which shows the full traceback. A handler may return its own exit code (`rlhf plan`: 1 when
a stage does not fit).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf import cli_annotate, cli_json, cli_registry
from rlhf.cli_args import parse_with_overrides
from rlhf.console import print_json
from rlhf.errors import ConfigError, DataError, RlhfError
from rlhf.quiet_console import make_verbose

if TYPE_CHECKING:
    from rlhf.config import PipelineConfig
    from rlhf.memory_plan import Device, Hardware

VERBOSE_HELP = "show the libraries' own output (trainer logs, warnings) on the console, not only in stage.log"


def build_parser() -> argparse.ArgumentParser:
    """The `rlhf` parser, one command group at a time."""
    # --debug is accepted before or after the subcommand; SUPPRESS keeps a subparser from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks"
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    parser = argparse.ArgumentParser(
        prog="rlhf", description="A staged RLHF pipeline: SFT, reward model, DPO/PPO."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_pipeline_commands(commands, common)
    _add_plan_command(commands, common)
    cli_registry.register(commands, common)
    _add_eval_command(commands, common)
    _add_data_commands(commands, common)
    cli_annotate.register(commands, common)
    return parser


def _add_pipeline_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`rlhf run`, `rlhf status`, `rlhf stage`."""
    run = commands.add_parser("run", help="run a pipeline config end to end", parents=[common])
    run.add_argument("config", help="pipeline YAML")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.sft.max_steps=50")
    run.add_argument("--run-dir", help="run directory (default: a new one under runs_dir)")
    run.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="train STAGE even if a version with its fingerprint is published (repeatable)",
    )
    run.add_argument(
        "--from", dest="start_from", metavar="STAGE", help="train STAGE and every stage after it"
    )
    run.add_argument(
        "--only",
        metavar="STAGE",
        help="run STAGE and stop: the stages before it must be cached, later ones are skipped",
    )
    run.add_argument(
        "--force-plan", action="store_true", help="run even when `rlhf plan` says a stage does not fit"
    )
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="list pipeline runs and their stages", parents=[common])
    status.add_argument("run", nargs="?", help="one run directory, shown stage by stage")
    status.add_argument("--runs-dir", default="runs", help="where the runs are (a config's runs_dir)")
    status.add_argument("--json", action="store_true", help="the runs (or the run) as JSON (format 1)")
    status.set_defaults(handler=_status)

    stage = commands.add_parser("stage", help="run one stage of a pipeline config", parents=[common])
    stage.add_argument("stage", help="stage name, e.g. sft, or policy-ppo for a named policy stage")
    stage.add_argument("config", help="pipeline YAML")
    stage.add_argument("overrides", nargs="*", help="dotted overrides")
    stage.add_argument("--run-dir", help="run directory (default: a new one under runs_dir)")
    stage.set_defaults(handler=_stage)


def _add_plan_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    plan = commands.add_parser(
        "plan", help="what each GPU holds in each stage, before launch; exit 1 if a stage does not fit",
        parents=[common],
    )  # fmt: skip
    plan.add_argument("config", help="pipeline YAML")
    plan.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. stages.sft.gradient_checkpointing=true"
    )
    plan.add_argument("--gpus-per-node", type=int, help="default: the config's distributed.num_processes")
    plan.add_argument("--nodes", type=int, help="default: the config's distributed.num_nodes")
    plan.add_argument(
        "--gpu-memory", help="per GPU: 80GB, 141G (G = GB = 10^9 bytes), 80GiB (2^30), 24000MB; "
        "default: this machine's GPU, else its available memory per process (planned for CPUs)",
    )  # fmt: skip
    plan.add_argument(
        "--device", choices=["gpu", "cpu"], help="plan for GPUs or CPU processes (default: as found)"
    )
    plan.add_argument(
        "--model-shape", action="append", default=[], metavar="REF=SPEC",
        help="what a model the plan cannot size offline is, e.g. registry:reward-model:latest=llama-3.1-8b-shape",
    )  # fmt: skip
    plan.add_argument("--json", action="store_true", help="the plan as JSON (format 1)")
    plan.set_defaults(handler=_plan)


def _add_eval_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    evaluate = commands.add_parser("eval", help="a policy against a reference: gold, reward model, KL, samples",
                                   parents=[common])  # fmt: skip
    evaluate.add_argument(
        "evaluated", metavar="POLICY", help="registry ref (registry:policy:latest) or directory"
    )
    evaluate.add_argument(
        "--reference", required=True, help="registry ref or directory, e.g. registry:sft-policy:v1"
    )
    evaluate.add_argument("--judge", help="reward model (registry ref or directory) for scores and win rate")
    evaluate.add_argument("--prompts", required=True, help='held-out prompts, JSONL of {"prompt": ...}')
    evaluate.add_argument("--gold", choices=["synthetic"], help="the task's programmatic gold reward, if any")
    evaluate.add_argument("--samples-per-prompt", type=int, default=4)
    evaluate.add_argument("--max-new-tokens", type=int, default=64)
    evaluate.add_argument("--temperature", type=float, default=1.0)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--registry", help="registry directory (default: $RLHF_REGISTRY, else ./registry)")
    evaluate.add_argument("--run-dir", default="runs/eval", help="where the wandb run goes")
    evaluate.add_argument("--tracking", choices=["wandb", "none"], default="wandb")
    evaluate.add_argument(
        "--json", action="store_true", help="metrics and every sample row as JSON (format 1)"
    )
    evaluate.set_defaults(handler=_eval)


def _add_data_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`rlhf data synth`, `rlhf data import`, `rlhf data export-for-annotation`."""
    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser(
        "synth", help="write the built-in synthetic task (demonstrations, prompts, export)", parents=[common]
    )
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("overrides", nargs="*", help="SynthConfig fields, e.g. num_sft_train=2000")
    synth.set_defaults(handler=_synth)

    imp = data.add_parser(
        "import", help="annotator exports / public datasets -> one preference dataset", parents=[common]
    )
    imp.add_argument("sources", nargs="+", help="export files or directories")
    imp.add_argument("--out", required=True, help="output dataset directory")
    imp.add_argument("--format", help="force a format (default: detected per file); 'mapped' needs --map")
    imp.add_argument(
        "--ties", choices=["drop", "keep"], default="drop", help="majority ties: drop, or keep as ties"
    )
    imp.add_argument("--min-votes", type=int, default=1, help="minimum annotator votes a pair needs")
    imp.add_argument(
        "--min-agreement", type=float, help="exclude annotators whose agreement with the majority is lower"
    )
    imp.add_argument("--max-tokens", type=int, help="quarantine pairs longer than this (needs --tokenizer)")
    imp.add_argument(
        "--tokenizer", help="model whose tokenizer measures length (id, directory or registry ref)"
    )
    imp.add_argument(
        "--max-depth", type=int, default=64, help="quarantine records nested deeper than this (at most 256)"
    )
    imp.add_argument(
        "--max-record-mb", type=float, default=64, help="quarantine records bigger than this, unread"
    )
    imp.add_argument("--test-fraction", type=float, default=0.1)
    imp.add_argument("--split-seed", type=int, default=0)
    imp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="column mapping for --format mapped: prompt=, chosen=, rejected= (margin=, annotator=, tie=)",
    )
    imp.add_argument(
        "--rating-pairs",
        choices=["best-vs-random", "best-vs-worst", "all-above-margin"],
        default="best-vs-random",
        help="ratings/rankings of several completions to pairs",
    )
    imp.add_argument("--rating-margin", type=float, default=1.0)
    imp.add_argument(
        "--rating-key", default="overall", help="UltraFeedback: overall, mean, or an aspect name"
    )
    imp.add_argument("--argilla-question", help="Argilla: the ranking or label question to read")
    imp.add_argument("--prompt-field", help="Label Studio: the task data field that holds the prompt")
    imp.add_argument(
        "--label-config", metavar="FILE", help="Label Studio: the project's labeling config (XML): prompt, "
        "responses and the control holding the judgement; needed for some JSON_MIN and CSV exports",
    )  # fmt: skip
    imp.add_argument(
        "--bucket-order", metavar="BEST,...,WORST", default="",
        help="Label Studio: Ranker buckets, best first (without it buckets are categories, not ranked)",
    )  # fmt: skip
    imp.add_argument(
        "--kind", choices=["auto", "preferences", "unpaired"], default="auto",
        help="preferences (pairs, rankings) or unpaired (thumbs, ratings of one completion, for KTO); "
        "auto: unpaired when the first file's first records are judged single completions",
    )  # fmt: skip
    imp.add_argument(
        "--desirable-rating", type=float, default=4.0, help="unpaired: a rating at or above this is desirable"
    )
    imp.add_argument(
        "--undesirable-rating", type=float, default=2.0,
        help="unpaired: a rating at or below this is undesirable (between: neutral, no label)",
    )  # fmt: skip
    imp.add_argument(
        "--thumbs", action="append", default=[], metavar="LABEL=desirable|undesirable",
        help="unpaired: a thumbs label and what it means, repeated (replaces the built-in 👍/👎, good/bad, ... map)",
    )  # fmt: skip
    imp.add_argument("--registry", help="registry directory, for a --tokenizer given as a registry ref")
    imp.add_argument("--json", action="store_true", help="the counts and paths as JSON (format 1)")
    imp.set_defaults(handler=_import)

    export = data.add_parser(
        "export-for-annotation",
        help="sample a model and write Label Studio tasks (pairwise, or ranking for 3+ responses)",
        parents=[common],
    )
    export.add_argument("--prompts", required=True, help='JSONL of {"prompt": text or messages}')
    export.add_argument(
        "--model", required=True, help="registry ref (registry:policy:latest), directory or id"
    )
    export.add_argument("--out", required=True, help="Label Studio tasks JSON to write")
    export.add_argument(
        "--responses", type=int, default=2, help="responses per prompt: 2 a pairwise task, 3+ a ranking task"
    )
    export.add_argument("--max-new-tokens", type=int, default=64)
    export.add_argument("--temperature", type=float, default=1.0)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--registry", help="registry directory (default: $RLHF_REGISTRY, else ./registry)")
    export.set_defaults(handler=_export_for_annotation)


def _eval(args: argparse.Namespace) -> None:
    from rlhf.config import TrackingConfig
    from rlhf.eval import evaluate_and_record
    from rlhf.report import print_evaluation
    from rlhf.settings import GenerationSpec

    gen = GenerationSpec(samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature)  # fmt: skip
    evaluation = evaluate_and_record(
        cli_registry.open_registry(args), args.evaluated, args.reference, args.prompts, gen, args.gold,
        TrackingConfig(backend=args.tracking, project="rlhf-eval"), Path(args.run_dir), args.seed, args.judge,
    )  # fmt: skip
    if args.json:
        print_json(cli_json.evaluation(evaluation))
    else:
        print_evaluation(evaluation)


def _run(args: argparse.Namespace) -> int | None:
    from rlhf.config import load_config
    from rlhf.distributed import configure_logging, rank_info
    from rlhf.pipeline import RunOptions, run_pipeline
    from rlhf.plan_command import preflight
    from rlhf.report import print_pipeline_summary

    configure_logging(rank_info(), args.debug)
    cfg = load_config(args.config, args.overrides)
    lines, fits = preflight(cfg, *_hardware(cfg))
    print("\n".join(lines), flush=True)
    if not fits and not args.force_plan:
        print(f"error: {lines[0]} (rlhf run --force-plan to run anyway)", file=sys.stderr)
        return 1
    options = RunOptions(force=frozenset(args.force), start_from=args.start_from, only=args.only)
    if cfg.rounds is not None:
        from rlhf.rounds import run_rounds

        if args.run_dir:
            raise ConfigError("--run-dir: a pipeline with rounds makes a run directory per round")

        rounds = run_rounds(cfg, options)
        print(rounds.report.read_text(encoding="utf-8"))
        print(f"rounds: {rounds.folder} (report: {rounds.report})")
        return None
    print_pipeline_summary(run_pipeline(cfg, Path(args.run_dir) if args.run_dir else None, options))


def _plan(args: argparse.Namespace) -> int:
    import json

    from rlhf.config import load_config
    from rlhf.memory_plan import plan
    from rlhf.plan_command import format_plan, parse_shapes, parse_size, plan_json

    cfg = load_config(args.config, args.overrides)
    memory = parse_size(args.gpu_memory) if args.gpu_memory else None
    hardware, device = _hardware(cfg, args.gpus_per_node, args.nodes, memory, args.device)
    planned = plan(cfg, hardware, parse_shapes(args.model_shape), device)
    print(json.dumps(plan_json(planned), indent=2) if args.json else "\n".join(format_plan(planned)))
    return 0 if planned.fits else 1


def _hardware(
    cfg: PipelineConfig,
    gpus_per_node: int | None = None,
    nodes: int | None = None,
    memory: int | None = None,
    device: str | None = None,
) -> tuple[Hardware, Device]:
    """The hardware to plan for: what was given, else the config's processes and nodes and this machine's
    first GPU, else (no GPU) its available host memory per process, planned for CPUs."""
    from rlhf.memory_plan import Hardware
    from rlhf.plan_command import host_hardware

    gpus_per_node = gpus_per_node or cfg.distributed.num_processes
    nodes = nodes or cfg.distributed.num_nodes
    if memory is None and (memory := _gpu_memory()) is None:
        return host_hardware(gpus_per_node, nodes), "cpu" if device is None else device  # type: ignore[return-value]
    return Hardware(gpus_per_node, nodes, memory), "gpu" if device is None else device  # type: ignore[return-value]


def _gpu_memory() -> int | None:
    """The first GPU's memory. torch is imported only where an NVIDIA driver is, so `rlhf plan` stays light."""
    import shutil

    if not (Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi")):
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _status(args: argparse.Namespace) -> None:
    from rlhf.runs import RunRecord, list_runs

    if args.json:  # without rlhf.report, which imports torch
        if args.run:
            print_json(cli_json.one_run(RunRecord.load(Path(args.run))))
        else:
            print_json(cli_json.runs(Path(args.runs_dir), list_runs(Path(args.runs_dir))))
        return
    from rlhf.report import print_run, print_runs

    if args.run:
        print_run(RunRecord.load(Path(args.run)))
    else:
        print_runs(list_runs(Path(args.runs_dir)))


def _stage(args: argparse.Namespace) -> None:
    from rlhf.config import load_config
    from rlhf.distributed import configure_logging, rank_info
    from rlhf.launch import start_stage

    configure_logging(rank_info(), args.debug)
    result = start_stage(load_config(args.config, args.overrides), args.stage, args.run_dir)
    print(f"{args.stage}: done in {result.seconds:.0f}s; {result.describe()}")


def _synth(args: argparse.Namespace) -> None:
    from rlhf.config import SyntheticData, parse_overrides, validate_section
    from rlhf.data.synthetic import write_synthetic_task

    cfg = validate_section(
        SyntheticData, {"seed": args.seed, **parse_overrides(args.overrides)}, "rlhf data synth"
    )
    files = write_synthetic_task(args.out, cfg)
    for role, path in files.items():
        print(f"{role:>12}: {path}")


def _import(args: argparse.Namespace) -> None:
    from rlhf.data.importers import UNPAIRED, ImportOptions
    from rlhf.data.preferences import ImportSettings, import_preferences
    from rlhf.data.unpaired import detect_kind, import_unpaired, thumbs_mapping

    column_map = dict(item.partition("=")[::2] for item in args.map)
    bucket_order = tuple(name.strip() for name in args.bucket_order.split(",")) if args.bucket_order else ()
    options = ImportOptions(column_map=column_map, rating_pairs=args.rating_pairs, rating_margin=args.rating_margin,
                            rating_key=args.rating_key, argilla_question=args.argilla_question,
                            prompt_field=args.prompt_field, label_config=args.label_config,
                            bucket_order=bucket_order, desirable_rating=args.desirable_rating,
                            undesirable_rating=args.undesirable_rating,
                            thumbs_labels=thumbs_mapping(args.thumbs, "--thumbs"))  # fmt: skip
    settings = ImportSettings(
        format=args.format, options=options, ties=args.ties, min_votes=args.min_votes,
        min_annotator_agreement=args.min_agreement, max_tokens=args.max_tokens,
        test_fraction=args.test_fraction, split_seed=args.split_seed, max_depth=args.max_depth,
        max_record_bytes=int(args.max_record_mb * 2**20),
    )  # fmt: skip
    count_tokens = _token_counter(args.tokenizer, args.registry) if args.tokenizer else None
    sources = [Path(s) for s in args.sources]
    unpaired = args.kind == "unpaired" or (args.kind == "auto" and detect_kind(sources, settings) is UNPAIRED)
    importer = import_unpaired if unpaired else import_preferences
    report = importer(sources, Path(args.out), settings, count_tokens)
    kind = "unpaired" if unpaired else "preferences"
    if args.json:
        print_json(cli_json.data_import(report, kind))
    if (nothing := report.nothing_kept()) is not None:
        raise DataError(nothing)  # the outputs stay for inspection
    if args.json:
        return
    print(f"{kind}: {report.identity}")
    print(f"train {report.train}, test {report.test}; quarantine: {report.quarantine_path}")
    print(f"dataset {report.out_dir} (fingerprint {report.fingerprint[:12]}); report: {report.report_path}")


def _token_counter(model: str, registry_dir: str | None):
    from rlhf.models import registry_model, token_counter
    from rlhf.registry import Registry, default_registry_path, is_reference
    from rlhf.settings import ModelSpec

    spec = ModelSpec(name=model)
    if is_reference(model):
        spec, _ = registry_model(Registry(default_registry_path(registry_dir)), spec)
    return token_counter(spec)


def _export_for_annotation(args: argparse.Namespace) -> None:
    from rlhf.annotate import export_for_annotation
    from rlhf.registry import Registry, default_registry_path
    from rlhf.settings import GenerationSpec

    generation = GenerationSpec(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    counts = export_for_annotation(args.prompts, args.model, args.out, Registry(default_registry_path(args.registry)),
                                   args.responses, generation, args.seed)  # fmt: skip
    kind = "pairwise" if args.responses == 2 else "ranking"
    print(f"{counts['tasks']} {kind} tasks from {counts['prompts']} prompts ({counts['prompts_skipped']} prompts "
          f"without two distinct non-empty answers skipped): {args.out}")  # fmt: skip
    print(f"Label Studio labeling config: {Path(args.out).with_suffix('.label_config.xml')}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    if getattr(args, "verbose", False):
        make_verbose()
    try:
        code = args.handler(args)
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
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
