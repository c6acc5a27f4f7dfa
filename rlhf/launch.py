"""Starting a stage: the one way, used by the pipeline, `rlhf stage` and `python -m stages.X` alike.

`start_stage` looks at the stage's `distributed` settings: several processes asked for, and this process
not one of them already, means the stage's program is started on each of them by the configured launcher
(deepspeed or torchrun), and rank 0's recorded result is read back; otherwise the stage runs here, inside
its wandb run, and rank 0 publishes its product to the registry under the name the stage table gives it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from rlhf.cli_args import parse_with_overrides
from rlhf.config import PipelineConfig, dump_config, load_config
from rlhf.cpu_threads import stage_threads
from rlhf.distributed import (
    check_deepspeed_batches,
    configure_logging,
    has_gpu,
    is_first_node,
    launch_command,
    needs_launcher,
    node_rank,
    rank_info,
    wait_for_all_ranks,
)
from rlhf.errors import RlhfError, StageError
from rlhf.models import is_adapter
from rlhf.precision import check_precision
from rlhf.quiet_console import LAUNCHED_BY_RLHF, launched, make_verbose
from rlhf.registry import REF_PREFIX, Manifest
from rlhf.settings import PolicyStageConfig, TrainStageConfig
from rlhf.sharding import peak_memory_gib
from rlhf.stage import RESULT_FILE, StageContext, StageResult, StageRun
from rlhf.stage_logs import STAGE_LOG, logged_to, run_logged
from rlhf.stage_table import REWARD_MODEL, StageSpec, program_spec, stage_key, stage_spec
from rlhf.tracking import Tracker
from rlhf.workspace import (
    CONFIG_FILE,
    Prepared,
    check_data_files,
    context_for,
    node_folder,
    run_dir_for,
    stage_section,
)

log = logging.getLogger(__name__)


def start_stage(
    cfg: PipelineConfig,
    stage: str,
    run_dir: str | Path | None = None,
    *,
    prepared: Prepared | None = None,
    fingerprint: str | None = None,
    log_file: Path | None = None,
    run: StageRun | None = None,
) -> StageResult:
    """Run `stage` (a run name) on its configured processes and return what it produced.

    `prepared`: what a pipeline resolved for it (otherwise the stage prepares its data and model itself, and
    records the config it ran with); `fingerprint`: its pipeline fingerprint (checkpoints live under it);
    `log_file`: where its output is also written (alone, by default `<run dir>/<stage>/stage.log`); `run`: the
    program's `run` when the caller already holds it (default: imported from the stage table's program).
    """
    stage_cfg = stage_section(cfg, stage)  # a missing section fails here, not once per process
    alone = prepared is None  # else a pipeline checked every stage's batches and recorded the config
    if alone:
        check_deepspeed_batches(cfg, [stage])
        check_precision(cfg, [stage])
        check_data_files(cfg, [stage])
    run_path = run_dir_for(cfg, run_dir)
    if alone and rank_info().is_main and not launched():  # else the launcher's parent did
        dump_config(cfg, node_folder(run_path) / CONFIG_FILE)
    if log_file is None and alone and rank_info().world_size == 1 and not launched():
        log_file = node_folder(run_path) / stage / STAGE_LOG  # `rlhf stage`: a log, as in a pipeline run
    if needs_launcher(cfg.distributed_for(stage)):
        overrides = launch_overrides(stage, stage_cfg, prepared) if prepared else []
        return launch_stage(cfg, stage, run_path, overrides, fingerprint, log_file)
    with logged_to(log_file) if log_file else nullcontext():
        return _run_here(cfg, stage, run_path, prepared, fingerprint, run, logged=log_file is not None)


def _run_here(
    cfg: PipelineConfig,
    stage: str,
    run_dir: Path,
    prepared: Prepared | None,
    fingerprint: str | None,
    run: StageRun | None,
    logged: bool,
) -> StageResult:
    """The stage in this process; into a log file (`logged`), its error goes too, an unexpected one with its
    traceback."""
    import importlib

    stage_cfg, ctx = context_for(cfg, stage, run_dir, prepared, fingerprint)
    run = run or importlib.import_module(stage_spec(stage).program).run
    try:
        return run_stage(run, stage_cfg, ctx)
    except RlhfError as exc:
        if logged:
            log.error("%s failed: %s", stage, exc)
        raise
    except Exception:
        if logged:
            log.exception("%s: stopped by an unexpected error", stage)
        raise


def run_stage(run: StageRun, stage_cfg: TrainStageConfig, ctx: StageContext) -> StageResult:
    """Run one stage inside its wandb run; rank 0 publishes the product and records the result."""
    import torch

    started = time.perf_counter()
    # before anything loads: every library sizes its pools from it
    torch.set_num_threads(stage_threads(stage_cfg.num_threads or torch.get_num_threads(), ctx.stage))
    with Tracker(
        ctx.pipeline.tracking,
        group=ctx.run_dir.name,
        job_type=ctx.stage,
        name=f"{ctx.run_dir.name}-{ctx.stage}",
        config={"stage": stage_cfg.model_dump(mode="json"), "pipeline": ctx.pipeline.model_dump(mode="json")},
        run_dir=ctx.run_dir,
        enabled=ctx.rank.is_main,
    ) as tracker:
        ctx.tracker = tracker
        tracker.use_models([ctx.start.ref] if ctx.start.ref else [])
        result = run(stage_cfg, ctx)
        result.metrics["peak_memory_gib"] = peak_memory_gib()  # rank 0's, against `rlhf plan`
        tracker.use_models(result.parents)
        tracker.log({f"final/{k}": v for k, v in result.metrics.items()})
        if ctx.rank.is_main:
            publish(result, stage_cfg, ctx)
        result.seconds = time.perf_counter() - started
        tracker.summary({**result.metrics, "registry_version": result.ref})
    if ctx.rank.is_main:
        result.save(ctx.work_dir / RESULT_FILE)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
        log.info("%s: done in %.0fs: %s", ctx.stage, result.seconds, shown)
    return result


# --------------------------------------------------------------------------------------------------
# Publishing


def publish(result: StageResult, stage_cfg: TrainStageConfig, ctx: StageContext) -> Manifest:
    """Move the stage's output into the registry as a new version, with its lineage; log it to wandb."""
    manifest = ctx.registry.publish(
        stage_spec(ctx.stage).publishes_as,
        result.output_dir,
        stage=ctx.stage,
        base_model=ctx.start.base_model,
        parents=([ctx.start.ref] if ctx.start.ref else []) + result.parents,
        datasets=ctx.datasets_read,
        config=stage_cfg.model_dump(mode="json"),
        metrics={k: float(v) for k, v in result.metrics.items()},
        wandb_run_id=ctx.tracker.run_id if ctx.tracker else None,
        lora_base=_lora_base(ctx) if is_adapter(result.output_dir) else None,
        extra={"pipeline": ctx.pipeline.name, "run_dir": str(ctx.run_dir)}
        | ({"fingerprint": ctx.fingerprint} if ctx.fingerprint else {}),
    )
    result.output_dir, result.ref = ctx.registry.resolve(manifest.ref), manifest.ref
    if ctx.tracker:
        meta = {"stage": ctx.stage, "parents": manifest.parents, "metrics": manifest.metrics,
                "config_hash": manifest.config_hash}  # fmt: skip
        ctx.tracker.log_model(manifest.name, manifest.version, result.output_dir, meta)
    log.info("%s: published %s", ctx.stage, manifest.ref)
    return manifest


def _lora_base(ctx: StageContext) -> str:
    """What an adapter applies to, as a registry reference where possible.

    A base from the registry is named by its version; a local base directory (e.g. a materialized built-in
    spec) is registered under its folder name first, reusing an identical earlier version; a hub id stays.
    """
    if ctx.start.ref:  # an adapter trained on an adapter version applies to that version's own base
        return ctx.registry.manifest(ctx.start.ref).lora_base or REF_PREFIX + ctx.start.ref
    base = Path(ctx.start.spec.name)
    if not base.is_dir():
        return ctx.start.spec.name
    name = base.name.lower()
    manifest = ctx.registry.find_identical(name, base) or ctx.registry.add(
        name, base, stage="base", base_model=ctx.start.base_model
    )
    return REF_PREFIX + manifest.ref


# --------------------------------------------------------------------------------------------------
# Several processes


def launch_stage(
    cfg: PipelineConfig,
    stage: str,
    run_dir: Path,
    overrides: list[str],
    fingerprint: str | None = None,
    log_file: Path | None = None,
) -> StageResult:
    """Run one stage on its `distributed` processes: start its program on each with the configured
    launcher, wait, and read the result rank 0 recorded. A failure on any rank stops them all (the
    launcher's job); its error is in the output above.

    On several nodes each node runs this with its own NODE_RANK, and the run directory must be shared:
    a node's launcher exits 0 only after rank 0 has recorded the result there (`wait_for_all_ranks`).
    """
    spec = stage_spec(stage)
    args = ["--config", str(node_folder(run_dir) / CONFIG_FILE), "--run-dir", str(run_dir), *overrides]
    if stage != spec.name:
        args[:0] = ["--name", stage]
    if fingerprint:
        args[:0] = ["--fingerprint", fingerprint]
    dist = cfg.distributed_for(stage)
    command = launch_command(dist, spec.program, args)
    result_file = run_dir / stage / RESULT_FILE
    if is_first_node():  # a result from an earlier try must not pass for this one's
        result_file.unlink(missing_ok=True)  # (the other nodes cannot start before the first one has)
    env = {**os.environ, LAUNCHED_BY_RLHF: "1"}
    if not has_gpu():
        env.setdefault("DS_ACCELERATOR", "cpu")
    processes = dist.num_processes * dist.num_nodes
    where = f" (node {node_rank()} of {dist.num_nodes})" if dist.num_nodes > 1 else ""
    log.info("%s: starting %d processes%s: %s", stage, processes, where, shlex.join(command))
    returncode = (
        run_logged(command, env, log_file) if log_file else subprocess.run(command, env=env).returncode
    )
    if returncode != 0:
        raise StageError(
            f"{stage}: failed on {processes} processes (exit code {returncode}); the failing rank's error "
            f"is above, its run directory {run_dir / stage}"
        )
    if not result_file.is_file():
        raise StageError(
            f"{stage}: the ranks ended without a result in {result_file}; on several nodes the run directory "
            "must be on a filesystem every node shares"
        )
    return StageResult.load(result_file)


def launch_overrides(stage: str, stage_cfg: TrainStageConfig, prepared: Prepared) -> list[str]:
    """What a launched stage must be told that one run here gets from the pipeline: the model it starts
    from (e.g. the SFT version just published) and, for PPO, the reward model."""
    key = stage_key(stage)
    overrides = [f"{key}.model={json.dumps(prepared.start.model_dump(mode='json', exclude_none=True))}"]
    scores_with_the_runs_reward_model = (
        isinstance(stage_cfg, PolicyStageConfig)
        and stage_cfg.online
        and stage_cfg.rewards is None
        and stage_cfg.ppo.reward_model is None
        and REWARD_MODEL in prepared.inputs
    )
    if scores_with_the_runs_reward_model:
        overrides.append(f"{key}.ppo.reward_model={prepared.inputs[REWARD_MODEL]}")
    return overrides


# --------------------------------------------------------------------------------------------------
# `python -m stages.X`


def stage_main(run: StageRun, argv: list[str] | None = None) -> int:
    """Entry of every stage program: `python -m stages.<name> --config FILE [key=value ...]`, alone (it
    launches itself on several processes when its settings ask for them) or on each rank of a launch."""
    spec = program_spec(_module_of(run))
    args = parse_with_overrides(stage_parser(spec), argv)
    if args.verbose:
        make_verbose()  # else as the environment says: a launching `rlhf run -v` sets it for its ranks
    configure_logging(rank_info(), args.debug)
    try:
        result = run_standalone(args.name or spec.name, run, args.config, args.overrides, args.run_dir,
                                args.fingerprint)  # fmt: skip
        wait_for_all_ranks()
    except RlhfError as exc:
        if args.debug:
            raise
        print(f"error: [rank {rank_info().rank}] {exc}", file=sys.stderr)
        return 2
    if rank_info().is_main and not launched():  # else the launching process says it
        print(f"{result.stage}: done in {result.seconds:.0f}s; {result.describe()}")
    return 0


def stage_parser(spec: StageSpec) -> argparse.ArgumentParser:
    """A stage program's arguments, apart from `stage_main` so that what a user or a launcher passes can be
    checked without starting the stage."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {spec.program}", description=f"Run the {spec.name} stage."
    )
    parser.add_argument("--config", required=True, help="pipeline YAML")
    parser.add_argument("--run-dir", help="run directory (default: a new one under runs_dir)")
    parser.add_argument("--name", help=f"which of several named {spec.name} stages, e.g. {spec.name}-ppo")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="the libraries' output on the console too"
    )
    parser.add_argument("--fingerprint", help=argparse.SUPPRESS)  # given by the pipeline that launches it
    # the deepspeed launcher passes the local rank as an argument too; we read it from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.sft.max_steps=50")
    return parser


def run_standalone(
    stage: str,
    run: StageRun | None,
    config_path: str | Path,
    overrides: list[str],
    run_dir: str | Path | None = None,
    fingerprint: str | None = None,
) -> StageResult:
    """One stage from a pipeline file, outside a pipeline run (or launched by one, with its fingerprint)."""
    cfg = load_config(config_path, overrides)
    return start_stage(cfg, stage, run_dir, fingerprint=fingerprint, run=run)


def _module_of(run: StageRun) -> str:
    """The module a program's `run` is defined in, also when that program runs as `python -m` (`__main__`)."""
    module = sys.modules[run.__module__]
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None else run.__module__
