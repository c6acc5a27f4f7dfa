"""A stage's `precision` setting: what it means on this device, what each model loads in, and the checks that
refuse a precision the device lacks before any model loads.

Loading in the training precision halves the memory of every frozen model (reference, reward model, a LoRA
base) and, under DeepSpeed, of the trained one too. Where the fp32 master weights live decides the trained
model's dtype: DeepSpeed's bf16/fp16 modes keep them in the optimizer, so the model itself loads in 16 bits;
without DeepSpeed, torch autocast computes in 16 bits from fp32 weights, so the trained model loads in fp32
(16-bit weights updated by a 16-bit Adam would lose small updates to rounding).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rlhf.config import PipelineConfig
from rlhf.distributed import deepspeed_config
from rlhf.errors import ConfigError
from rlhf.settings import DistributedConfig, PolicyStageConfig
from rlhf.stage_table import stage_key

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_precision(precision: str) -> str:
    """ "auto" is bf16 on a GPU that supports it and fp32 elsewhere; anything else is taken as asked."""
    import torch

    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def mixed_precision(precision: str) -> str:
    """Our precision setting as accelerate's `mixed_precision` ("no", "bf16", "fp16")."""
    resolved = resolve_precision(precision)
    return "no" if resolved == "fp32" else resolved


def precision_flags(precision: str) -> dict[str, bool]:
    """TRL's precision flags: bf16 where the device has it ("auto"), or exactly what the config asks."""
    precision = resolve_precision(precision)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


@dataclass(frozen=True)
class LoadDtypes:
    """The torch dtype names a stage's models load in."""

    trained: str  # a model whose own weights train (full fine-tuning)
    frozen: str  # a model that does not train: reference, reward model, evaluation, a LoRA adapter's base

    def of_trained(self, adapter: bool) -> str:
        """What the trained model's weights load in: a LoRA adapter trains (in fp32, peft's default) on a
        frozen base, which loads like any frozen model."""
        return self.frozen if adapter else self.trained


def load_dtypes(precision: str, with_deepspeed: bool) -> LoadDtypes:
    """What a stage with this precision loads its models in (see the module docstring)."""
    resolved = resolve_precision(precision)
    low = TORCH_DTYPES[resolved]
    return LoadDtypes(trained=low if with_deepspeed else "float32", frozen=low)


def evaluation_dtype() -> str:
    """The closing evaluation only samples and scores: bf16 where the GPU has it, fp32 elsewhere."""
    return TORCH_DTYPES[resolve_precision("auto")]


def check_precision(cfg: PipelineConfig, stages: Iterable[str] | None = None) -> None:
    """Refuse, before any model loads, a precision this machine cannot run and a frozen-model offload that
    only ZeRO-3 can honour (every planned stage, or those named): one line naming the key."""
    import torch

    gpu = torch.cuda.is_available()
    for stage, stage_cfg in cfg.stages.plan().items():
        if stages is not None and stage not in stages:
            continue
        key = stage_key(stage)
        if stage_cfg.precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"{key}.precision: bf16, but {torch.cuda.get_device_name()} has no bf16; use fp16 or auto"
            )
        if stage_cfg.precision == "fp16" and not gpu:
            raise ConfigError(f"{key}.precision: fp16 needs a GPU (this machine has none); use bf16 or fp32")
        dist = cfg.distributed_for(stage)
        if dist.offload_frozen_models and isinstance(stage_cfg, PolicyStageConfig):  # others hold none
            check_offload(key, stage_cfg, dist)


def check_offload(key: str, stage_cfg: PolicyStageConfig, dist: DistributedConfig) -> None:
    """`offload_frozen_models` moves the shards of PPO's own ZeRO-3 engines for its frozen models."""
    if stage_cfg.algorithm == "dpo":
        raise ConfigError(
            f"{key}: distributed.offload_frozen_models is for PPO's frozen models; DPO holds no reference with "
            f"{key}.precompute_ref_log_probs: true, and without it TRL's sharded ZeRO-3 engine"
        )
    if zero_stage_of(dist) != 3:
        raise ConfigError(
            f"{key}: distributed.offload_frozen_models needs ZeRO-3 (the stage runs at "
            f"{zero_stage_of(dist)}); set distributed.zero_stage: 3 or drop the offload"
        )


def zero_stage_of(dist: DistributedConfig) -> int | None:
    """The ZeRO stage a stage's settings name (from `zero_stage` or the DeepSpeed file), None without one."""
    config = deepspeed_config(dist)
    return None if config is None else int(config["zero_optimization"].get("stage", 0))
