"""The stage contract: what a stage gets from outside (StageContext), what it hands back (StageResult),
and the one entry helper every `stages/*.py` uses for `python -m stages.X --config FILE`.

A stage never looks for another stage's output by path: the context's `inputs` carry every location
it needs (the model to start from, dataset files), resolved here from the pipeline config.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.config import (
    DistributedConfig,
    ModelSpec,
    PipelineConfig,
    PreferencesConfig,
    dump_config,
    load_config,
    stage_program,
)
from rlhf.data.files import fingerprint
from rlhf.data.importers import ImportOptions
from rlhf.data.preferences import ImportSettings, import_preferences
from rlhf.data.synthetic import write_synthetic_task
from rlhf.distributed import (
    RankInfo,
    check_deepspeed_batches,
    configure_logging,
    has_gpu,
    is_first_node,
    launch_command,
    node_rank,
    rank_info,
    wait_for_all_ranks,
)
from rlhf.errors import ConfigError, RlhfError, StageError
from rlhf.models import is_adapter, is_builtin_spec, materialize, registry_model
from rlhf.registry import REF_PREFIX, Manifest, Registry, default_registry_path, is_reference
from rlhf.stage_logs import run_logged
from rlhf.tracking import Tracker

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
HISTORY_FILE = "history.json"  # a stage's logged training rows: [{"step": n, metric: value, ...}, ...]
LAUNCHED_BY_RLHF = "RLHF_LAUNCHED"  # set for the processes `launch_stage` starts
PUBLISHED_AS = {"sft": "sft-policy", "reward": "reward-model", "policy": "policy"}  # program -> registry name
DEFAULT_REWARD_MODEL = f"{REF_PREFIX}reward-model:latest"  # what a PPO stage scores with, unless told


@dataclass
class ResolvedModel:
    """A model spec made loadable, with where it came from (for lineage)."""

    spec: ModelSpec  # name is a local directory or hub id; `base` set for a registry LoRA version
    ref: str | None  # the concrete registry version ("sft-policy:v3") when it came from the registry
    base_model: str  # the root of the chain: hub id, built-in spec or directory the first stage started from


@dataclass
class StageContext:
    """Everything a stage needs from outside; built by `prepare_context`, never by the stage."""

    stage: str
    pipeline: PipelineConfig
    run_dir: Path
    work_dir: Path  # this stage's scratch: checkpoints, logs
    output_dir: Path  # the stage's final product (a HF model directory) before it is published
    rank: RankInfo
    seed: int
    start: ResolvedModel  # the model this stage starts from
    inputs: dict[str, str]  # data role -> location: "sft_train", "sft_eval", "eval_prompts"
    task: str | None  # name of the gold-reward task the data comes from, if any
    registry: Registry
    checkpoint_dir: Path  # where training checkpoints go, and where a rerun of the same stage resumes from
    fingerprint: str | None = None  # of the stage's resolved config and inputs, when the pipeline runs it
    datasets_read: list[dict[str, str]] = field(default_factory=list)  # lineage, filled by `data`
    tracker: Tracker | None = None

    @property
    def model(self) -> ModelSpec:
        return self.start.spec

    @property
    def distributed(self) -> DistributedConfig:
        """This stage's processes and DeepSpeed settings (the pipeline's, under the stage's own keys)."""
        return self.pipeline.distributed_for(self.stage)

    def input(self, role: str) -> str:
        """A required input; a missing one is a config error naming the key to set."""
        if role not in self.inputs:
            raise ConfigError(f"stages.{self.stage}: needs '{role}' but none is configured (set data.{role})")
        return self.inputs[role]

    def data(self, role: str, override: str | None = None) -> str:
        """The dataset this stage reads for `role` (the stage config's own path wins), recorded for lineage."""
        path = override or self.input(role)
        if not any(entry["path"] == path for entry in self.datasets_read):
            self.datasets_read.append({"name": role, "path": path, "fingerprint": fingerprint(path)})
        return path


@dataclass
class StageResult:
    """What a stage produced: its model directory, its headline metrics, and the registry name it goes by."""

    stage: str
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    publish_as: str | None = None  # registry model name, e.g. "sft-policy"; None: nothing to publish
    parents: list[str] = field(default_factory=list)  # registry versions it used besides its start (lineage)
    ref: str | None = None  # the published version ("sft-policy:v3"), set once published
    seconds: float = 0.0
    cached: bool = False  # not trained: a version with the stage's fingerprint was already published

    def save(self, path: Path) -> None:
        atomic.write_text(path, json.dumps(asdict(self), default=str, indent=2))


def new_run_dir(cfg: PipelineConfig) -> Path:
    """A fresh, sortable run directory under `runs_dir`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def run_dir_for(cfg: PipelineConfig, given: str | Path | None) -> Path:
    """The run directory given, or a new one. A node of several started one by one (NODE_RANK set) must be
    given one, the same shared directory on every node, since each would otherwise make its own."""
    if given is None and "NODE_RANK" in os.environ:
        raise ConfigError("NODE_RANK is set (one node of several): pass --run-dir, the same on every node")
    run_dir = Path(given) if given else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def prepare_data(cfg: PipelineConfig, run_dir: Path) -> tuple[dict[str, str], str | None]:
    """Resolve the pipeline's data section to file locations; write the synthetic task if asked.

    Returns (inputs, task): explicit files win over the synthetic task's files.
    """
    inputs: dict[str, str] = {}
    task = None
    exports = [Path(path) for path in cfg.data.preferences.files]
    if cfg.data.synthetic is not None:
        files = write_synthetic_task(run_dir / "data" / "synthetic", cfg.data.synthetic)
        inputs.update({role: str(path) for role, path in files.items() if role != "preferences"})
        exports.append(files["preferences"])
        task = "synthetic"
    for role in ("sft_train", "sft_eval", "eval_prompts"):
        value = getattr(cfg.data, role)
        if value is not None:
            inputs[role] = value
    if exports:
        inputs["preferences"] = str(
            import_exports(exports, cfg.data.preferences, run_dir / "data" / "preferences")
        )
    return inputs, task


def import_exports(exports: list[Path], prefs: PreferencesConfig, out_dir: Path) -> Path:
    """The configured preference exports through `rlhf data import`'s machinery, into the run."""
    options = ImportOptions(column_map=prefs.column_map)
    settings = ImportSettings(format=prefs.format, options=options, ties=prefs.ties, min_votes=prefs.min_votes,
                              min_annotator_agreement=prefs.min_annotator_agreement,
                              test_fraction=prefs.test_fraction, split_seed=prefs.split_seed)  # fmt: skip
    report = import_preferences(exports, out_dir, settings)
    log.info("preferences: %s (report: %s)", report.identity, report.report_path)
    return out_dir


def resolve_model(spec: ModelSpec, run_dir: Path, seed: int, registry: Registry) -> ResolvedModel:
    """Make a model spec loadable: a registry reference becomes its version's directory (with its LoRA base),
    a built-in spec a directory in the run, so every later load is an ordinary load."""
    if is_reference(spec.name):
        loadable, manifest = registry_model(registry, spec)
        return ResolvedModel(loadable, manifest.ref, manifest.base_model or manifest.ref)
    if is_builtin_spec(spec.name):
        path = materialize(spec, run_dir / "base-model" / spec.name, seed=seed)
        return ResolvedModel(spec.model_copy(update={"name": str(path)}), None, spec.name)
    return ResolvedModel(spec, None, spec.name)


def open_registry(cfg: PipelineConfig) -> Registry:
    return Registry(default_registry_path(cfg.registry))


def prepare_context(
    cfg: PipelineConfig,
    stage: str,
    run_dir: Path,
    start: ResolvedModel,
    inputs: dict[str, str],
    task: str | None,
    fingerprint: str | None = None,
) -> StageContext:
    """The context of one stage in one run directory. A stage with a fingerprint keeps its checkpoints
    outside the run, under that fingerprint, so the next run of the same stage resumes from them."""
    work_dir = run_dir / stage
    work_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage=stage,
        pipeline=cfg,
        run_dir=run_dir,
        work_dir=work_dir,
        output_dir=work_dir / "output",
        rank=rank_info(),
        seed=cfg.seed,
        start=start,
        inputs=dict(inputs),
        task=task,
        registry=open_registry(cfg),
        checkpoint_dir=checkpoint_dir(cfg, stage, fingerprint) if fingerprint else work_dir / "checkpoints",
        fingerprint=fingerprint,
    )


def checkpoint_dir(cfg: PipelineConfig, stage: str, fingerprint: str) -> Path:
    """Checkpoints of the stage with this fingerprint, whichever run trains it."""
    return Path(cfg.runs_dir) / "checkpoints" / f"{stage}-{fingerprint}"


def publish(result: StageResult, stage_cfg: Any, ctx: StageContext) -> Manifest:
    """Move the stage's output into the registry as a new version, with its lineage; log it to wandb."""
    manifest = ctx.registry.publish(
        result.publish_as,
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


def run_stage(
    run: Callable[[Any, StageContext], StageResult], stage_cfg: Any, ctx: StageContext
) -> StageResult:
    """Run one stage inside its wandb run; rank 0 records the result in the stage's directory."""
    started = time.perf_counter()
    tracking = ctx.pipeline.tracking
    with Tracker(
        tracking,
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
        tracker.use_models(result.parents)
        tracker.log({f"final/{k}": v for k, v in result.metrics.items()})
        if ctx.rank.is_main and result.publish_as:
            publish(result, stage_cfg, ctx)
        result.seconds = time.perf_counter() - started
        tracker.summary({**result.metrics, "registry_version": result.ref})
    if ctx.rank.is_main:
        result.save(ctx.work_dir / RESULT_FILE)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
        log.info("%s: done in %.0fs: %s", ctx.stage, result.seconds, shown)
    return result


def stage_main(
    stage: str, run: Callable[[Any, StageContext], StageResult], argv: list[str] | None = None
) -> int:
    """Entry for `python -m stages.<stage> --config FILE [key=value ...]`, alone or on each rank of a launch."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--config", required=True, help="pipeline YAML")
    parser.add_argument("--run-dir", help="run directory (default: a new one under runs_dir)")
    parser.add_argument("--name", help=f"which of several named {stage} stages, e.g. {stage}-ppo")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--fingerprint", help=argparse.SUPPRESS)  # given by the pipeline that launches it
    # the deepspeed launcher passes the local rank as an argument too; we read it from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.sft.max_steps=50")
    args = parser.parse_args(argv)
    configure_logging(rank_info(), args.debug)
    try:
        result = run_standalone(
            args.name or stage, run, args.config, args.overrides, args.run_dir, args.fingerprint
        )
        wait_for_all_ranks()
    except RlhfError as exc:
        if args.debug:
            raise
        print(f"error: [rank {rank_info().rank}] {exc}", file=sys.stderr)
        return 2
    if rank_info().is_main and LAUNCHED_BY_RLHF not in os.environ:  # else the launching process says it
        print(f"{result.stage}: done in {result.seconds:.0f}s; {describe_result(result)}")
    return 0


def describe_result(result: StageResult) -> str:
    """Where a stage's product went, for the last console line."""
    if result.cached:
        return f"cached as {result.ref} ({result.output_dir})"
    return f"published {result.ref} ({result.output_dir})" if result.ref else f"output in {result.output_dir}"


def run_standalone(
    stage: str,
    run: Callable[[Any, StageContext], StageResult],
    config_path: str,
    overrides: list[str],
    run_dir: str | None = None,
    fingerprint: str | None = None,
) -> StageResult:
    """One stage outside a pipeline (or launched by one, with its fingerprint): resolve data and model into a
    run directory, then run it."""
    cfg = load_config(config_path, overrides)
    check_deepspeed_batches(cfg, [stage])
    run_path = run_dir_for(cfg, run_dir)
    if rank_info().is_main:
        dump_config(cfg, run_path / "config.yaml")
    stage_cfg, ctx = standalone_context(cfg, stage, run_path, fingerprint)
    return run_stage(run, stage_cfg, ctx)


def standalone_context(
    cfg: PipelineConfig, stage: str, run_dir: Path, fingerprint: str | None = None
) -> tuple[Any, StageContext]:
    """A stage's config section and its context when it runs on its own: data and model resolved here."""
    stage_cfg = stage_section(cfg, stage)
    inputs, task = prepare_data(cfg, rank_folder(run_dir))
    start = resolve_model(stage_cfg.model or cfg.model, rank_folder(run_dir), cfg.seed, open_registry(cfg))
    return stage_cfg, prepare_context(cfg, stage, run_dir, start, inputs, task, fingerprint)


def rank_folder(run_dir: Path) -> Path:
    """Where this rank writes the files every rank needs (the task's data, a materialized built-in model):
    the run directory for rank 0, a folder of its own for the others. Under a launcher every rank writes its
    own identical copy, so no two processes write one folder at once."""
    rank = rank_info()
    return run_dir if rank.is_main else run_dir / f".rank{rank.rank}"


def node_folder(run_dir: Path) -> Path:
    """Where a node's parent process writes its own files (config, data, base model) when every node runs
    the pipeline: the run directory on the first node, which owns it, a folder of its own on the others."""
    folder = run_dir if is_first_node() else run_dir / f".node{node_rank()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stage_section(cfg: PipelineConfig, stage: str) -> Any:
    """The config of the stage run as `stage` (`sft`, `policy`, `policy-ppo`); a clear error when absent."""
    plan = cfg.stages.plan()
    if stage in plan:
        return plan[stage]
    named = [name for name in plan if stage_program(name) == stage]
    if named:
        raise ConfigError(f"stages.{stage}: holds several stages ({', '.join(named)}); name one of them")
    section = stage_program(stage)
    raise ConfigError(f"stages.{section}: no stage '{stage}' configured; add it under `stages:`")


def launch_stage(
    cfg: PipelineConfig,
    config_path: Path,
    stage: str,
    run_dir: Path,
    overrides: list[str],
    fingerprint: str | None = None,
    log_file: Path | None = None,
) -> StageResult:
    """Run one stage on its `distributed` processes: start `python -m stages.<program>` on each with the
    configured launcher, wait, and read the result rank 0 recorded. A failure on any rank stops them all
    (the launcher's job); its error is in the output above.

    On several nodes each node runs this with its own NODE_RANK, and the run directory must be shared:
    a node's launcher exits 0 only after rank 0 has recorded the result there (`wait_for_all_ranks`).
    """
    program = stage_program(stage)
    args = ["--config", str(config_path), "--run-dir", str(run_dir), *overrides]
    if stage != program:
        args[:0] = ["--name", stage]
    if fingerprint:
        args[:0] = ["--fingerprint", fingerprint]
    dist = cfg.distributed_for(stage)
    command = launch_command(dist, f"stages.{program}", args)
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
    recorded = json.loads(result_file.read_text(encoding="utf-8"))
    return StageResult(**{**recorded, "output_dir": Path(recorded["output_dir"])})
