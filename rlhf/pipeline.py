"""The pipeline runner: one run directory with its record, the data, each stage in dependency order, the
evaluation, and a report.

The graph is data -> sft -> reward -> policy (one or several named policy stages) -> evaluate, from the config:
a stage left out does not run, one given as a registry version (`sft: registry:sft-policy:v3`) is taken from
the registry. A stage that runs gets a fingerprint: the hash of its resolved config and of its inputs (the
data it reads, the registry versions it starts from). When a version with that fingerprint is already
published the stage is not trained again (`sft: cached as sft-policy:v3`) unless asked (--force, --from,
--only), and until it publishes its checkpoints live under that fingerprint, so a stage killed mid-training
resumes at the next run. A failing stage stops the run with its error and the path of its log; later stages do not start.

Which stages there are, what each starts from and reads, and what it publishes as, comes from the stage
table (`rlhf.stage_table`); each is started by `rlhf.launch.start_stage`, which imports its program by module
name, so the library never imports the stage programs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf import atomic
from rlhf.config import PipelineConfig, dump_config
from rlhf.distributed import check_deepspeed_batches, is_first_node, node_rank
from rlhf.errors import ConfigError, RlhfError, StageError
from rlhf.eval import GOLD_REWARDS, PolicyEvaluation, evaluate_and_record, evaluate_model
from rlhf.fingerprints import content_fingerprint, digest, stage_fingerprint
from rlhf.launch import start_stage
from rlhf.precision import check_precision
from rlhf.registry import REF_PREFIX, Registry
from rlhf.run_report import log_report, write_report
from rlhf.runs import RunRecord
from rlhf.settings import ModelSpec, TrainStageConfig
from rlhf.stage import HISTORY_FILE, StageResult
from rlhf.stage_logs import STAGE_LOG
from rlhf.stage_table import REWARD_MODEL, STAGES, stage_spec
from rlhf.workspace import (
    CONFIG_FILE,
    Prepared,
    check_data_files,
    checkpoint_dir,
    node_folder,
    open_registry,
    prepare_data,
    resolve_model,
    run_dir_for,
)

log = logging.getLogger(__name__)

DATA, EVALUATE = "data", "evaluate"


@dataclass(frozen=True)
class RunOptions:
    """Which stages train though a version with their fingerprint exists: `force` (these), `start_from`
    (this one and every one after it), `only` (this one alone: the stages before it must be cached or taken,
    and the steps after it, the evaluation included, are skipped). A name is a run name (`policy-ppo`) or a
    section (`policy`: each policy stage)."""

    force: frozenset[str] = frozenset()
    start_from: str | None = None
    only: str | None = None


@dataclass
class PipelineRun:
    run_dir: Path
    base_model: ModelSpec
    base_metrics: dict[str, float] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)
    evaluations: dict[str, PolicyEvaluation] = field(default_factory=dict)  # evaluated stage -> vs its start
    skipped: list[str] = field(default_factory=list)  # the steps after the `--only` one
    report: Path | None = None


@dataclass
class _Steps:
    """What the stages of one run share while it goes on."""

    cfg: PipelineConfig
    run_dir: Path
    local: Path  # this node's folder of the run (the run directory itself on the first node)
    options: RunOptions
    graph: list[str]
    record: RunRecord
    registry: Registry
    inputs: dict[str, str]  # input role -> location; a published stage adds the input it provides
    data: dict[str, str]  # input role -> content fingerprint, hashed once for every stage
    task: str | None
    published: dict[str, str] = field(default_factory=dict)  # stage -> registry ref it published or took


def stage_graph(cfg: PipelineConfig) -> list[str]:
    """Every step of a run in dependency order: data, the stages (run or taken) in the table's order,
    evaluate."""
    names = [*cfg.stages.taken(), *cfg.stages.plan()]
    stages = [name for spec in STAGES for name in names if stage_spec(name) is spec]
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
    check_precision(cfg)
    check_data_files(cfg)
    started = time.perf_counter()
    run_dir = run_dir_for(cfg, run_dir)
    local = node_folder(run_dir)  # the first node's is the run directory; the others keep theirs apart
    dump_config(cfg, local / CONFIG_FILE)
    record = RunRecord.start(local, cfg.name, cfg.fingerprint(), graph)
    log.info("run directory: %s", run_dir)
    try:
        run = _run_steps(cfg, run_dir, local, options, graph, record)
    except RlhfError as exc:
        report = _write_report(cfg, run_dir) if is_first_node() else None  # what the stages before it did
        record.finish(time.perf_counter() - started, error=str(exc), report=str(report) if report else None)
        raise
    if is_first_node():
        run.report = _write_report(cfg, run_dir)
    record.finish(time.perf_counter() - started, report=str(run.report) if run.report else None)
    return run


def _run_steps(
    cfg: PipelineConfig, run_dir: Path, local: Path, options: RunOptions, graph: list[str], record: RunRecord
) -> PipelineRun:
    # 1. The data, hashed once for every stage's fingerprint, and the base model
    record.stage(DATA, "running")
    inputs, task = prepare_data(cfg, local)
    data = {role: content_fingerprint(path) for role, path in inputs.items()}
    record.stage(DATA, "done", fingerprint=digest(data))
    registry = open_registry(cfg)
    steps = _Steps(cfg, run_dir, local, options, graph, record, registry, inputs, data, task)
    base = resolve_model(cfg.model, local, cfg.seed, registry)
    run = PipelineRun(run_dir=run_dir, base_model=base.spec, skipped=_after_only(options, graph))
    lead = is_first_node()
    evaluating = (
        cfg.evaluation is not None and "eval_prompts" in inputs and _selected(options, EVALUATE, graph)
    )
    if lead and evaluating and task in GOLD_REWARDS:
        run.base_metrics = evaluate_model(base.spec, inputs["eval_prompts"], cfg.evaluation, task, cfg.seed)

    # 2. The stages in order, each taken from the registry, reused, or trained
    plan, taken = cfg.stages.plan(), cfg.stages.taken()
    for name in graph[1:-1]:
        if name in run.skipped:
            record.stage(name, "skipped")
            log.info("%s: skipped (after --only %s)", name, options.only)
            continue
        if name in taken:
            ref = registry.manifest(taken[name].removeprefix(REF_PREFIX)).ref
            record.stage(name, "taken", ref=ref)
            log.info("%s: taken from the registry as %s", name, ref)
            result = StageResult(stage=name, output_dir=registry.resolve(ref), ref=ref)
        else:
            try:
                result = _train_or_reuse(steps, name, plan[name])
            except Exception as exc:
                raise _stage_failed(record, name, exc) from exc
            run.results.append(result)
        if not result.ref:
            continue
        steps.published[name] = REF_PREFIX + result.ref
        if provides := stage_spec(name).provides:  # e.g. the reward model, for PPO and the evaluation
            inputs[provides] = steps.published[name]
    if not lead:
        log.info("node %d: every stage done; the first node evaluates and writes the summary", node_rank())
        return run

    # 3. Each evaluated stage's product against the model it started from, then the summary
    if evaluating:
        record.stage(EVALUATE, "running")
        evaluation_started = time.perf_counter()
        for name, product in steps.published.items():
            spec = stage_spec(name)
            if spec.evaluated:
                reference = steps.published.get(spec.starts_from or "", base.spec.name)
                run.evaluations[name] = evaluate_and_record(
                    registry, product, reference, inputs["eval_prompts"], cfg.evaluation, task,
                    cfg.tracking, run_dir, cfg.seed, judge=inputs.get(REWARD_MODEL),
                )  # fmt: skip
        record.stage(EVALUATE, "done", seconds=round(time.perf_counter() - evaluation_started, 1))
    summary = {"base_model": run.base_model.name, "base_metrics": run.base_metrics,
               "stages": [asdict(r) for r in run.results],
               "evaluations": {name: e.metrics for name, e in run.evaluations.items()}}  # fmt: skip
    atomic.write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return run


def _train_or_reuse(steps: _Steps, name: str, stage_cfg: TrainStageConfig) -> StageResult:
    """The stage's version with its fingerprint when one is published and the stage is not asked to train,
    else the stage trained (here or on its launcher's processes), with its output logged."""
    cfg, registry, record, spec = steps.cfg, steps.registry, steps.record, stage_spec(name)
    parent = spec.starts_from
    default = (
        cfg.model.model_copy(update={"name": steps.published[parent]})
        if parent in steps.published
        else cfg.model
    )
    start = stage_cfg.model or default
    fingerprint = stage_fingerprint(cfg, name, stage_cfg, start, steps.data, steps.inputs, registry)
    cached = registry.find_by_fingerprint(spec.publishes_as, fingerprint)
    if cached is not None and not _selected(steps.options, name, steps.graph, forced=True):
        record.stage(name, "cached", fingerprint=fingerprint, ref=cached.ref)
        log.info("%s: cached as %s (fingerprint %s)", name, cached.ref, fingerprint)
        _bring_history(cached.extra.get("run_dir"), name, steps.run_dir)
        return StageResult(stage=name, output_dir=registry.resolve(cached.ref), metrics=dict(cached.metrics),
                           ref=cached.ref, cached=True)  # fmt: skip
    if not _selected(steps.options, name, steps.graph):
        raise StageError(
            f"--only {steps.options.only} needs this stage published with fingerprint {fingerprint}, and no "
            "version has it; run without --only first"
        )
    stage_log = steps.local / name / STAGE_LOG  # each node its own
    record.stage(name, "running", fingerprint=fingerprint, log=str(stage_log))
    log.info("stage %s: starting from %s (fingerprint %s, log %s)", name, start.name, fingerprint, stage_log)
    prepared = Prepared(start, dict(steps.inputs), steps.task, steps.local)
    result = start_stage(
        cfg, name, steps.run_dir, prepared=prepared, fingerprint=fingerprint, log_file=stage_log
    )
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


def _matches(option: str, step: str) -> bool:
    return step == option or (step not in (DATA, EVALUATE) and stage_spec(step).name == option)


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


def _after_only(options: RunOptions, graph: list[str]) -> list[str]:
    """The steps `--only` leaves out: every one after the last it names (all the policy stages for `policy`)."""
    if options.only is None:
        return []
    last = max(i for i, name in enumerate(graph) if _matches(options.only, name))
    return graph[last + 1 :]


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
