"""Precision: every model of every stage loads in the dtype its stage's precision says (trained models in fp32
where no DeepSpeed holds fp32 master weights, frozen ones and LoRA bases in 16 bits), and a precision or
offload this machine cannot honour is refused before any model loads, naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.eval import evaluation_model
from rlhf.models import policy_training
from rlhf.precision import LoadDtypes, check_precision, load_dtypes
from rlhf.settings import ModelSpec
from rlhf.workspace import standalone_context
from stages import policy, reward, sft
from tests.conftest import pipeline_config

CONFIG = """
name: precision
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 32, num_sft_eval: 8, num_preference_tasks: 40}
stages:
  sft: {max_steps: 1, max_length: 32, precision: bf16}
  reward: {max_steps: 1, max_length: 32, precision: bf16}
  policy: {max_steps: 1, max_length: 32, precision: bf16}
evaluation: null
tracking: none
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_config(tmp_path_factory.mktemp("precision"), CONFIG)


def dtypes_of(model: torch.nn.Module, adapter: bool | None = None) -> set[torch.dtype]:
    """The dtypes of a model's parameters: all of them, only the LoRA adapter's, or only the rest."""
    return {
        p.dtype for name, p in model.named_parameters() if adapter is None or ("lora_" in name) == adapter
    }


def test_load_dtypes_follow_precision_and_who_holds_the_master_weights() -> None:
    assert load_dtypes("bf16", with_deepspeed=True) == LoadDtypes("bfloat16", "bfloat16")
    assert load_dtypes("bf16", with_deepspeed=False) == LoadDtypes("float32", "bfloat16")
    assert load_dtypes("fp16", with_deepspeed=True) == LoadDtypes("float16", "float16")
    assert load_dtypes("fp32", with_deepspeed=True) == LoadDtypes("float32", "float32")
    if not torch.cuda.is_available():
        assert load_dtypes("auto", with_deepspeed=True) == LoadDtypes(
            "float32", "float32"
        )  # auto: fp32 on a CPU
    assert LoadDtypes("float32", "bfloat16").of_trained(adapter=True) == "bfloat16"  # a LoRA base is frozen


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_and_reward_models_load_in_the_stage_precision(
    config_file: Path, tmp_path: Path, lora: bool
) -> None:
    overrides = ["stages.sft.lora={r: 4}", "stages.reward.lora={r: 4}"] if lora else []
    cfg = load_config(config_file, overrides)
    for stage, build in (("sft", sft.build_trainer), ("reward", reward.build_trainer)):
        stage_cfg, ctx = standalone_context(cfg, stage, tmp_path / stage)
        built = build(stage_cfg, ctx)
        model = (built[0] if isinstance(built, tuple) else built).model
        if lora:  # a frozen base in bf16, the adapter trained in fp32 (peft's default)
            assert dtypes_of(model, adapter=False) >= {torch.bfloat16}, stage
            assert dtypes_of(model, adapter=True) == {torch.float32}, stage
        else:  # no DeepSpeed: torch autocast from fp32 weights
            assert dtypes_of(model) == {torch.float32}, stage


def test_dpo_reference_and_ppo_frozen_models_load_in_16_bits(config_file: Path, tmp_path: Path) -> None:
    cfg = load_config(config_file, ["stages.policy.precompute_ref_log_probs=false"])  # a reference is held
    stage_cfg, ctx = standalone_context(cfg, "policy", tmp_path / "dpo")
    start = policy.load_start(stage_cfg, ctx)
    assert dtypes_of(start.model) == {torch.float32}
    assert dtypes_of(start.ref_model) == {torch.bfloat16}

    from rlhf.ppo_models import build_models

    training = policy_training(ctx.model, None, "policy")
    for dtypes in (
        LoadDtypes("float32", "bfloat16"),
        LoadDtypes("bfloat16", "bfloat16"),
    ):  # without / with DS
        models = build_models(ctx.model, [ctx.model], training, "reward", dtypes)
        assert dtypes_of(models.policy) == dtypes_of(models.value) == {getattr(torch, dtypes.trained)}
        assert dtypes_of(models.reference) == dtypes_of(models.rewards[0].model) == {torch.bfloat16}


def test_the_evaluation_loads_in_its_own_precision(config_file: Path, tmp_path: Path) -> None:
    cfg = load_config(config_file)
    _, ctx = standalone_context(cfg, "sft", tmp_path / "eval")
    expected = (
        torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    )
    with evaluation_model(ModelSpec(name=ctx.model.name)) as (model, _):
        assert dtypes_of(model) == {expected}


def test_a_precision_or_offload_the_machine_cannot_honour_is_refused(config_file: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^stages\.sft\.precision: fp16 needs a GPU"):
            check_precision(load_config(config_file, ["stages.sft.precision=fp16"]))
    offload = ["distributed.offload_frozen_models=true", "stages.policy.algorithm=ppo"]
    with pytest.raises(
        ConfigError, match=r"^stages\.policy: distributed\.offload_frozen_models needs ZeRO-3"
    ):
        check_precision(load_config(config_file, [*offload, "distributed.zero_stage=2"]))
    check_precision(load_config(config_file, [*offload, "distributed.zero_stage=3"]))
    with pytest.raises(
        ConfigError, match=r"^stages\.policy: distributed\.offload_frozen_models is for PPO's"
    ):
        check_precision(
            load_config(config_file, ["distributed.offload_frozen_models=true", "distributed.zero_stage=3"])
        )
