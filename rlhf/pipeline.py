"""The pipeline: one run directory, the data, then each configured stage in dependency order.

A stage is started by module name (`stages.<name>`), so the library never imports the stage programs.
Stages hand models on through the registry: the reward model and the policy start from the SFT version,
and the run ends with the policy evaluated against the SFT policy (judged by the reward model).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf.config import ModelSpec, PipelineConfig, dump_config
from rlhf.eval import GOLD_REWARDS, PolicyEvaluation, evaluate_and_record, evaluate_model
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

# The stages in dependency order, each with the stage whose published model it starts from (None: the
# pipeline's base model). A stage's own `model:` overrides this.
STARTS_FROM: dict[str, str | None] = {"sft": None, "reward": "sft", "policy": "sft"}


@dataclass
class PipelineRun:
    run_dir: Path
    base_model: ModelSpec
    base_metrics: dict[str, float] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)
    evaluation: PolicyEvaluation | None = None  # the policy against the SFT policy


def run_pipeline(cfg: PipelineConfig, run_dir: Path | None = None) -> PipelineRun:
    """Run every configured stage; the resolved config and a summary land in the run directory."""
    run_dir = run_dir or new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    inputs, task = prepare_data(cfg, run_dir)
    registry = open_registry(cfg)
    base = resolve_model(cfg.model, run_dir, cfg.seed, registry)
    run = PipelineRun(run_dir=run_dir, base_model=base.spec)
    log.info("run directory: %s", run_dir)
    if task in GOLD_REWARDS and "eval_prompts" in inputs and cfg.evaluation is not None:
        run.base_metrics = evaluate_model(base.spec, inputs["eval_prompts"], cfg.evaluation, task, cfg.seed)

    published: dict[str, str] = {}  # stage -> registry reference of what it published
    for name, parent in STARTS_FROM.items():
        stage_cfg = getattr(cfg.stages, name)
        if stage_cfg is None:
            continue
        default = (
            cfg.model.model_copy(update={"name": published[parent]}) if parent in published else cfg.model
        )
        start = resolve_model(stage_cfg.model or default, run_dir, cfg.seed, registry)
        program = importlib.import_module(f"stages.{name}")
        log.info("stage %s: starting from %s", name, start.ref or start.base_model)
        result = run_stage(program.run, stage_cfg, prepare_context(cfg, name, run_dir, start, inputs, task))
        run.results.append(result)
        if result.ref:
            published[name] = REF_PREFIX + result.ref
            inputs[f"{name}_model"] = published[
                name
            ]  # e.g. the reward model, for later stages and evaluation

    if "policy" in published and "eval_prompts" in inputs and cfg.evaluation is not None:
        reference = published.get("sft", base.spec.name)
        run.evaluation = evaluate_and_record(
            registry, published["policy"], reference, inputs["eval_prompts"], cfg.evaluation, task,
            cfg.tracking, run_dir, cfg.seed, judge=published.get("reward"),
        )  # fmt: skip

    summary = {"base_model": run.base_model.name, "base_metrics": run.base_metrics,
               "stages": [asdict(r) for r in run.results],
               "evaluation": run.evaluation.metrics if run.evaluation else None}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return run
