"""`rlhf plan`: what each GPU (or CPU process) holds in each stage, worked out before anything launches.

Why: a stage that does not fit fails after minutes of loading, on many machines at once; the arithmetic that
says so takes milliseconds and needs no model: sizes come from dimensions alone (`rlhf.model_sizes`), no
torch here. A stage's peak per device is

    runtime + max(training phase, generation phase)
    training phase   = weights + optimizer states + frozen models + the larger of
                       (activations + logits) and gradients; both when gradients are held (see below)
    generation phase = model states + frozen models + weights gathered at ZeRO-3 + KV cache + a vLLM engine

A vLLM rollout engine (`rollout.engine: vllm`) beside the trainer holds `gpu_memory_utilization` of the GPU
(its copy of the policy and its KV cache; on a CPU the copy plus `kv_cache_gib`); asleep while the trainer
trains (GPU, colocated, `vllm.sleep`) it counts in the generation phase only, awake in both. In a process on
other GPUs (`vllm.devices`) it holds nothing here. The rollouts then need no gathered weights or KV cache of
the trainer's; the held-out sampling after training still does.

Gradients come into being as the backward pass frees the activations (and are set to None after each
step), so at the peak one or the other is alive, unless gradients are held through the forward pass: ZeRO-3's
gradient partition lives in a buffer of its own, and accumulation keeps them from one micro-batch to the
next. The constants are measured: bench/plan_accuracy.py compares the plan with the SFT stage's measured
per-rank peak for 3 model sizes at ZeRO-0/2/3 (README). Not counted: DeepSpeed's communication buckets,
allocator fragmentation beyond the runtime constant, the logits of PPO's no-grad rollout log-probs
(`rollout.batch_size` responses at their positions; the evaluation's are bounded: `rlhf.eval.LOGIT_BUDGET`),
and on a CPU a ZeRO-3 residue of 0.6-1.4x
the whole model's fp32 weights that the accuracy table shows and nothing here explains yet.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from rlhf.config import PipelineConfig, apply_override, validate_config
from rlhf.distributed import check_deepspeed_batches, deepspeed_config
from rlhf.errors import RlhfError
from rlhf.model_sizes import Dims, Shape, Shapes, adapter_params, causal_params, classifier_params
from rlhf.precision import check_offload, zero_stage_of
from rlhf.registry import default_registry_path
from rlhf.settings import (
    DistributedConfig,
    ModelSpec,
    PolicyStageConfig,
    RewardStageConfig,
    TrainStageConfig,
    VLLMSpec,
    ppo_batches,
)
from rlhf.stage_table import REWARD_MODEL, STAGES, latest_version_of, stage_key, stage_spec

Device = Literal["gpu", "cpu"]
GiB = 2**30

# --------------------------------------------------------------------------------------------------
# Constants (measured against each rank's peak: bench/plan_accuracy.py; the GPU runtime is an estimate)

# Always there before any model: the CUDA context and the caching allocator's reserve on a GPU (an estimate,
# not yet measured); on a CPU the resident Python + torch + transformers + TRL + DeepSpeed of a rank with its
# data (measured: 0.47 GiB before loading, 0.53 fitted over the accuracy table).
RUNTIME_BYTES: dict[str, int] = {"gpu": int(1.0 * GiB), "cpu": int(0.55 * GiB)}
# Values one layer keeps per token for the backward pass, nothing recomputed, counted from autograd in
# transformers' llama with SDPA and no dropout (and matching the measured peaks): 10 hidden-size vectors in
# the attention block (its input and RMSNorm output, q and q rotated, k and v repeated to every head, the
# attention output and o_proj's input, the second norm's input and output), 4 intermediate-size ones in a
# gated MLP (gate, up, silu(gate), their product), 2 in a plain one (the up projection, its activation).
# Korthikanti et al. 2022's 34 bytes x hidden (16-bit) assume GPT's 4h MLP and dropout masks.
ATTENTION_VALUES = 10
GATED_MLP_VALUES = 4
PLAIN_MLP_VALUES = 2
# With gradient checkpointing a layer keeps only its input (one hidden state per token) until the backward
# pass recomputes it; one layer's full activations are alive at a time on top.
CHECKPOINTED_STATES = 1
LOGIT_BYTES = 4  # the loss upcasts the logits to fp32
LOGIT_COPIES = 3  # fp32 logits, their log-softmax, and its gradient, alive together
MASTER_BYTES = 4  # DeepSpeed's fp32 master copy: of 16-bit weights, and at ZeRO-1/2 of fp32 ones too
ADAM_BYTES = 8  # Adam's two fp32 moments
# rlhf/ppo.py never turns gradient checkpointing on (only the TRL trainers do, from their arguments).
PPO_HONOURS_CHECKPOINTING = False
EVALUATION = "evaluate"  # the pipeline's name for its closing evaluation step (rlhf.pipeline.EVALUATE)


@dataclass(frozen=True)
class StageModels:
    """The models a stage holds, sized: its start, and for an online stage each reward model of its reward (the
    first also sizes PPO's critic, which starts from it)."""

    start: Shape
    rewards: tuple[Shape, ...] = ()


def start_shape(cfg: PipelineConfig, stage: str, shapes: Shapes) -> Shape:
    """A stage's start as `rlhf run` picks it: its own model, else the product of the stage it starts from
    (run here, or taken from the registry), else the pipeline's model."""
    stage_cfg, parent = cfg.stages.plan()[stage], stage_spec(stage).starts_from
    if stage_cfg.model is not None:
        return shapes.of(stage_cfg.model.name, f"{stage_key(stage)}.model", stage_cfg.model.base)
    if parent in cfg.stages.plan():
        return product_shape(cfg, parent, shapes)
    if parent in cfg.stages.taken():
        return shapes.of(cfg.stages.taken()[parent], stage_key(parent))
    return shapes.of(cfg.model.name, "model", cfg.model.base)


def product_shape(cfg: PipelineConfig, stage: str, shapes: Shapes) -> Shape:
    """What a stage publishes: its start (a classifier merges an adapter start) with the adapter it trains."""
    start, stage_cfg = start_shape(cfg, stage, shapes), cfg.stages.plan()[stage]
    if isinstance(stage_cfg, RewardStageConfig) and start.adapter:
        start = Shape(start.dims)
    if start.adapter or stage_cfg.lora is None:
        return start
    lora = stage_cfg.lora
    return Shape(
        start.dims, adapter_params(start.dims, lora.r, lora.target_modules, f"{stage_key(stage)}.lora")
    )


def provided_reward_model(cfg: PipelineConfig, shapes: Shapes) -> Shape | None:
    """The reward model a stage of this config provides (run here or taken); None without one."""
    provider = next(spec.name for spec in STAGES if spec.provides == REWARD_MODEL)
    if provider in cfg.stages.plan():
        return product_shape(cfg, provider, shapes)
    taken = cfg.stages.taken()
    return shapes.of(taken[provider], stage_key(provider)) if provider in taken else None


def stage_models(cfg: PipelineConfig, stage: str, shapes: Shapes) -> StageModels:
    stage_cfg, start = cfg.stages.plan()[stage], start_shape(cfg, stage, shapes)
    if not (isinstance(stage_cfg, PolicyStageConfig) and stage_cfg.online):
        return StageModels(start)
    if stage_cfg.rewards is None:  # the one reward model of ppo.reward_model (default: the pipeline's)
        key = f"{stage_key(stage)}.ppo.reward_model"
        return StageModels(start, (reward_shape(cfg, stage_cfg.ppo.reward_model, key, shapes),))
    key = f"{stage_key(stage)}.rewards"  # every reward model listed; reward functions hold no memory
    return StageModels(start, tuple(reward_shape(cfg, source.model, key, shapes)
                                    for source in stage_cfg.rewards if source.model is not None))  # fmt: skip


def reward_shape(cfg: PipelineConfig, spec: ModelSpec | None, key: str, shapes: Shapes) -> Shape:
    """A reward model sized: the one named, else the one this config provides, else the registry's latest."""
    shape = shapes.of(spec.name, key, spec.base) if spec else provided_reward_model(cfg, shapes)
    return shape or shapes.of(latest_version_of(REWARD_MODEL), key)


# --------------------------------------------------------------------------------------------------
# What a stage holds


@dataclass(frozen=True)
class Hardware:
    """What the plan fits into: processes per node, nodes, and the memory of one device (a GPU, or a CPU
    process's share of host memory); `source` says where the memory figure came from."""

    gpus_per_node: int
    nodes: int
    gpu_memory_bytes: int
    source: str = ""


@dataclass(frozen=True)
class Components:
    """Bytes one device holds, by what holds them."""

    weights: int = 0  # the trained model's (a LoRA base included)
    gradients: int = 0
    optimizer_states: int = 0  # fp32 master weights and Adam moments
    frozen_models: int = 0  # reference, reward models
    activations: int = 0  # one micro-batch, nothing recomputed
    activations_with_checkpointing: int = 0
    logits: int = 0
    gathered_weights: int = 0  # ZeRO-3: the whole trained model gathered for generation
    kv_cache: int = 0
    rollout_engine: int = 0  # a vLLM engine beside the trainer: its policy copy and KV cache
    runtime: int = 0


@dataclass(frozen=True)
class StagePlan:
    """One stage's peak on one device, its parts, and (when it does not fit) the changes that would fit it."""

    stage: str
    kind: str  # causal-lm, classifier, dpo, ppo, evaluation
    parameters: int  # of the model the stage trains (or the largest it evaluates)
    world_size: int
    zero_stage: int | None
    precision: str
    gradient_checkpointing: bool
    components: Components
    available: int
    gradients_held: bool  # through the forward pass: at ZeRO-3, or accumulated over micro-batches
    notes: tuple[str, ...] = ()
    engine_sleeps: bool = False  # the rollout engine gives its memory back while the trainer trains
    fixes: tuple[tuple[str, ...], ...] = ()  # each a set of overrides that together make the stage fit

    @property
    def training_phase(self) -> int:
        c = self.components
        activations = c.activations_with_checkpointing if self.gradient_checkpointing else c.activations
        backward = (
            activations + c.logits + c.gradients
            if self.gradients_held
            else max(activations + c.logits, c.gradients)
        )
        engine = 0 if self.engine_sleeps else c.rollout_engine
        return self.model_states - c.gradients + backward + engine

    @property
    def generation_phase(self) -> int:
        c = self.components
        return self.model_states + c.gathered_weights + c.kv_cache + c.rollout_engine

    @property
    def model_states(self) -> int:
        c = self.components
        return c.weights + c.gradients + c.optimizer_states + c.frozen_models

    @property
    def total(self) -> int:
        return self.components.runtime + max(self.training_phase, self.generation_phase)

    @property
    def fits(self) -> bool:
        return self.total <= self.available


@dataclass(frozen=True)
class Setup:
    """How a stage runs, as far as memory goes."""

    world: int
    zero: int | None  # the ZeRO stage DeepSpeed runs (None: no DeepSpeed)
    low: bool  # 16-bit precision (bf16 / fp16)
    offload_optimizer: bool = False
    offload_param: bool = False
    offload_frozen: bool = False

    def share(self, size: float, from_zero: int) -> float:
        """`size` per device: divided over the world from ZeRO stage `from_zero` on."""
        return size / self.world if self.zero is not None and self.zero >= from_zero else size

    @property
    def frozen_bytes(self) -> int:
        return 2 if self.low else 4


def resolved_precision(precision: str, device: Device) -> str:
    """`auto` is bf16 when planning for GPUs, fp32 on CPUs (as `rlhf.precision.resolve_precision` decides)."""
    return precision if precision != "auto" else ("bf16" if device == "gpu" else "fp32")


def stage_distributed(cfg: PipelineConfig, stage: str, hardware: Hardware) -> DistributedConfig:
    """The stage's distributed settings on this hardware: its own keys over the pipeline's, the hardware's
    processes per node and nodes in place of the pipeline's."""
    base = cfg.distributed.model_copy(
        update={"num_processes": hardware.gpus_per_node, "num_nodes": hardware.nodes}
    )
    own = cfg.stages.plan()[stage].distributed
    return own.over(base) if own is not None else base


def stage_setup(
    stage_cfg: TrainStageConfig, dist: DistributedConfig, device: Device
) -> tuple[Setup, list[str]]:
    """ZeRO stage and offloads from `zero_stage` or the DeepSpeed file; DeepSpeed runs on a GPU, or on several
    CPU processes (one CPU process trains without it, as `rlhf.distributed.uses_deepspeed` decides)."""
    world, zero, notes = dist.num_processes * dist.num_nodes, zero_stage_of(dist), []
    low = resolved_precision(stage_cfg.precision, device) != "fp32"
    if zero is not None and world == 1:
        notes.append(f"ZeRO-{zero} on 1 process: nothing to shard"
                     + ("" if device == "gpu" else "; one CPU process trains without DeepSpeed"))  # fmt: skip
    if zero is None or (device == "cpu" and world == 1):
        return Setup(world, None, low), notes
    zero_cfg = (deepspeed_config(dist) or {})["zero_optimization"]

    def offloaded(name: str) -> bool:
        return (zero_cfg.get(name) or {}).get("device", "none") not in ("none", None)

    return Setup(world, zero, low, offloaded("offload_optimizer"), offloaded("offload_param"),
                 dist.offload_frozen_models and zero == 3), notes  # fmt: skip


def trained_states(full: int, adapter: int, base: int, s: Setup) -> tuple[int, int, int]:
    """(weights, gradients, optimizer states) per device of a trained model: `full` parameters trained in full
    and `adapter` LoRA parameters (trained in fp32 as 16 bytes each either way) on a frozen `base`.
    DeepSpeed in 16 bits: 2 + 2 + 12 (fp32 master + Adam) bytes; in fp32: 4 + 4 + 8, and 4 + 4 + 12 at
    ZeRO-1/2, whose optimizer copies its partition of the weights even when they are fp32 already (ZeRO-3
    uses fp32 weights as they are); without DeepSpeed 4 + 4 + 8."""
    if s.zero is not None and s.low:
        w, g, o = 2, 2, MASTER_BYTES + ADAM_BYTES
    else:
        w, g, o = 4, 4, ADAM_BYTES + (MASTER_BYTES if s.zero in (1, 2) else 0)
    weights = 0 if s.offload_param else s.share((full + adapter) * w + base * s.frozen_bytes, 3)
    optimizer = 0 if s.offload_optimizer else s.share((full + adapter) * o, 1)
    return int(weights), int(s.share((full + adapter) * g, 2)), int(optimizer)


def activations(d: Dims, tokens: int, low: bool, logit_tokens: int | None = None) -> tuple[int, int, int]:
    """(activations, activations with gradient checkpointing, logits) of one micro-batch of `tokens`, its
    logits at `logit_tokens` positions (None: all; PPO computes them at the response's alone)."""
    value = 2 if low else 4
    mlp = GATED_MLP_VALUES if d.kind == "decoder" else PLAIN_MLP_VALUES
    layer = (ATTENTION_VALUES * d.hidden + mlp * d.intermediate) * tokens * value
    kept = d.layers * CHECKPOINTED_STATES * d.hidden * tokens * value
    logit_tokens = tokens if logit_tokens is None else logit_tokens
    return d.layers * layer, kept + layer, logit_tokens * d.vocab * LOGIT_BYTES * LOGIT_COPIES


def kv_cache(d: Dims, sequences: int, length: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `sequences` of `length` tokens."""
    return 2 * d.layers * d.kv_heads * d.head_dim * dtype_bytes * sequences * length


def has_eval_prompts(cfg: PipelineConfig) -> bool:
    return cfg.data.eval_prompts is not None or cfg.data.synthetic is not None


def plan_stage(
    cfg: PipelineConfig, stage: str, models: StageModels, hardware: Hardware, device: Device
) -> StagePlan:
    """One training stage's memory per device (see the module docstring and the constants)."""
    stage_cfg, key, start = cfg.stages.plan()[stage], stage_key(stage), models.start
    dist = stage_distributed(cfg, stage, hardware)
    setup, notes = stage_setup(stage_cfg, dist, device)
    d, lora, policy = start.dims, stage_cfg.lora, isinstance(stage_cfg, PolicyStageConfig)
    ppo, classifier = policy and stage_cfg.online, isinstance(stage_cfg, RewardStageConfig)
    critic = ppo and stage_cfg.online_recipe().critic
    if dist.num_processes > hardware.gpus_per_node or dist.num_nodes > hardware.nodes:
        notes.append(f"asks for {dist.num_nodes} x {dist.num_processes} processes; the hardware has "
                     f"{hardware.nodes} x {hardware.gpus_per_node}")  # fmt: skip
    if dist.offload_frozen_models and policy:
        check_offload(key, stage_cfg, dist)
    # The trained model: a LoRA adapter on its frozen base (an adapter start trains on, except that a
    # classifier merges it first; LoRA trains a classifier's head too), or every weight
    own = start.adapter if not classifier else 0
    new = 0 if own or lora is None else adapter_params(d, lora.r, lora.target_modules, f"{key}.lora")
    body = classifier_params(d) if classifier else causal_params(d)
    head = d.hidden + (d.kind == "encoder") if classifier and new else 0
    full, adapter, base = (head, own + new, body) if own or new else (body, 0, 0)
    # Sequences per micro-batch: a preference pair is two (chosen, rejected), a KTO example too (its completion
    # and the mismatched one of its KL estimate); PPO's micro-batch is its own
    tokens = stage_cfg.per_device_train_batch_size * stage_cfg.max_length * (2 if classifier or policy else 1)
    value = reference = frozen = 0
    value_dims, accumulates = d, stage_cfg.gradient_accumulation_steps > 1
    logit_tokens = 0 if classifier else None  # None: at every token
    if ppo:
        rollout, batches = stage_cfg.ppo.rollout, ppo_batches(stage_cfg, key)
        reward = models.rewards[0] if models.rewards else None  # PPO's critic starts from the first
        tokens = batches.micro * (stage_cfg.max_length + rollout.max_new_tokens)
        logit_tokens = batches.micro * (rollout.max_new_tokens + 1)  # the response's (ppo_models.logits_kept)
        accumulates = batches.minibatch > batches.micro
        reference = 0 if new else body + adapter  # PPO's reference of an adapter start: a whole frozen copy
        value_dims = reward.dims if reward and reward.dims.vocab == d.vocab else d  # else: the policy's
        if critic:
            value = (
                d.hidden + 1 if stage_cfg.ppo.value_model == "policy_head" else classifier_params(value_dims)
            )
        frozen = sum(classifier_params(r.dims) + r.adapter for r in models.rewards)
        if stage_cfg.gradient_checkpointing and not PPO_HONOURS_CHECKPOINTING:
            notes.append("gradient_checkpointing: rlhf/ppo.py does not turn it on; planned without it")
    elif policy and not (new or stage_cfg.precomputes_reference(setup.world)):
        reference = own or body  # an adapter start: TRL keeps a frozen copy of the adapter alone
    frozen = 0 if setup.offload_frozen else int(setup.share((frozen + reference) * setup.frozen_bytes, 3))
    weights, gradients, optimizer = trained_states(full + value, adapter, base, setup)
    act, act_ckpt, logits = activations(d, tokens, setup.low, logit_tokens)
    if (
        critic and stage_cfg.ppo.value_model != "policy_head"
    ):  # the value model's backbone runs on the batch too
        value_act, value_ckpt, _ = activations(value_dims, tokens, setup.low, logit_tokens=0)
        act, act_ckpt = act + value_act, act_ckpt + value_ckpt
    # Generation (PPO's rollouts, the stage's held-out sampling) in what the model computes in; ZeRO-3
    # gathers the whole trained model for it
    dtype_bytes = 2 if setup.low and (setup.zero is not None or adapter) else 4
    engine, engine_sleeps = 0, False
    if ppo and rollout.engine == "vllm":
        engine, engine_sleeps = rollout_engine(
            rollout.vllm, causal_params(d) + new, setup.low, device, hardware
        )
    lengths = [(rollout.batch_size, rollout.max_new_tokens)] if ppo and rollout.engine == "hf" else []
    if (sampling := getattr(stage_cfg, "evaluation", None)) is not None and has_eval_prompts(cfg):
        lengths.append((sampling.batch_size, sampling.max_new_tokens))
    kv = max((kv_cache(d, n, stage_cfg.max_length + new_tokens, dtype_bytes) for n, new_tokens in lengths),
             default=0)  # fmt: skip
    gathered = (
        (full + adapter + value) * dtype_bytes + base * setup.frozen_bytes if kv and setup.zero == 3 else 0
    )
    components = Components(weights, gradients, optimizer, frozen, act, act_ckpt, logits, gathered, kv, engine,
                            RUNTIME_BYTES[device])  # fmt: skip
    checkpointing = stage_cfg.gradient_checkpointing and (PPO_HONOURS_CHECKPOINTING or not ppo)
    kind = stage_cfg.algorithm if policy else "classifier" if classifier else "causal-lm"
    return StagePlan(stage, kind, full + adapter + value, setup.world, setup.zero,
                     resolved_precision(stage_cfg.precision, device), checkpointing, components,
                     hardware.gpu_memory_bytes, setup.zero == 3 or accumulates, tuple(notes),
                     engine_sleeps=engine_sleeps)  # fmt: skip


def rollout_engine(
    spec: VLLMSpec, params: int, low: bool, device: Device, hardware: Hardware
) -> tuple[int, bool]:
    """Bytes a vLLM rollout engine holds on the trainer's device, and whether it sleeps while the trainer
    trains: on a GPU the share it reserves (its copy of the policy inside it), on a CPU the copy (in the
    engine's dtype) and its KV cache; nothing when it runs on GPUs of its own."""
    if device == "gpu":
        if spec.placement == "process" and spec.devices is not None:
            return 0, False
        return int(
            spec.gpu_memory_utilization * hardware.gpu_memory_bytes
        ), spec.sleep and spec.placement == "colocate"
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(spec.dtype, 2 if low else 4)
    return params * dtype_bytes + spec.kv_cache_gib * GiB, False


def plan_evaluation(
    cfg: PipelineConfig, shapes: Shapes, hardware: Hardware, device: Device
) -> StagePlan | None:
    """The closing evaluation, in the launching process on one device: its models one at a time in bf16 (fp32
    on a CPU); the policy and its reference sample with the KV cache of `evaluation.batch_size` sequences
    (prompts assumed as long as the evaluated stage's max_length), the judge only scores."""
    gen, plan, taken = cfg.evaluation, cfg.stages.plan(), cfg.stages.taken()
    evaluated = [stage for stage in plan if stage_spec(stage).evaluated]
    if gen is None or not has_eval_prompts(cfg) or not (evaluated or cfg.data.synthetic):
        return None
    length = max((plan[s].max_length for s in evaluated or plan), default=0) + gen.max_new_tokens
    samplers = [product_shape(cfg, stage, shapes) for stage in evaluated]
    parents = {stage_spec(stage).starts_from for stage in evaluated}
    samplers += [product_shape(cfg, p, shapes) for p in parents & set(plan)]
    samplers += [shapes.of(taken[p], stage_key(p)) for p in parents & set(taken)]
    if cfg.data.synthetic is not None or parents - set(plan) - set(taken):  # the base: baseline, reference
        samplers.append(shapes.of(cfg.model.name, "model", cfg.model.base))
    judge = provided_reward_model(cfg, shapes) if evaluated else None
    dtype_bytes = 2 if device == "gpu" else 4
    loads = [((causal_params(s.dims) + s.adapter), kv_cache(s.dims, gen.batch_size, length, dtype_bytes))
             for s in samplers]  # fmt: skip
    loads += [(classifier_params(judge.dims) + judge.adapter, 0)] if judge else []
    params, kv = max(loads, key=lambda load: load[0] * dtype_bytes + load[1])
    components = Components(weights=params * dtype_bytes, kv_cache=kv, runtime=RUNTIME_BYTES[device])
    return StagePlan(EVALUATION, "evaluation", params, 1, None, "bf16" if dtype_bytes == 2 else "fp32", False,
                     components, hardware.gpu_memory_bytes, False)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The plan, and the changes that would make a stage fit


@dataclass(frozen=True)
class Plan:
    device: Device
    hardware: Hardware
    stages: tuple[StagePlan, ...]

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)


def plan(cfg: PipelineConfig, hardware: Hardware, shapes: Mapping[str, str] | None = None,
         device: Device = "gpu") -> Plan:  # fmt: skip
    """Every planned stage, then the closing evaluation, on `hardware`; `shapes` says what a model name the
    plan cannot size offline is (`{ref: spec}`). A stage that does not fit carries the changes that fit it."""
    sizes = Shapes(default_registry_path(cfg.registry), dict(shapes or {}))
    planned: list[StagePlan] = []
    for stage in cfg.stages.plan():
        models = stage_models(cfg, stage, sizes)
        replan = partial(plan_stage, models=models, hardware=hardware, device=device)
        planned.append(with_fixes(cfg, replan(cfg, stage), replan))
    if (evaluation := plan_evaluation(cfg, sizes, hardware, device)) is not None:
        planned.append(with_fixes(cfg, evaluation, lambda c, _: plan_evaluation(c, sizes, hardware, device)))
    return Plan(device, hardware, tuple(planned))


Change = tuple[tuple[str, ...], int]  # overrides that go together, and their cost


def candidate_changes(cfg: PipelineConfig, planned: StagePlan) -> list[list[Change]]:
    """What may fit a stage, by dimension; a dimension's options exclude each other. Cost: how much a change
    slows training or changes what it trains (halving the micro-batch keeps the global batch)."""
    if planned.stage == EVALUATION:
        batch = cfg.evaluation.batch_size if cfg.evaluation else 1
        return [[((f"evaluation.batch_size={batch >> n}",), n) for n in range(1, batch.bit_length())]]
    stage_cfg, key, ppo = cfg.stages.plan()[planned.stage], stage_key(planned.stage), planned.kind == "ppo"
    changes: list[list[Change]] = []
    if not stage_cfg.gradient_checkpointing and (PPO_HONOURS_CHECKPOINTING or not ppo):
        changes.append([((f"{key}.gradient_checkpointing=true",), 1)])
    if planned.world_size > 1 and planned.zero_stage != 3:
        changes.append([((f"{key}.distributed.zero_stage=3",), 2)])
    if ppo and not cfg.distributed_for(planned.stage).offload_frozen_models:
        changes.append([((f"{key}.distributed.offload_frozen_models=true",), 2)])
    precomputable = planned.kind in ("dpo", "kto") and planned.world_size == 1  # see the config's check
    if precomputable and not stage_cfg.precomputes_reference(planned.world_size):
        changes.append([((f"{key}.precompute_ref_log_probs=true",), 1)])
    batch, steps = stage_cfg.per_device_train_batch_size, stage_cfg.gradient_accumulation_steps
    changes.append([((f"{key}.per_device_train_batch_size={batch >> n}",
                      *(() if ppo else (f"{key}.gradient_accumulation_steps={steps << n}",))), n)
                    for n in range(1, batch.bit_length())])  # fmt: skip
    if stage_cfg.lora is None:
        changes.append([((f"{key}.lora={{}}",), 4)])
    return [options for options in changes if options]


def with_fixes(
    cfg: PipelineConfig, planned: StagePlan, replan: Callable[[PipelineConfig, str], StagePlan | None]
) -> StagePlan:
    """A stage that does not fit, with the single changes that each fit it (the cheapest option of each),
    else the cheapest combination that does; each tried on the config re-validated, batch checks included."""
    if planned.fits:
        return planned
    raw = cfg.model_dump(mode="json")

    def fits(overrides: tuple[str, ...]) -> bool:
        changed = copy.deepcopy(raw)
        try:
            for override in overrides:
                apply_override(changed, override)
            new = validate_config(changed)
            check_deepspeed_batches(new, [planned.stage])
            result = replan(new, planned.stage)
        except RlhfError:
            return False
        return result is not None and result.fits

    changes = candidate_changes(cfg, planned)
    singles = [
        next((o for o, _ in sorted(options, key=lambda c: c[1]) if fits(o)), None) for options in changes
    ]
    fixes = tuple(single for single in singles if single)
    if not fixes:
        combinations = sorted(
            (combo for n in range(2, len(changes) + 1) for dims in itertools.combinations(changes, n)
             for combo in itertools.product(*dims)),
            key=lambda combo: (sum(cost for _, cost in combo), len(combo)),
        )  # fmt: skip
        joined = (tuple(o for overrides, _ in combo for o in overrides) for combo in combinations)
        fixes = tuple(itertools.islice(filter(fits, joined), 1))
    return replace(planned, fixes=fixes)
