"""The pipeline runner: one run directory with its record, the data, each stage in dependency order, the
evaluation, and a report.

The graph is data -> sft -> reward -> policy (one or several named policy stages) -> evaluate, from the config:
a stage left out does not run, one given as a registry version (`sft: registry:sft-policy:v3`) is taken from
the registry. A stage that runs gets a fingerprint: the hash of its resolved config and of its inputs (the
data it reads, the registry versions it starts from). When a version with that fingerprint is already
published the stage is not trained again (`sft: cached as sft-policy:v3`) unless asked (--force, --from,
--only), and until it publishes its checkpoints live under that fingerprint, so a stage killed mid-training
resumes at the next run. A failing stage stops the run with its error and the path of its log; later stages do not start.

A stage is started by module name (`stages.<name>`), so the library never imports the stage programs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.config import ModelSpec, PipelineConfig, TrainStageConfig, dump_config, stage_key, stage_program
from rlhf.data.files import fingerprint as file_fingerprint
from rlhf.distributed import check_deepspeed_batches, is_first_node, needs_launcher, node_rank
from rlhf.errors import ConfigError, RlhfError, StageError
from rlhf.eval import GOLD_REWARDS, PolicyEvaluation, evaluate_and_record, evaluate_model
from rlhf.registry import REF_PREFIX, Registry, is_reference
from rlhf.run_report import log_report, write_report
from rlhf.runs import RunRecord
from rlhf.stage import (
    DEFAULT_REWARD_MODEL,
    HISTORY_FILE,
    PUBLISHED_AS,
    StageResult,
    checkpoint_dir,
    launch_stage,
    node_folder,
    open_registry,
    prepare_context,
    prepare_data,
    resolve_model,
    run_dir_for,
    run_stage,
)
from rlhf.stage_logs import logged_to

log = logging.getLogger(__name__)

# The stage a stage's program starts from by default: its published model (None: the pipeline's base model).
# A stage's own `model:` overrides this. Stages run in the order `StagesConfig.plan` gives.
STARTS_FROM: dict[str, str | None] = {"sft": None, "reward": "sft", "policy": "sft"}
# The data each stage program reads (its config's own paths are hashed with its config).
READS: dict[str, tuple[str, ...]] = {
    "sft": ("sft_train", "sft_eval", "eval_prompts"),
    "reward": ("preferences",),
    "policy": ("preferences", "eval_prompts"),
}
# Settings that change how a stage runs, not what it produces: left out of its fingerprint.
HOW_NOT_WHAT = {"distributed", "num_threads", "logging_steps", "save_steps", "save_total_limit", "eval_steps",
                "per_device_eval_batch_size"}  # fmt: skip
DATA, EVALUATE = "data", "evaluate"


@dataclass(frozen=True)
class RunOptions:
    """Which stages train though a version with their fingerprint exists: `force` (these), `start_from`
    (this one and every one after it), `only` (this one alone; every other must be cached or taken).
    A name is a run name (`policy-ppo`) or a program (`policy`: each policy stage)."""

    force: frozenset[str] = frozenset()
    start_from: str | None = None
    only: str | None = None


@dataclass
class PipelineRun:
    run_dir: Path
    base_model: ModelSpec
    base_metrics: dict[str, float] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)
    evaluations: dict[str, PolicyEvaluation] = field(
        default_factory=dict
    )  # policy stage -> vs the SFT policy
    report: Path | None = None


def stage_graph(cfg: PipelineConfig) -> list[str]:
    """Every step of a run in dependency order: data, the stages (run or taken), evaluate."""
    taken, plan = cfg.stages.taken(), cfg.stages.plan()
    stages = [name for name in ("sft", "reward") if name in taken or name in plan]
    stages += [name for name in [*taken, *plan] if stage_program(name) == "policy"]
    return [DATA, *stages, EVALUATE]


def run_pipeline(
    cfg: PipelineConfig, run_dir: Path | None = None, options: RunOptions | None = None
) -> PipelineRun:
    """Run the pipeline; the resolved config, the run record, the stages' logs, a summary and a report land in
    the run directory.

    On several nodes started one by one (NODE_RANK set) every node runs this with the same shared run
    directory: each launches its share of every stage, and the first node alone evaluates and summarizes.
    """
    options = options or RunOptions()
    graph = stage_graph(cfg)
    _check_options(options, graph)
    check_deepspeed_batches(cfg)
    started = time.perf_counter()
    run_dir = run_dir_for(cfg, run_dir)
    local = node_folder(run_dir)  # the first node's is the run directory; the others keep theirs apart
    dump_config(cfg, local / "config.yaml")
    record = RunRecord.start(local, cfg.name, cfg.fingerprint(), graph)
    log.info("run directory: %s", run_dir)
    try:
        run = _run_stages(cfg, run_dir, local, options, graph, record)
    except RlhfError as exc:
        report = _write_report(cfg, run_dir) if is_first_node() else None  # what the stages before it did
        record.finish(time.perf_counter() - started, error=str(exc), report=str(report) if report else None)
        raise
    if is_first_node():
        run.report = _write_report(cfg, run_dir)
    record.finish(time.perf_counter() - started, report=str(run.report) if run.report else None)
    return run


def _run_stages(
    cfg: PipelineConfig, run_dir: Path, local: Path, options: RunOptions, graph: list[str], record: RunRecord
) -> PipelineRun:
    record.stage(DATA, "running")
    inputs, task = prepare_data(cfg, local)
    data = {role: _content_fingerprint(path) for role, path in inputs.items()}  # hashed once for every stage
    record.stage(DATA, "done", fingerprint=_digest(data))
    registry = open_registry(cfg)
    base = resolve_model(cfg.model, local, cfg.seed, registry)
    run = PipelineRun(run_dir=run_dir, base_model=base.spec)
    lead = is_first_node()
    evaluating = (
        cfg.evaluation is not None and "eval_prompts" in inputs and _selected(options, EVALUATE, graph)
    )
    if lead and evaluating and task in GOLD_REWARDS:
        run.base_metrics = evaluate_model(base.spec, inputs["eval_prompts"], cfg.evaluation, task, cfg.seed)

    # stage -> registry reference of what it published, reused or was taken from
    published: dict[str, str] = {}
    plan, taken = cfg.stages.plan(), cfg.stages.taken()
    for name in graph[1:-1]:
        program = stage_program(name)
        if name in taken:
            ref = registry.manifest(taken[name].removeprefix(REF_PREFIX)).ref
            record.stage(name, "taken", ref=ref)
            log.info("%s: taken from the registry as %s", name, ref)
            result = StageResult(stage=name, output_dir=registry.resolve(ref), ref=ref)
        else:
            try:
                result = _train_or_reuse(cfg, name, plan[name], published, inputs, data, task, run_dir, local,
                                         options, graph, record, registry)  # fmt: skip
            except Exception as exc:
                raise _stage_failed(record, name, exc) from exc
            run.results.append(result)
        if not result.ref:
            continue
        published[name] = REF_PREFIX + result.ref
        if program != "policy":  # e.g. the reward model, for the policy stages and the evaluation
            inputs[f"{name}_model"] = published[name]

    if not lead:
        log.info("node %d: every stage done; the first node evaluates and writes the summary", node_rank())
        return run
    if evaluating:
        record.stage(EVALUATE, "running")
        evaluation_started = time.perf_counter()
        reference = published.get("sft", base.spec.name)
        for name, policy in published.items():
            if stage_program(name) == "policy":
                run.evaluations[name] = evaluate_and_record(
                    registry, policy, reference, inputs["eval_prompts"], cfg.evaluation, task,
                    cfg.tracking, run_dir, cfg.seed, judge=published.get("reward"),
                )  # fmt: skip
        record.stage(EVALUATE, "done", seconds=round(time.perf_counter() - evaluation_started, 1))
    summary = {"base_model": run.base_model.name, "base_metrics": run.base_metrics,
               "stages": [asdict(r) for r in run.results],
               "evaluations": {name: e.metrics for name, e in run.evaluations.items()}}  # fmt: skip
    atomic.write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return run


def _train_or_reuse(
    cfg: PipelineConfig,
    name: str,
    stage_cfg: TrainStageConfig,
    published: dict[str, str],
    inputs: dict[str, str],
    data: dict[str, str],
    task: str | None,
    run_dir: Path,
    local: Path,
    options: RunOptions,
    graph: list[str],
    record: RunRecord,
    registry: Registry,
) -> StageResult:
    """The stage's version with its fingerprint when one is published and the stage is not asked to train,
    else the stage trained here (in-process or on its launcher's processes), with its output logged."""
    program = stage_program(name)
    parent = STARTS_FROM[program]
    default = cfg.model.model_copy(update={"name": published[parent]}) if parent in published else cfg.model
    spec = stage_cfg.model or default
    fingerprint = stage_fingerprint(cfg, name, stage_cfg, spec, data, inputs, registry)
    cached = registry.find_by_fingerprint(PUBLISHED_AS[program], fingerprint)
    if cached is not None and not _selected(options, name, graph, forced=True):
        record.stage(name, "cached", fingerprint=fingerprint, ref=cached.ref)
        log.info("%s: cached as %s (fingerprint %s)", name, cached.ref, fingerprint)
        _bring_history(cached.extra.get("run_dir"), name, run_dir)
        return StageResult(stage=name, output_dir=registry.resolve(cached.ref), metrics=dict(cached.metrics),
                           publish_as=cached.name, ref=cached.ref, cached=True)  # fmt: skip
    if not _selected(options, name, graph):
        raise StageError(
            f"--only {options.only} needs this stage published with fingerprint {fingerprint}, and no version "
            "has it; run without --only first"
        )
    stage_log = local / name / "stage.log"  # each node its own
    record.stage(name, "running", fingerprint=fingerprint, log=str(stage_log))
    log.info("stage %s: starting from %s (fingerprint %s, log %s)", name, spec.name, fingerprint, stage_log)
    if needs_launcher(cfg.distributed_for(name)):
        overrides = launch_overrides(name, stage_cfg, spec, inputs)
        result = launch_stage(cfg, local / "config.yaml", name, run_dir, overrides, fingerprint, stage_log)
    else:
        with logged_to(stage_log):
            result = _run_in_process(cfg, name, stage_cfg, spec, inputs, task, run_dir, local, fingerprint)
    record.stage(name, "done", ref=result.ref, seconds=round(result.seconds, 1))
    if is_first_node():  # published: a rerun is cached, and a forced one must train afresh, not resume
        shutil.rmtree(checkpoint_dir(cfg, name, fingerprint), ignore_errors=True)
    return result


def _bring_history(trained_in: str | None, stage: str, run_dir: Path) -> None:
    """A reused stage's training history, copied from the run that trained it, for this run's report."""
    history = Path(trained_in or "") / stage / HISTORY_FILE
    if trained_in and history.is_file() and Path(trained_in).resolve() != run_dir.resolve():
        (run_dir / stage).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(history, run_dir / stage / HISTORY_FILE)


def _stage_failed(record: RunRecord, name: str, exc: Exception) -> StageError:
    """The run's error for a failed stage, recorded: the stage's own message, and its log when it has one."""
    error = str(exc) if isinstance(exc, RlhfError) else f"{type(exc).__name__}: {exc}"
    record.stage(name, "failed", error=error)
    stage_log = record.stages[name].log
    return StageError(f"{name} failed: {error}" + (f" (log: {stage_log})" if stage_log else ""))


def _run_in_process(
    cfg: PipelineConfig,
    name: str,
    stage_cfg: TrainStageConfig,
    spec: ModelSpec,
    inputs: dict[str, str],
    task: str | None,
    run_dir: Path,
    local: Path,
    fingerprint: str,
) -> StageResult:
    """Run the stage in this process; its error (an unexpected one with its traceback) goes to its log too."""
    start = resolve_model(spec, local, cfg.seed, open_registry(cfg))
    module = importlib.import_module(f"stages.{stage_program(name)}")
    ctx = prepare_context(cfg, name, run_dir, start, inputs, task, fingerprint)
    try:
        return run_stage(module.run, stage_cfg, ctx)
    except RlhfError as exc:
        log.error("%s failed: %s", name, exc)
        raise
    except Exception:
        log.exception("%s: stopped by an unexpected error", name)
        raise


def stage_fingerprint(
    cfg: PipelineConfig,
    name: str,
    stage_cfg: TrainStageConfig,
    start: ModelSpec,
    data: dict[str, str],
    inputs: dict[str, str],
    registry: Registry,
) -> str:
    """The hash of what decides a stage's product: its resolved config (less HOW_NOT_WHAT), the seed, the
    model it starts from (a registry version as its concrete version), the processes its global batch spans,
    the data it reads (`data`: content fingerprints by role) and, for PPO, the reward model's version."""
    program = stage_program(name)
    dist = cfg.distributed_for(name)
    payload: dict[str, Any] = {
        "stage": name,
        "config": stage_cfg.model_dump(mode="json", exclude=HOW_NOT_WHAT),
        "seed": cfg.seed,
        "start": _model_identity(start, registry),
        "world_size": dist.num_processes * dist.num_nodes,
        "data": {role: data[role] for role in READS[program] if role in data}
        | {role: _content_fingerprint(path) for role, path in _own_data(stage_cfg).items()},
    }
    if getattr(stage_cfg, "algorithm", None) == "ppo":
        reward = stage_cfg.ppo.reward_model or ModelSpec(
            name=inputs.get("reward_model", DEFAULT_REWARD_MODEL)
        )
        payload["reward_model"] = _model_identity(reward, registry)
    return _digest(payload)


def _own_data(stage_cfg: TrainStageConfig) -> dict[str, str]:
    """The data files a stage's own config names (they win over the pipeline's inputs)."""
    ppo = getattr(stage_cfg, "ppo", None)
    paths = {"dataset": getattr(stage_cfg, "dataset", None), "eval_dataset": getattr(stage_cfg, "eval_dataset", None),
             "ppo_prompts": ppo.prompts if ppo is not None else None}  # fmt: skip
    return {role: path for role, path in paths.items() if path}


def _model_identity(spec: ModelSpec, registry: Registry) -> dict[str, Any]:
    """A model as the fingerprint sees it: a registry version as its concrete `name:vN`, else as configured
    (a hub id with its revision, a built-in spec, a directory's path)."""
    identity = spec.model_dump(mode="json", exclude_none=True)
    if is_reference(spec.name):
        identity["name"] = registry.manifest(spec.name.removeprefix(REF_PREFIX)).ref
    return identity


def _content_fingerprint(path: str) -> str:
    """A data file's or directory's content hash. An imported preference dataset is known by what it was
    imported from and how (its sources' hashes, its settings): its rows also name their source file's path,
    which differs from run to run for the same data."""
    manifest_file = Path(path) / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if "sources" in manifest and "settings" in manifest:
            return _digest({"sources": [source["sha256"] for source in manifest["sources"]],
                            "settings": manifest["settings"]})  # fmt: skip
    return file_fingerprint(path)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _matches(option: str, stage: str) -> bool:
    return stage == option or stage_program(stage) == option


def _selected(options: RunOptions, stage: str, graph: list[str], forced: bool = False) -> bool:
    """Whether the options let `stage` run at all, or (forced) make it train even when cached."""
    if options.only is not None:
        return _matches(options.only, stage)
    if not forced:
        return True
    if any(_matches(name, stage) for name in options.force):
        return True
    if options.start_from is not None:
        first = next(i for i, name in enumerate(graph) if _matches(options.start_from, name))
        return graph.index(stage) >= first
    return False


def _check_options(options: RunOptions, graph: list[str]) -> None:
    named = [*options.force, options.start_from, options.only]
    for name in filter(None, named):
        if not any(_matches(name, stage) for stage in graph):
            raise ConfigError(f"no stage '{name}' in this pipeline (its stages: {', '.join(graph)})")


def _write_report(cfg: PipelineConfig, run_dir: Path) -> Path:
    """report.md with its figures, from what the run directory holds; logged to wandb."""
    report = write_report(run_dir)
    log_report(run_dir, report, cfg.tracking)
    return report


def launch_overrides(
    stage: str, stage_cfg: TrainStageConfig, start: ModelSpec, inputs: dict[str, str]
) -> list[str]:
    """What a launched stage must be told that an in-process one gets from the pipeline: the model it starts
    from (e.g. the SFT version just published) and, for PPO, the reward model."""
    key = stage_key(stage)
    overrides = [f"{key}.model={json.dumps(start.model_dump(mode='json', exclude_none=True))}"]
    ppo = getattr(stage_cfg, "ppo", None)
    if (
        getattr(stage_cfg, "algorithm", None) == "ppo"
        and ppo.reward_model is None
        and "reward_model" in inputs
    ):
        overrides.append(f"{key}.ppo.reward_model={inputs['reward_model']}")
    return overrides
