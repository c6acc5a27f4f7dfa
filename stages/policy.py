"""Stage 3: optimization of the SFT policy. `algorithm: dpo` runs TRL's DPOTrainer on the preference pairs;
`algorithm: kto` TRL's KTOTrainer on the unpaired judgements (thumbs, ratings: `rlhf.data.unpaired`);
the online algorithms (`ppo`, and the critic-free `grpo`, `rloo`, `reinforce_pp`) run `rlhf.ppo` on the policy's
own samples of the preference data's (or a prompts file's) prompts, scored by reward models and reward
functions (`rewards:`).

The policy starts from the stage's model (in a pipeline: the `sft-policy` version) and is trained on the
imported preference dataset; ties carry no preference and are dropped (counted). The reference is that
same SFT version: with `lora:` it is the base with the adapters disabled (no second copy); with full
fine-tuning an explicit frozen copy loaded from the same directory, or none at all when reference log-probs
are precomputed before the first step; an SFT adapter is trained further against a frozen copy of itself.
`algorithm` picks the trainer (`ALGORITHMS`); every algorithm ends the same way: the trained policy is
sampled on held-out prompts and scored, so every run reports what the policy does, not only its
implicit-reward margin.

    python -m stages.policy --config configs/quickstart.yaml [stages.policy.beta=0.5 ...]
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.data.preference_dataset import load_preferences
from rlhf.data.unpaired import kto_examples
from rlhf.distributed import deepspeed_plugin
from rlhf.errors import DataError
from rlhf.eval import PromptRow, load_prompt_rows
from rlhf.launch import stage_main
from rlhf.models import is_adapter, load_causal_lm, policy_training
from rlhf.pair_lengths import check_a_prompt_fits, length_counts
from rlhf.precision import mixed_precision
from rlhf.settings import ONLINE_ALGORITHMS, PolicyStageConfig, RewardSource
from rlhf.stage import ResolvedModel, StageContext, StageResult
from rlhf.stage_table import REWARD_MODEL, latest_version_of, stage_key
from rlhf.training import (
    held_out_samples,
    save_history,
    save_output,
    stage_dtypes,
    train_and_save,
    trainer_arguments,
)
from rlhf.workspace import rank_folder, resolve_model

if TYPE_CHECKING:
    from datasets import DatasetDict
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
    from trl import DPOTrainer

log = logging.getLogger(__spec__.name)  # not __name__: that is "__main__" under `python -m`

Messages = list[dict[str, str]]
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]  # TRL's conversational preference form

# TRL's logged name -> ours; first and last values of each go in the stage's metrics.
TRAINER_METRICS = {
    "loss": "train_loss",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "eval_loss": "eval_loss",
    "eval_rewards/margins": "eval_reward_margin",
    "eval_rewards/accuracies": "eval_reward_accuracy",
}
# KTOTrainer's logged names -> ours: its "chosen" / "rejected" are the desirable / undesirable examples
KTO_METRICS = {
    "loss": "train_loss",
    "kl": "kto_kl",
    "rewards/chosen": "reward_desirable",
    "rewards/rejected": "reward_undesirable",
    "rewards/margins": "reward_margin",
    "eval_loss": "eval_loss",
    "eval_kl": "eval_kto_kl",
    "eval_rewards/margins": "eval_reward_margin",
}


@dataclass
class Trained:
    """What an algorithm hands back to `run`: the policy in memory (for sampling), where it was saved, metrics."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    output_dir: Path
    metrics: dict[str, float]
    parents: list[str] = field(default_factory=list)  # registry versions used besides the start (the RM)
    # entered by every rank around the held-out sampling: under ZeRO-3 it gathers the policy's shards
    sampling_ready: Callable[[], AbstractContextManager[object]] = nullcontext


@dataclass
class Start:
    """The policy to train and how its reference is obtained (see `load_start`)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ref_model: PreTrainedModel | None
    peft_config: LoraConfig | None
    reference: str  # for the log: what the reference is


# --------------------------------------------------------------------------------------------------
# Data


def preference_pairs(cfg: PolicyStageConfig, ctx: StageContext) -> tuple[DatasetDict, dict[str, float]]:
    """The imported preference dataset as TRL conversational pairs, ties dropped and counted.

    A tie states no preference, so a DPO pair built from it would teach an arbitrary order.
    """
    path = ctx.data("preferences", cfg.dataset)
    data = load_preferences(Path(path))
    ties = sum(sum(split["tie"]) for split in data.values())
    pairs = data.filter(lambda row: not row["tie"]).select_columns(PAIR_COLUMNS)
    if len(pairs["train"]) == 0:
        raise DataError(f"{path}: no preference pairs to train on (ties dropped: {ties})")
    if ties:
        log.info("policy: dropped %d tied pairs (no preference to learn)", ties)
    counts = {"pairs_train": len(pairs["train"]), "pairs_eval": len(pairs["test"]), "ties_dropped": ties}
    return pairs, counts


# --------------------------------------------------------------------------------------------------
# DPO


def load_start(cfg: PolicyStageConfig, ctx: StageContext) -> Start:
    """The SFT policy, and its reference made explicit rather than left to TRL's defaults (TRL's own fallback
    rebuilds the reference from `config._name_or_path`). Beyond the shared choice (`policy_training`): a
    retrained SFT adapter's frozen copy is kept by TRL inside the same model (adapter "ref"), and with
    precomputed reference log-probs no reference model is held at all. The policy loads in the stage's
    trained precision, a reference in its frozen one (`stage_dtypes`)."""
    training = policy_training(ctx.model, cfg.lora, ctx.stage)
    dtypes = stage_dtypes(cfg, ctx)
    adapter = training.reference_is_the_policy or is_adapter(ctx.model.name)
    model, tokenizer = load_causal_lm(ctx.model, dtypes.of_trained(adapter))
    if training.reference_is_the_policy:
        return Start(model, tokenizer, None, training.new_adapter, "SFT weights, adapters disabled")
    if is_adapter(ctx.model.name):
        return Start(model, tokenizer, None, None, "frozen copy of the SFT adapter")
    if cfg.precomputes_reference(ctx.rank.world_size):
        return Start(model, tokenizer, None, None, "precomputed from the SFT weights")
    ref_model, _ = load_causal_lm(ctx.model, dtypes.frozen)
    return Start(model, tokenizer, ref_model, None, "frozen copy of the SFT weights")


def build_dpo_trainer(cfg: PolicyStageConfig, ctx: StageContext, pairs: DatasetDict) -> DPOTrainer:
    """The configured DPOTrainer: our shared trainer arguments first (under ZeRO-3 their DeepSpeed config
    makes every model load partitioned), then the SFT policy, its reference and the pairs. TRL runs the
    reference as a DeepSpeed engine of its own, sharded at ZeRO-3 (`trl.models.prepare_deepspeed`)."""
    from trl import DPOConfig, DPOTrainer

    return offline_trainer(DPOTrainer, DPOConfig, cfg, ctx, pairs, f"DPO ({'+'.join(cfg.loss_type)})",
                           loss_type=list(cfg.loss_type))  # fmt: skip


def offline_trainer(
    trainer_class: type[Trainer],
    config_class: type,
    cfg: PolicyStageConfig,
    ctx: StageContext,
    data: DatasetDict,
    name: str,
    **settings: object,
) -> Trainer:
    """A configured TRL trainer on fixed data against a reference (DPO, KTO): our shared trainer arguments
    first (under ZeRO-3 their DeepSpeed config makes every model load partitioned), then the SFT policy, its
    reference (`load_start`) and the data. TRL runs the reference as a DeepSpeed engine of its own, sharded
    at ZeRO-3 (`trl.models.prepare_deepspeed`). `settings`: the algorithm's own config keys."""
    has_eval = len(data["test"]) > 0
    args = config_class(
        **trainer_arguments(cfg, ctx, evaluates=has_eval),
        eval_on_start=has_eval,
        beta=cfg.beta,
        precompute_ref_log_probs=cfg.precomputes_reference(ctx.rank.world_size),
        max_length=cfg.max_length,
        **settings,
    )
    start = load_start(cfg, ctx)
    check_a_prompt_fits(data["train"], start.tokenizer, cfg.max_length)
    log.info("%s: %s, beta=%g, reference: %s", ctx.stage, name, cfg.beta, start.reference)
    return trainer_class(
        model=start.model,
        ref_model=start.ref_model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"] if has_eval else None,
        processing_class=start.tokenizer,
        peft_config=start.peft_config,
    )


def run_dpo(cfg: PolicyStageConfig, ctx: StageContext) -> Trained:
    pairs, counts = preference_pairs(cfg, ctx)
    trainer = build_dpo_trainer(cfg, ctx, pairs)
    given = {"train": counts["pairs_train"], "eval": counts["pairs_eval"]}
    counts.update(length_counts(trainer, given, cfg.max_length))
    output, metrics = train_and_save(trainer, ctx, TRAINER_METRICS, before_save=drop_reference_adapter)
    return Trained(trainer.model, trainer.processing_class, output, counts | metrics)


def run_kto(cfg: PolicyStageConfig, ctx: StageContext) -> Trained:
    """KTO on the imported unpaired judgements, from the SFT policy against the same reference as DPO."""
    from trl import KTOConfig, KTOTrainer

    examples, counts = kto_examples(Path(ctx.data("unpaired", cfg.dataset)))
    spec = cfg.kto
    trainer = offline_trainer(KTOTrainer, KTOConfig, cfg, ctx, examples, f"KTO ({spec.loss_type})",
                              loss_type=spec.loss_type, desirable_weight=spec.desirable_weight,
                              undesirable_weight=spec.undesirable_weight)  # fmt: skip
    output, metrics = train_and_save(trainer, ctx, KTO_METRICS, before_save=drop_reference_adapter)
    return Trained(trainer.model, trainer.processing_class, output, counts | metrics)


def drop_reference_adapter(model: PreTrainedModel) -> None:
    """TRL's frozen copy of a retrained adapter ("ref") is the reference, not the policy: keep it out of the output."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


# --------------------------------------------------------------------------------------------------
# PPO


def reward_models_for(
    cfg: PolicyStageConfig, ctx: StageContext
) -> tuple[list[RewardSource], list[ResolvedModel], list[tuple[float, float] | None]]:
    """The reward an online algorithm optimizes (`rewards`, else the stage's reward model, else the pipeline's,
    else the registry's latest): its sources, the reward models among them resolved, and the score statistics
    stored with each, when it has them."""
    sources = cfg.reward_sources(ctx.inputs.get(REWARD_MODEL, latest_version_of(REWARD_MODEL)))
    resolved, stats = [], []
    for source in sources:
        if source.model is None:
            continue
        reward = resolve_model(source.model, rank_folder(ctx.run_dir), ctx.seed, ctx.registry)
        metrics = ctx.registry.manifest(reward.ref).metrics if reward.ref else {}
        resolved.append(reward)
        stored = {"reward_mean", "reward_std"} <= metrics.keys()
        stats.append((metrics["reward_mean"], metrics["reward_std"]) if stored else None)
    return sources, resolved, stats


def training_prompts(cfg: PolicyStageConfig, ctx: StageContext) -> list[PromptRow]:
    """The prompts an online algorithm samples: a prompts file when configured (its rows' other fields go to
    the reward functions), else each distinct prompt of the preference data's training split (what the
    annotators were asked), in the data's order."""
    if cfg.ppo.prompts:
        return load_prompt_rows(ctx.data("ppo_prompts", cfg.ppo.prompts))
    path = ctx.data("preferences", cfg.dataset)
    seen: dict[str, Messages] = {}
    for prompt in load_preferences(Path(path))["train"]["prompt"]:
        seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    if not seen:
        raise DataError(f"{path}: no training prompts for {cfg.algorithm}")
    return [PromptRow(prompt, {}) for prompt in seen.values()]


def run_online(cfg: PolicyStageConfig, ctx: StageContext) -> Trained:
    """PPO, GRPO, RLOO or REINFORCE++ (`rlhf.ppo`): sample the policy, score it, update it."""
    from rlhf.ppo import PPORun, PPOTrainer, ppo_accelerator
    from rlhf.ppo_models import build_models
    from rlhf.reward_sources import reward_terms, with_models
    from rlhf.rollout import check_engine_available, generation_ready

    key = stage_key(ctx.stage)
    check_engine_available(cfg.ppo.rollout, f"{key}.ppo")  # before any model loads
    sources, reward_models, stats = reward_models_for(cfg, ctx)
    terms = reward_terms(sources, stats, key)  # imports the reward functions: before any model loads
    prompts = training_prompts(cfg, ctx)
    training = policy_training(ctx.model, cfg.lora, ctx.stage)
    plugin = deepspeed_plugin(ctx.distributed)
    accelerator = ppo_accelerator(cfg, key, plugin, mixed_precision(cfg.precision))
    value_model = cfg.ppo.value_model if cfg.online_recipe().critic else None
    models = build_models(ctx.model, [r.spec for r in reward_models], training, value_model,
                          stage_dtypes(cfg, ctx))  # fmt: skip
    log.info("%s: %s against %s, %d training prompts, reference: the SFT model, %s", ctx.stage,
             cfg.algorithm.upper(), describe_rewards(sources, reward_models, stats), len(prompts),
             training.reference)  # fmt: skip
    trainer = PPOTrainer(
        PPORun(
            cfg=cfg,
            models=models,
            rewards=with_models(terms, models.rewards),
            prompts=prompts,
            checkpoint_dir=ctx.checkpoint_dir,
            seed=ctx.seed,
            config_key=key,
            accelerator=accelerator,
            log_metrics=ctx.tracker.log if ctx.tracker else lambda metrics, step: None,
            offload_frozen_models=ctx.distributed.offload_frozen_models,
        )
    )
    outcome = trainer.train()
    save_history(ctx, outcome.history, step_key="update")
    output = save_output(ctx, trainer.accelerator, trainer.save_policy, models.tokenizer)
    metrics: dict[str, float] = {"prompts": len(prompts), "steps": outcome.updates,
                                 "resumed_from_step": outcome.resumed_from}  # fmt: skip
    for name in ("score_raw_mean", "kl", "kl_coef", "entropy", "no_eos_share", "response_tokens",
                 "explained_variance"):  # fmt: skip
        if values := [row[name] for row in outcome.history if name in row]:
            metrics |= {
                f"{cfg.algorithm}_{name}_first": values[0],
                f"{cfg.algorithm}_{name}_last": values[-1],
            }
    parents = [r.ref for r in reward_models if r.ref]
    ready = partial(generation_ready, trainer.accelerator, trainer.model)
    return Trained(outcome.policy, models.tokenizer, output, metrics, parents, ready)


def describe_rewards(
    sources: list[RewardSource], reward_models: list[ResolvedModel], stats: list[tuple[float, float] | None]
) -> str:
    """The reward's terms for the log: each reward model (with its normalization) or function, and weight."""
    models = iter(zip(reward_models, stats, strict=True))
    parts = []
    for source in sources:
        if source.function is not None:
            parts.append(f"{source.function} x {source.weight:g}")
            continue
        reward, model_stats = next(models)
        normal = (
            f"normalized by {model_stats[0]:.3f} +- {model_stats[1]:.3f}"
            if model_stats
            else "no stored statistics"
        )
        parts.append(f"{reward.ref or reward.spec.name} ({normal}) x {source.weight:g}")
    return " + ".join(parts)


# --------------------------------------------------------------------------------------------------
# The stage


ALGORITHMS: dict[str, Callable[[PolicyStageConfig, StageContext], Trained]] = {
    "dpo": run_dpo,
    "kto": run_kto,
    **dict.fromkeys(ONLINE_ALGORITHMS, run_online),
}


def run(cfg: PolicyStageConfig, ctx: StageContext) -> StageResult:
    # 1. Train the policy with the configured algorithm, and save it
    trained = ALGORITHMS[cfg.algorithm](cfg, ctx)

    # 2. What the policy does: sampled on held-out prompts and scored (every rank: ZeRO-3 gathers shards)
    with trained.sampling_ready():
        metrics = trained.metrics | held_out_samples(trained.model, trained.tokenizer, cfg.evaluation, ctx)
    return StageResult(
        stage=ctx.stage, output_dir=trained.output_dir, metrics=metrics, parents=trained.parents
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
