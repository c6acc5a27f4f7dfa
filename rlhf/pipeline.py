"""The pipeline: one run directory, the data, then each configured stage in dependency order.

A stage is started by module name (`stages.<name>`), so the library never imports the stage programs.
Stages hand models on through the registry: the reward model and the policy start from the SFT version,
and the run ends with each policy evaluated against the SFT policy (judged by the reward model).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf.config import ModelSpec, PipelineConfig, TrainStageConfig, dump_config, stage_key, stage_program
from rlhf.distributed import check_deepspeed_batches, is_first_node, needs_launcher, node_rank
from rlhf.eval import GOLD_REWARDS, PolicyEvaluation, evaluate_and_record, evaluate_model
from rlhf.registry import REF_PREFIX
from rlhf.stage import (
    StageResult,
    launch_stage,
    node_folder,
    open_registry,
    prepare_context,
    prepare_data,
    resolve_model,
    run_dir_for,
    run_stage,
)

log = logging.getLogger(__name__)

# The stage a stage's program starts from by default: its published model (None: the pipeline's base model).
# A stage's own `model:` overrides this. Stages run in the order `StagesConfig.plan` gives.
STARTS_FROM: dict[str, str | None] = {"sft": None, "reward": "sft", "policy": "sft"}


@dataclass
class PipelineRun:
    run_dir: Path
    base_model: ModelSpec
    base_metrics: dict[str, float] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)
    evaluations: dict[str, PolicyEvaluation] = field(
        default_factory=dict
    )  # policy stage -> vs the SFT policy


def run_pipeline(cfg: PipelineConfig, run_dir: Path | None = None) -> PipelineRun:
    """Run every configured stage; the resolved config and a summary land in the run directory.

    On several nodes started one by one (NODE_RANK set) every node runs this with the same shared run
    directory: each launches its share of every stage, and the first node alone evaluates and summarizes.
    """
    check_deepspeed_batches(cfg)
    run_dir = run_dir_for(cfg, run_dir)
    local = node_folder(run_dir)
    dump_config(cfg, local / "config.yaml")
    inputs, task = prepare_data(cfg, local)
    registry = open_registry(cfg)
    base = resolve_model(cfg.model, local, cfg.seed, registry)
    run = PipelineRun(run_dir=run_dir, base_model=base.spec)
    log.info("run directory: %s", run_dir)
    lead = is_first_node()
    if lead and task in GOLD_REWARDS and "eval_prompts" in inputs and cfg.evaluation is not None:
        run.base_metrics = evaluate_model(base.spec, inputs["eval_prompts"], cfg.evaluation, task, cfg.seed)

    published: dict[str, str] = {}  # stage -> registry reference of what it published
    for name, stage_cfg in cfg.stages.plan().items():
        program = stage_program(name)
        parent = STARTS_FROM[program]
        default = (
            cfg.model.model_copy(update={"name": published[parent]}) if parent in published else cfg.model
        )
        spec = stage_cfg.model or default
        log.info("stage %s: starting from %s", name, spec.name)
        if needs_launcher(cfg.distributed_for(name)):
            overrides = launch_overrides(name, stage_cfg, spec, inputs)
            result = launch_stage(cfg, local / "config.yaml", name, run_dir, overrides)
        else:
            start = resolve_model(spec, run_dir, cfg.seed, registry)
            module = importlib.import_module(f"stages.{program}")
            result = run_stage(
                module.run, stage_cfg, prepare_context(cfg, name, run_dir, start, inputs, task)
            )
        run.results.append(result)
        if result.ref:
            published[name] = REF_PREFIX + result.ref
            if program != "policy":  # e.g. the reward model, for the policy stages and the evaluation
                inputs[f"{name}_model"] = published[name]

    if not lead:
        log.info("node %d: every stage done; the first node evaluates and writes the summary", node_rank())
        return run
    if "eval_prompts" in inputs and cfg.evaluation is not None:
        reference = published.get("sft", base.spec.name)
        for name, policy in published.items():
            if stage_program(name) == "policy":
                run.evaluations[name] = evaluate_and_record(
                    registry, policy, reference, inputs["eval_prompts"], cfg.evaluation, task,
                    cfg.tracking, run_dir, cfg.seed, judge=published.get("reward"),
                )  # fmt: skip

    summary = {"base_model": run.base_model.name, "base_metrics": run.base_metrics,
               "stages": [asdict(r) for r in run.results],
               "evaluations": {name: e.metrics for name, e in run.evaluations.items()}}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return run


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
