"""The pipeline: one run directory, the data, then each configured stage in dependency order.

A stage is started by module name (`stages.<name>`), so the library never imports the stage programs.
Each stage's output becomes the next stage's starting model.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf.config import ModelSpec, PipelineConfig, dump_config
from rlhf.eval import GOLD_REWARDS, evaluate_model
from rlhf.registry import REF_PREFIX
from rlhf.stage import (
    StageResult,
    new_run_dir,
    open_registry,
    prepare_context,
    prepare_data,
    resolve_model,
    run_stage,
)

log = logging.getLogger(__name__)

# Dependency order; later issues add reward and policy stages here.
STAGE_ORDER = ("sft",)


@dataclass
class PipelineRun:
    run_dir: Path
    base_model: ModelSpec
    base_metrics: dict[str, float] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)


def run_pipeline(cfg: PipelineConfig, run_dir: Path | None = None) -> PipelineRun:
    """Run every configured stage; the resolved config and a summary land in the run directory."""
    run_dir = run_dir or new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    inputs, task = prepare_data(cfg, run_dir)
    registry = open_registry(cfg)
    model = cfg.model
    base = resolve_model(model, run_dir, cfg.seed, registry)
    run = PipelineRun(run_dir=run_dir, base_model=base.spec)
    log.info("run directory: %s", run_dir)

    sft = cfg.stages.sft
    if task in GOLD_REWARDS and "eval_prompts" in inputs and sft is not None and sft.evaluation is not None:
        run.base_metrics = evaluate_model(base.spec, inputs["eval_prompts"], sft.evaluation, task, cfg.seed)

    for name in STAGE_ORDER:
        stage_cfg = getattr(cfg.stages, name)
        if stage_cfg is None:
            continue
        start = resolve_model(stage_cfg.model or model, run_dir, cfg.seed, registry)
        program = importlib.import_module(f"stages.{name}")
        log.info("stage %s: starting", name)
        result = run_stage(program.run, stage_cfg, prepare_context(cfg, name, run_dir, start, inputs, task))
        run.results.append(result)
        if result.ref:  # the next stage starts from what this one published
            model = model.model_copy(update={"name": REF_PREFIX + result.ref})

    summary = {"base_model": run.base_model.name, "base_metrics": run.base_metrics,
               "stages": [asdict(r) for r in run.results]}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return run
