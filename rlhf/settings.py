"""Typed settings of one stage, and the building blocks every section shares: where a model comes from,
LoRA, sampling, processes and DeepSpeed, and each stage program's hyperparameters.

Every class is a pydantic model that forbids unknown keys, so a typo fails at load time with its key path and
a suggestion instead of being silently ignored after an hour of training. The pipeline file around them
(`rlhf.config`) and the `stages:` section (`rlhf.stage_table`) are built from these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from rlhf.errors import ConfigError


class Schema(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSpec(Schema):
    """A LoRA adapter through peft; the stage trains the adapter only and keeps the base frozen."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelSpec(Schema):
    """Where a model comes from: a Hugging Face id, a local directory, or a built-in tiny spec."""

    name: str
    trust_remote_code: bool = False
    revision: str | None = None
    base: str | None = Field(
        None, description="For a LoRA adapter: the model it applies to (default: the adapter's own record)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """`model: tiny-llama` is shorthand for `model: {name: tiny-llama}`."""
        return {"name": value} if isinstance(value, str) else value


class GenerationSpec(Schema):
    """Sampling settings for evaluation generations."""

    max_new_tokens: int = Field(16, gt=0)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    samples_per_prompt: int = Field(4, gt=0, description="Several samples per prompt steady the mean.")
    batch_size: int = Field(64, gt=0)


class VLLMSpec(Schema):
    """Where a vLLM rollout engine runs and what it may take (`rollout.engine: vllm`)."""

    placement: Literal["colocate", "process"] = Field(
        "colocate",
        description="colocate: the engine in the trainer's process, on its device (weights handed over in "
        "memory); process: the engine in a process of its own (weights sent as safetensors bytes).",
    )
    devices: str | None = Field(
        None,
        description="placement: process on a GPU machine: the CUDA devices the engine runs on (e.g. '1'), "
        "apart from the trainer's; None: the trainer's own.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the policy's training precision."
    )
    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=1.0, description="GPU: the share of the GPU's memory the engine may hold (colocated)."
    )
    kv_cache_gib: int = Field(4, gt=0, description="CPU: the engine's KV cache in GiB.")
    sleep: bool = Field(
        True,
        description="GPU, colocated: release the engine's weights and KV cache while the trainer trains "
        "(vLLM sleep mode), take them back for the next rollout.",
    )
    max_num_seqs: int = Field(256, gt=0, description="Sequences the engine decodes at once.")


class RolloutSpec(GenerationSpec):
    """How PPO samples its rollouts (its temperature also divides the logits of every log-prob)."""

    max_new_tokens: int = Field(64, gt=0)
    samples_per_prompt: int = Field(1, gt=0)
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: generate() on the training model; vllm: a vLLM engine holding a copy of the policy, "
        "its weights replaced after every update (`pip install rlhf[vllm]`).",
    )
    tis_cap: float | None = Field(
        None,
        gt=0.0,
        description="vllm: weight each token's policy loss by min(p_trainer / p_engine, tis_cap), the truncated "
        "importance-sampling correction for the engine's numerical drift from the trainer; None: off.",
    )
    old_logprobs: Literal["auto", "generation", "forward"] = Field(
        "auto",
        description="hf: where the old log-probs (and a value head's values) come from. generation: recorded "
        "as generate() samples (one policy forward fewer per rollout; equal to a separate forward's to float "
        "rounding in fp32, while bf16's cached decode differs by more); forward: a forward over the finished "
        "sequences, so the first ratio is exactly 1; auto: generation in fp32, forward otherwise. A separate value "
        "model (`value_model: reward`) and vllm always take the forward.",
    )
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)

    @field_validator("top_p", "top_k")
    @classmethod
    def _sample_what_is_optimized(cls, value: float, info: ValidationInfo) -> float:
        """PPO's log-probs, ratios and KL are taken under the full softmax (over temperature), so sampling
        from a truncated one would optimize a distribution other than the one sampled."""
        if value != cls.model_fields[info.field_name].default:
            raise ValueError(
                f"{value} truncates the sampling distribution, but the policy's log-probs, ratios and KL use the "
                f"full softmax; leave {info.field_name} at {cls.model_fields[info.field_name].default}"
            )
        return value

    @model_validator(mode="after")
    def _engine_settings_need_their_engine(self) -> RolloutSpec:
        if self.tis_cap is not None and self.engine != "vllm":
            raise ValueError("tis_cap corrects for a rollout engine's drift: it needs engine: vllm")
        if self.old_logprobs == "generation" and self.engine != "hf":
            raise ValueError("old_logprobs: generation records them in generate(): it needs engine: hf")
        return self


class DistributedConfig(Schema):
    """How many processes a stage runs on and how they are launched; a stage's own `distributed:` keys go
    over these (`PipelineConfig.distributed_for`)."""

    num_processes: int = Field(1, gt=0, description="Processes (GPUs) per node.")
    num_nodes: int = Field(1, gt=0)
    hostfile: str | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    deepspeed_config: str | None = None
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed"
    offload_frozen_models: bool = Field(
        False, description="At ZeRO-3: keep the frozen models' (reference, reward) shards in CPU memory."
    )


class StageDistributed(Schema):
    """A stage's `distributed:` keys over the pipeline's: a key left out (None) keeps the pipeline's value.
    Naming a ZeRO stage or a DeepSpeed config replaces both of the pipeline's, so the stage's choice wins."""

    num_processes: int | None = Field(None, gt=0)
    num_nodes: int | None = Field(None, gt=0)
    hostfile: str | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    deepspeed_config: str | None = None
    launcher: Literal["deepspeed", "torchrun"] | None = None
    offload_frozen_models: bool | None = None

    def over(self, pipeline: DistributedConfig) -> DistributedConfig:
        update = self.model_dump(exclude_none=True)
        if update.keys() & {"zero_stage", "deepspeed_config"}:
            update = {"zero_stage": None, "deepspeed_config": None} | update
        return pipeline.model_copy(update=update)


class TrainStageConfig(Schema):
    """What every training stage shares: optimisation, schedule, precision, checkpoints, LoRA."""

    model: ModelSpec | None = Field(
        None, description="Defaults to the pipeline's model (or the previous stage's)."
    )
    learning_rate: float = Field(2e-5, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, description="Overrides num_train_epochs when positive.")
    per_device_train_batch_size: int = Field(8, gt=0)
    per_device_eval_batch_size: int = Field(16, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_steps: float = Field(
        0, ge=0, description="Steps of linear warmup; a value below 1 is a fraction of all steps."
    )
    lr_scheduler_type: str = "linear"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps; None: once per epoch.")
    save_steps: int = Field(200, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 elsewhere."
    )
    gradient_checkpointing: bool = False
    lora: LoraSpec | None = None
    num_threads: int | None = Field(
        None, gt=0, description="torch CPU threads per process; None: torch default."
    )
    distributed: StageDistributed | None = Field(
        None,
        description="This stage's own process count, ZeRO stage, ...; over the pipeline's `distributed`.",
    )


class SFTStageConfig(TrainStageConfig):
    """Stage 1: supervised fine-tuning on demonstrations (TRL SFTTrainer)."""

    dataset: str | None = Field(
        None, description="JSONL, parquet or datasets directory; default: data.sft_train."
    )
    eval_dataset: str | None = Field(None, description="Default: data.sft_eval.")
    max_length: int = Field(1024, gt=0)
    packing: bool = False
    completion_only_loss: bool = True
    evaluation: GenerationSpec | None = Field(
        default_factory=GenerationSpec,
        description="Sample on held-out prompts after training and score them (gold reward where the task has one).",
    )


class RewardStageConfig(TrainStageConfig):
    """Stage 2: a reward model (sequence-classification head, one output) on preference pairs (TRL RewardTrainer)."""

    learning_rate: float = Field(1e-4, gt=0.0)
    dataset: str | None = Field(
        None, description="A preference dataset directory; default: the imported data."
    )
    max_length: int = Field(512, gt=0)
    length_policy: Literal["truncate_prompt", "quarantine"] = Field(
        "truncate_prompt",
        description="Pairs over max_length: cut the prompt from the left keeping both responses whole, or set aside.",
    )
    use_margin: bool = Field(False, description="Use the pairs' margin in the Bradley-Terry loss.")
    center_rewards_coefficient: float | None = Field(None, ge=0.0)


class PPOSpec(Schema):
    """PPO's own hyperparameters (`algorithm: ppo`); defaults follow the InstructGPT-style recipe.

    One update: `rollout.samples_per_prompt` responses to each of `prompts_per_update` prompts (per process),
    scored by the reward model, then `ppo_epochs` passes over them in `num_mini_batches` minibatches, each cut
    into micro-batches of `per_device_train_batch_size` (gradients accumulated). The stage's `max_steps` counts
    updates; otherwise `num_train_epochs` passes over the prompts set the count.
    """

    reward_model: ModelSpec | None = Field(
        None, description="Default: the pipeline's reward model, else registry:reward-model:latest."
    )
    prompts: str | None = Field(
        None, description="JSONL of prompts to train on; default: the preference data's training prompts."
    )
    prompts_per_update: int = Field(64, gt=0)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    ppo_epochs: int = Field(4, gt=0)
    num_mini_batches: int = Field(1, gt=0)
    value_model: Literal["reward", "policy_head"] = Field(
        "policy_head",
        description="policy_head: a zero-initialized value head on the policy's trunk, trained with it (one "
        "model's forward and backward instead of two; bench/ppo_update.py); reward: a trainable copy of the "
        "reward model (a copy of the policy's backbone when the tokenizers differ).",
    )
    kl_coef: float = Field(
        0.05, ge=0.0, description="beta of the per-token KL penalty (the start, if adaptive)."
    )
    kl_estimator: Literal["k1", "k3"] | None = Field(
        None,
        description="None: the algorithm's own (k3 for grpo, whose KL is a loss term; k1 for the others).",
    )
    kl_penalty: Literal["reward", "loss"] | None = Field(
        None,
        description="Where the KL to the reference acts: in the reward (ppo, rloo, reinforce_pp) or as a loss "
        "term (grpo); None: the algorithm's own.",
    )
    target_kl: float | None = Field(
        None, gt=0.0, description="Set: adapt kl_coef toward this KL per response (Ziegler et al.)."
    )
    kl_horizon: int = Field(10000, gt=0, description="Responses over which the adaptive controller reacts.")
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    normalize_rewards: bool = Field(
        True, description="Scores to mean 0, std 1 with the reward model's stored statistics."
    )
    reward_scale: float = Field(1.0, gt=0.0, description="Multiplies the (normalized) score.")
    reward_clip: float | None = Field(10.0, gt=0.0, description="Clip the scaled score to +-this.")
    missing_eos_penalty: float | None = Field(
        1.0, ge=0.0, description="Subtracted from the score of a response that never ended (EOS)."
    )
    cliprange: float = Field(0.2, gt=0.0)
    cliprange_value: float = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.1, ge=0.0)
    entropy_coef: float = Field(0.0, ge=0.0)
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] | None = Field(
        None,
        description="How per-token losses become one: token_mean over every valid token of the minibatch "
        "(ppo, rloo, reinforce_pp), sequence_mean per response then over responses (grpo), constant: each "
        "response's sum over max_new_tokens (Dr. GRPO); None: the algorithm's own.",
    )
    scale_advantages: bool = Field(
        True, description="grpo: divide each group's centred scores by their std; off with Dr. GRPO."
    )
    dr_grpo: bool = Field(
        False,
        description="grpo: Dr. GRPO (Liu et al. 2025): no std scaling of the advantages, no length normalization "
        "(loss_aggregation: constant).",
    )
    group_baseline: bool = Field(
        False,
        description="reinforce_pp: REINFORCE++-baseline, each score minus its group's mean before the batch "
        "normalization (needs samples_per_prompt >= 2).",
    )


class RewardSource(Schema):
    """One term of a policy stage's reward: a reward model, or a Python function by import path, weighted."""

    model: ModelSpec | None = Field(None, description="A reward model (registry ref, directory, ...).")
    function: str | None = Field(
        None,
        description="`package.module:function` called with prompts (messages), completions (text) and each "
        "prompt row's extra fields as keyword lists; returns one float per completion.",
    )
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> RewardSource:
        if (self.model is None) == (self.function is None):
            raise ValueError("name exactly one of `model` (a reward model) or `function` (module:function)")
        if self.function is not None and not FUNCTION_PATH.fullmatch(self.function):
            raise ValueError(f"function {self.function!r}: expected an import path `package.module:function`")
        return self


FUNCTION_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
ONLINE_ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce_pp")  # sample the policy, score, update: `rlhf.ppo`
GROUP_ALGORITHMS = ("grpo", "rloo")  # their baseline is the other responses to the same prompt


class KTOSpec(Schema):
    """KTO's own settings (`algorithm: kto`, TRL's KTOTrainer); the stage's `beta` is KTO's beta too.

    The KTO paper (Ethayarajh et al., 2024) advises weights such that desirable_weight x desirable examples
    over undesirable_weight x undesirable examples lies in [1, 4/3]: raise `desirable_weight` when thumbs up
    are the rarer label."""

    desirable_weight: float = Field(1.0, gt=0.0, description="Loss weight of desirable examples.")
    undesirable_weight: float = Field(1.0, gt=0.0, description="Loss weight of undesirable examples.")
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"


class PolicyStageConfig(TrainStageConfig):
    """Stage 3: optimization of the SFT policy: DPO or KTO on TRL's trainers, or an online algorithm on our
    own `rlhf.ppo` (PPO, GRPO, RLOO, REINFORCE++)."""

    algorithm: Literal["dpo", "kto", "ppo", "grpo", "rloo", "reinforce_pp"] = "dpo"
    learning_rate: float = Field(1e-6, gt=0.0)
    dataset: str | None = Field(
        None,
        description="An imported dataset directory (kto: an unpaired one); default: the pipeline's imported data.",
    )
    beta: float = Field(0.1, gt=0.0, description="DPO's and KTO's beta.")
    loss_type: list[str] = Field(
        default_factory=lambda: ["sigmoid"], description="TRL DPO loss types, combinable."
    )
    precompute_ref_log_probs: bool | None = Field(
        None,
        description="DPO and KTO: the frozen reference's log-probs computed once, before the first step, instead "
        "of a reference forward at every step (identical losses; bench/dpo_reference.py), and no reference model "
        "held while training. None: so on one process; on several, TRL's per-step forward (TRL's rank 0 writes "
        "the precomputed values into its copy of the data's cache, which ranks reading their own copies miss).",
    )
    max_length: int = Field(512, gt=0)
    ppo: PPOSpec = Field(
        default_factory=PPOSpec,
        description="The online algorithms' section (ppo, grpo, rloo, reinforce_pp): rollout, KL, clipping, epochs.",
    )
    rewards: list[RewardSource] | None = Field(
        None,
        description="The online algorithms' reward: a weighted sum of reward models and reward functions; "
        "None: the one reward model of ppo.reward_model (default: the pipeline's).",
    )
    kto: KTOSpec = Field(default_factory=KTOSpec)
    evaluation: GenerationSpec | None = Field(default_factory=GenerationSpec)

    @property
    def online(self) -> bool:
        """Trained on its own samples (`rlhf.ppo`), not on a fixed dataset (the TRL trainers)."""
        return self.algorithm in ONLINE_ALGORITHMS

    def precomputes_reference(self, world_size: int) -> bool:
        """Whether DPO / KTO precompute the reference's log-probs on `world_size` processes."""
        if self.precompute_ref_log_probs is not None:
            return self.precompute_ref_log_probs
        return world_size == 1

    @model_validator(mode="after")
    def _online_settings(self) -> PolicyStageConfig:
        spec = self.ppo
        if self.rewards is not None and (not self.rewards or spec.reward_model is not None):
            raise ValueError("rewards: list one source at least, and leave ppo.reward_model unset beside it")
        groups = self.algorithm in GROUP_ALGORITHMS or (
            self.algorithm == "reinforce_pp" and spec.group_baseline
        )
        if groups and spec.rollout.samples_per_prompt < 2:
            raise ValueError(
                f"algorithm {self.algorithm}: its baseline is the other responses to the same prompt; set "
                "ppo.rollout.samples_per_prompt >= 2"
            )
        return self

    def online_recipe(self) -> OnlineRecipe:
        """The online settings left to the algorithm (None in `ppo:`), resolved as its paper has them."""
        spec, grpo = self.ppo, self.algorithm == "grpo"
        aggregation = spec.loss_aggregation or (
            ("constant" if spec.dr_grpo else "sequence_mean") if grpo else "token_mean"
        )
        return OnlineRecipe(
            kl_estimator=spec.kl_estimator or ("k3" if grpo else "k1"),
            kl_penalty=spec.kl_penalty or ("loss" if grpo else "reward"),
            loss_aggregation=aggregation,
            scale_advantages=spec.scale_advantages and not spec.dr_grpo,
            critic=self.algorithm == "ppo",
        )

    def reward_sources(self, default_reward_model: str) -> list[RewardSource]:
        """What an online algorithm's reward is made of; without `rewards`, one reward model of weight 1:
        ppo.reward_model, else `default_reward_model` (the pipeline's, or the registry's latest)."""
        return self.rewards or [
            RewardSource(model=self.ppo.reward_model or ModelSpec(name=default_reward_model))
        ]


@dataclass(frozen=True)
class OnlineRecipe:
    """An online algorithm's settings with the algorithm's own defaults filled in (`online_recipe`)."""

    kl_estimator: str  # k1 | k3
    kl_penalty: str  # reward | loss
    loss_aggregation: str  # token_mean | sequence_mean | constant
    scale_advantages: bool  # grpo: divide by the group's std
    critic: bool  # a value model and GAE (ppo), else advantages from scores alone


@dataclass(frozen=True)
class PPOBatches:
    """How one PPO update cuts its rollout, per process: the rollout into minibatches (an optimizer step
    each), a minibatch into micro-batches (gradients accumulated)."""

    rollout: int
    minibatch: int
    micro: int

    @property
    def accumulation(self) -> int:
        return self.minibatch // self.micro


def ppo_batches(cfg: PolicyStageConfig, key: str) -> PPOBatches:
    """The batches a PPO stage trains with; a rollout that does not split evenly is a config error naming the
    stage's section (`key`, e.g. `stages.policy.ppo`)."""
    spec = cfg.ppo
    rollout = spec.prompts_per_update * spec.rollout.samples_per_prompt
    minibatch = rollout // spec.num_mini_batches
    micro = min(cfg.per_device_train_batch_size, minibatch)
    if minibatch == 0 or rollout % spec.num_mini_batches or minibatch % micro:
        raise ConfigError(
            f"{key}.ppo: {rollout} responses per update (prompts_per_update x samples_per_prompt) "
            f"must split into {spec.num_mini_batches} minibatches of whole micro-batches of "
            f"per_device_train_batch_size={cfg.per_device_train_batch_size}"
        )
    return PPOBatches(rollout, minibatch, micro)
