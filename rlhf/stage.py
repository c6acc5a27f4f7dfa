"""The stage contract: what a stage gets from outside (StageContext), what it hands back (StageResult),
and the one entry helper every `stages/*.py` uses for `python -m stages.X --config FILE`.

A stage never looks for another stage's output by path: the context's `inputs` carry every location
it needs (the model to start from, dataset files), resolved here from the pipeline config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf.config import ModelSpec, PipelineConfig, dump_config, load_config
from rlhf.data.synthetic import write_synthetic_task
from rlhf.distributed import RankInfo, configure_logging, rank_info
from rlhf.errors import ConfigError, RlhfError
from rlhf.models import is_builtin_spec, materialize
from rlhf.tracking import Tracker

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass
class StageContext:
    """Everything a stage needs from outside; built by `prepare_context`, never by the stage."""

    stage: str
    pipeline: PipelineConfig
    run_dir: Path
    work_dir: Path  # this stage's scratch: checkpoints, logs
    output_dir: Path  # the stage's final product (a HF model directory)
    rank: RankInfo
    seed: int
    model: ModelSpec  # the model this stage starts from, resolved to a loadable location
    inputs: dict[str, str]  # data role -> location: "sft_train", "sft_eval", "eval_prompts"
    task: str | None  # name of the gold-reward task the data comes from, if any
    tracker: Tracker | None = None

    def input(self, role: str) -> str:
        """A required input; a missing one is a config error naming the key to set."""
        if role not in self.inputs:
            raise ConfigError(f"stages.{self.stage}: needs '{role}' but none is configured (set data.{role})")
        return self.inputs[role]


@dataclass
class StageResult:
    """What a stage produced: its output directory and its headline metrics."""

    stage: str
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), default=str, indent=2), encoding="utf-8")
        tmp.replace(path)


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


def prepare_data(cfg: PipelineConfig, run_dir: Path) -> tuple[dict[str, str], str | None]:
    """Resolve the pipeline's data section to file locations; write the synthetic task if asked.

    Returns (inputs, task): explicit files win over the synthetic task's files.
    """
    inputs: dict[str, str] = {}
    task = None
    if cfg.data.synthetic is not None:
        files = write_synthetic_task(run_dir / "data" / "synthetic", cfg.data.synthetic)
        inputs.update({role: str(path) for role, path in files.items()})
        task = "synthetic"
    for role in ("sft_train", "sft_eval", "eval_prompts"):
        value = getattr(cfg.data, role)
        if value is not None:
            inputs[role] = value
    return inputs, task


def resolve_model(spec: ModelSpec, run_dir: Path, seed: int) -> ModelSpec:
    """A built-in tiny spec becomes a directory in the run, so every later load is an ordinary load."""
    if not is_builtin_spec(spec.name):
        return spec
    path = materialize(spec, run_dir / "base-model" / spec.name, seed=seed)
    return spec.model_copy(update={"name": str(path)})


def prepare_context(
    cfg: PipelineConfig, stage: str, run_dir: Path, model: ModelSpec, inputs: dict[str, str], task: str | None
) -> StageContext:
    """The context of one stage in one run directory."""
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
        model=model,
        inputs=dict(inputs),
        task=task,
    )


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
        result = run(stage_cfg, ctx)
        result.seconds = time.perf_counter() - started
        tracker.summary(result.metrics)
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.sft.max_steps=50")
    args = parser.parse_args(argv)
    configure_logging(rank_info(), args.debug)
    try:
        result = run_standalone(stage, run, args.config, args.overrides, args.run_dir)
    except RlhfError as exc:
        if args.debug:
            raise
        print(f"error: [rank {rank_info().rank}] {exc}", file=sys.stderr)
        return 2
    if rank_info().is_main:
        print(f"{stage}: done in {result.seconds:.0f}s; output in {result.output_dir}")
    return 0


def run_standalone(
    stage: str,
    run: Callable[[Any, StageContext], StageResult],
    config_path: str,
    overrides: list[str],
    run_dir: str | None = None,
) -> StageResult:
    """One stage outside a pipeline: resolve data and model into a run directory, then run it."""
    cfg = load_config(config_path, overrides)
    stage_cfg = getattr(cfg.stages, stage, None)
    if stage_cfg is None:
        raise ConfigError(f"{config_path}: stages.{stage}: missing; add a `{stage}:` section under `stages:`")
    run_path = Path(run_dir) if run_dir else new_run_dir(cfg)
    run_path.mkdir(parents=True, exist_ok=True)
    if rank_info().is_main:
        dump_config(cfg, run_path / "config.yaml")
    inputs, task = prepare_data(cfg, run_path)
    model = resolve_model(stage_cfg.model or cfg.model, run_path, cfg.seed)
    return run_stage(run, stage_cfg, prepare_context(cfg, stage, run_path, model, inputs, task))
