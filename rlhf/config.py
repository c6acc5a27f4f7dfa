"""Typed schemas for the pipeline config, YAML loading and dotted command-line overrides.

One YAML file describes a whole pipeline. Every section is a pydantic model that forbids unknown keys,
so a typo fails at load time with its key path and a suggestion instead of being silently ignored
after an hour of training. `load_config` is the single way in: YAML (safe-loaded) + overrides + validation.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rlhf import atomic
from rlhf.data.synthetic import SynthConfig
from rlhf.errors import ConfigError

STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_]*$"


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


class DistributedConfig(Schema):
    """How many processes a stage runs on and how they are launched; a stage's own `distributed:` keys go
    over these (`PipelineConfig.distributed_for`)."""

    num_processes: int = Field(1, gt=0, description="Processes (GPUs) per node.")
    num_nodes: int = Field(1, gt=0)
    hostfile: str | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    deepspeed_config: str | None = None
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed"


class StageDistributed(Schema):
    """A stage's `distributed:` keys over the pipeline's: a key left out (None) keeps the pipeline's value.
    Naming a ZeRO stage or a DeepSpeed config replaces both of the pipeline's, so the stage's choice wins."""

    num_processes: int | None = Field(None, gt=0)
    num_nodes: int | None = Field(None, gt=0)
    hostfile: str | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    deepspeed_config: str | None = None
    launcher: Literal["deepspeed", "torchrun"] | None = None

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
    rollout: GenerationSpec = Field(
        default_factory=lambda: GenerationSpec(max_new_tokens=64, samples_per_prompt=1),
        description="Sampling of the rollouts; its temperature also divides the logits of every log-prob.",
    )
    ppo_epochs: int = Field(4, gt=0)
    num_mini_batches: int = Field(1, gt=0)
    value_model: Literal["reward", "policy_head"] = Field(
        "reward",
        description="reward: a trainable copy of the reward model (a copy of the policy's backbone when the "
        "tokenizers differ); policy_head: a zero-initialized value head on the policy.",
    )
    kl_coef: float = Field(
        0.05, ge=0.0, description="beta of the per-token KL penalty (the start, if adaptive)."
    )
    kl_estimator: Literal["k1", "k3"] = "k1"
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


class PolicyStageConfig(TrainStageConfig):
    """Stage 3: optimization of the SFT policy: DPO on TRL's DPOTrainer, or our own PPO (`rlhf.ppo`)."""

    algorithm: Literal["dpo", "ppo"] = "dpo"
    learning_rate: float = Field(1e-6, gt=0.0)
    dataset: str | None = Field(
        None, description="A preference dataset directory; default: the imported data."
    )
    beta: float = Field(0.1, gt=0.0, description="DPO's beta.")
    loss_type: list[str] = Field(
        default_factory=lambda: ["sigmoid"], description="TRL DPO loss types, combinable."
    )
    precompute_ref_log_probs: bool = False
    max_length: int = Field(512, gt=0)
    ppo: PPOSpec = Field(default_factory=PPOSpec)
    evaluation: GenerationSpec | None = Field(default_factory=GenerationSpec)


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


def ppo_batches(cfg: PolicyStageConfig, stage: str = "policy") -> PPOBatches:
    """The batches a PPO stage trains with; a rollout that does not split evenly is a config error."""
    spec = cfg.ppo
    rollout = spec.prompts_per_update * spec.rollout.samples_per_prompt
    minibatch = rollout // spec.num_mini_batches
    micro = min(cfg.per_device_train_batch_size, minibatch)
    if minibatch == 0 or rollout % spec.num_mini_batches or minibatch % micro:
        raise ConfigError(
            f"{stage_key(stage)}.ppo: {rollout} responses per update (prompts_per_update x samples_per_prompt) "
            f"must split into {spec.num_mini_batches} minibatches of whole micro-batches of "
            f"per_device_train_batch_size={cfg.per_device_train_batch_size}"
        )
    return PPOBatches(rollout, minibatch, micro)


# A stage taken from the registry instead of run: `sft: registry:sft-policy:v3`. Later stages start from it.
RegistryVersion = Annotated[str, Field(pattern=r"^registry:\S+$")]


def _stage_form(value: Any) -> str:
    return "taken" if isinstance(value, str) else "stage"


def taken_or(stage: type[TrainStageConfig]) -> Any:
    """A stage section that holds the stage's config, or the registry version that stands in for it."""
    return Annotated[
        Annotated[stage, Tag("stage")] | Annotated[RegistryVersion, Tag("taken")], Discriminator(_stage_form)
    ]


def _policy_form(value: Any) -> str:
    """`policy:` holds one stage's config, or named ones, each saying its algorithm:
    `{dpo: {algorithm: dpo, ...}, ppo: {algorithm: ppo, ...}}`, or a registry version to evaluate."""
    if isinstance(value, str):
        return "taken"
    if not isinstance(value, dict) or not value:
        return "one"
    named = (
        isinstance(v, PolicyStageConfig) or (isinstance(v, dict) and "algorithm" in v) for v in value.values()
    )
    return "named" if all(named) else "one"


PolicySection = Annotated[
    Annotated[PolicyStageConfig, Tag("one")]
    | Annotated[dict[Annotated[str, Field(pattern=STAGE_NAME)], PolicyStageConfig], Tag("named")]
    | Annotated[RegistryVersion, Tag("taken")],
    Discriminator(_policy_form),
]
SECTION_TAGS = frozenset({"one", "named", "stage", "taken"})  # left out of error key paths


class StagesConfig(Schema):
    """The stages, in dependency order; a missing section means the stage does not run, a registry version
    (`sft: registry:sft-policy:v3`) that the stage is taken from it rather than run.

    `policy` may name several policy stages (e.g. DPO and PPO): each starts from the same SFT version and is
    evaluated against it, so they compare side by side. They run as `policy-<name>`.
    """

    sft: taken_or(SFTStageConfig) | None = None
    reward: taken_or(RewardStageConfig) | None = None
    policy: PolicySection | None = None

    def plan(self) -> dict[str, TrainStageConfig]:
        """Every stage to run by its run name, in dependency order: sft, reward, policy[-<name>]..."""
        plan: dict[str, TrainStageConfig] = {
            name: cfg
            for name in ("sft", "reward")
            if isinstance(cfg := getattr(self, name), TrainStageConfig)
        }
        if isinstance(self.policy, dict):
            plan |= {f"policy-{name}": cfg for name, cfg in self.policy.items()}
        elif isinstance(self.policy, PolicyStageConfig):
            plan["policy"] = self.policy
        return plan

    def taken(self) -> dict[str, str]:
        """The stages taken from the registry: run name -> registry version."""
        return {
            name: value
            for name in ("sft", "reward", "policy")
            if isinstance(value := getattr(self, name), str)
        }


def stage_key(stage: str) -> str:
    """A stage's section as a dotted config key: `policy-ppo` is `stages.policy.ppo`."""
    return "stages." + stage.replace("-", ".", 1)


def stage_program(stage: str) -> str:
    """The stage program (`stages.<program>`) that runs a stage: `policy-ppo` is run by `stages.policy`."""
    return stage.partition("-")[0]


SyntheticData = pydantic_dataclass(SynthConfig, frozen=True, config=ConfigDict(extra="forbid"))


class PreferencesConfig(Schema):
    """Preference exports to import (see `rlhf data import`); the synthetic task's export is added to `files`."""

    files: list[str] = Field(default_factory=list)
    format: str | None = None
    ties: Literal["drop", "keep"] = "drop"
    min_votes: int = Field(1, ge=1)
    min_annotator_agreement: float | None = Field(None, ge=0.0, le=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    column_map: dict[str, str] = Field(default_factory=dict)


class DataConfig(Schema):
    """Where the data comes from: the built-in synthetic task, files, or both (files win)."""

    synthetic: SyntheticData | None = None  # type: ignore[valid-type]
    sft_train: str | None = None
    sft_eval: str | None = None
    eval_prompts: str | None = None
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)


class TrackingConfig(Schema):
    """wandb tracking; `tracking: none` turns it off."""

    backend: Literal["wandb", "none"] = "wandb"
    project: str = "rlhf"
    entity: str | None = None
    mode: Literal["auto", "offline", "online", "disabled"] = Field(
        "auto", description="auto: WANDB_MODE if set, else online with an API key, else offline."
    )
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """`tracking: none` / `tracking: wandb` are shorthands for the backend."""
        return {"backend": value} if isinstance(value, str) else value


class PipelineConfig(Schema):
    """One pipeline: a model, its data, the stages with their hyperparameters, and where things go."""

    name: str = Field("rlhf", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 0
    model: ModelSpec
    data: DataConfig = Field(default_factory=DataConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    evaluation: GenerationSpec | None = Field(
        default_factory=GenerationSpec,
        description="Sampling for the run's evaluations: the base model, and the policy against the SFT policy.",
    )
    registry: str | None = Field(
        None, description="Registry directory; default: $RLHF_REGISTRY, else ./registry."
    )
    runs_dir: str = Field("runs", description="Where each pipeline run gets its directory.")

    @model_validator(mode="after")
    def _some_stage(self) -> PipelineConfig:
        if not self.stages.plan() and not self.stages.taken():
            names = ", ".join(StagesConfig.model_fields)
            raise ValueError(f"stages: no stage configured; expected at least one of {names}")
        return self

    def distributed_for(self, stage: str) -> DistributedConfig:
        """How `stage` (a run name from `stages.plan()`) is distributed: the pipeline's `distributed` with the
        stage's own keys over it."""
        stage_cfg = self.stages.plan().get(stage)
        if stage_cfg is None or stage_cfg.distributed is None:
            return self.distributed
        return stage_cfg.distributed.over(self.distributed)

    def fingerprint(self) -> str:
        """A stable hash of the resolved config, for lineage and caching."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Loading, overrides, error messages


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply `a.b.c=value` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    for override in overrides or []:
        apply_override(raw, override)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a raw pipeline mapping; the first problems become one readable ConfigError."""
    return validate_section(PipelineConfig, raw, source)


def validate_section(schema: Any, raw: dict[str, Any], source: str) -> Any:
    """Validate `raw` against any schema class (model or pydantic dataclass) with our error messages."""
    try:
        return TypeAdapter(schema).validate_python(raw)
    except ValidationError as exc:
        lines = [describe_error(err, schema) for err in exc.errors()]
        shown = "; ".join(lines[:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
        raise ConfigError(f"{source}: {shown}") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` strings to a nested mapping, values parsed as YAML."""
    raw: dict[str, Any] = {}
    for override in overrides:
        apply_override(raw, override)
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a raw config mapping; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. stages.sft.max_steps=50")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def describe_error(err: Any, root: Any) -> str:
    """One line for one pydantic error: the dotted key path, what was expected, what was given."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-") and p not in SECTION_TAGS]
    path = ".".join(loc)
    kind = err["type"]
    if not path:
        return err["msg"].removeprefix("Value error, ")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f", did you mean {close[0]}?" if close else f" (known keys: {', '.join(sorted(known))})"
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: missing field"
    given = err.get("input")
    if kind == "string_pattern_mismatch" and "taken" in err["loc"]:
        return f"{path}: expected the stage's settings or a registry version (registry:NAME:VERSION), got {given!r}"
    expected = _EXPECTED.get(kind)
    if expected:
        return f"{path}: expected {expected}, got {given!r}"
    return f"{path}: {err['msg'].removeprefix('Value error, ')} (got {given!r})"


_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "dataclass_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
}


def _known_keys(root: Any, loc: list[str]) -> list[str]:
    """The field names valid at a key path, for did-you-mean hints."""
    model: Any = root
    for part in loc:
        fields = _fields_of(model)
        if part in fields:
            model = _section_type(fields[part])
        elif model is not PolicyStageConfig:  # there, a part not a field is a named policy stage
            return []
    return list(_fields_of(model))


def _fields_of(model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: info.annotation for name, info in model.model_fields.items()}
    fields = getattr(model, "__pydantic_fields__", None) or {}
    return {name: info.annotation for name, info in fields.items()}


def _section_type(annotation: Any) -> Any:
    """The schema class inside `X | None`, `Annotated[...]` or a union of them (or X itself)."""
    if _fields_of(annotation):
        return annotation
    for candidate in getattr(annotation, "__args__", ()):
        if _fields_of(found := _section_type(candidate)):
            return found
    return annotation


def dump_config(cfg: PipelineConfig, path: Path) -> None:
    """Save the resolved config (what actually ran) as YAML, atomically."""
    atomic.write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
