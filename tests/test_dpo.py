"""Stage 3a, DPO: widens the chosen-minus-rejected margin and raises the gold reward over SFT; reads the SFT
policy and publishes the policy through registry references; LoRA reference = adapters disabled; loss types,
precomputed reference log-probs, ties and over-length pairs accounted for."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.files import fingerprint
from rlhf.errors import DataError
from rlhf.launch import run_standalone
from rlhf.models import load_causal_lm, registry_model
from rlhf.pair_lengths import length_counts
from rlhf.registry import Registry
from rlhf.settings import ModelSpec, PolicyStageConfig
from rlhf.workspace import standalone_context
from stages import policy, sft
from tests.conftest import pipeline_config

if TYPE_CHECKING:
    from trl import DPOTrainer

CONFIG = """
name: dpo-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 8000, num_sft_eval: 64, num_preference_tasks: 2000}
stages:
  sft:
    learning_rate: 3.0e-3
    num_train_epochs: 2
    per_device_train_batch_size: 32
    warmup_steps: 0.05
    lr_scheduler_type: cosine
    max_length: 64
    logging_steps: 25
    save_steps: 1000
    num_threads: 2
    evaluation: {max_new_tokens: 12, samples_per_prompt: 8}
  policy:
    loss_type: [apo_zero]
    beta: 0.3
    learning_rate: 5.0e-4
    num_train_epochs: 5
    per_device_train_batch_size: 32
    max_length: 64
    logging_steps: 10
    save_steps: 1000
    num_threads: 2
    evaluation: {max_new_tokens: 12, samples_per_prompt: 8}
tracking: none
"""
FROM_SFT = "stages.policy.model=registry:sft-policy:latest"
QUICK = ["stages.policy.max_steps=4", "stages.policy.evaluation=null"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_config(tmp_path_factory.mktemp("dpo"), CONFIG)


@pytest.fixture(scope="module")
def sft_metrics(config_file: Path) -> dict[str, float]:
    """The SFT policy every DPO test here starts from, published as sft-policy:v1."""
    result = run_standalone("sft", sft.run, str(config_file), [], str(config_file.parent / "sft-run"))
    assert result.ref == "sft-policy:v1"
    return result.metrics


def _registry(config_file: Path) -> Registry:
    """The registry every stage in this module publishes to."""
    return Registry(config_file.parent / "registry")


def _trainer(config_file: Path, run_dir: Path, overrides: list[str]) -> tuple[DPOTrainer, dict[str, float]]:
    stage_cfg, ctx = standalone_context(load_config(config_file, overrides), "policy", run_dir)
    pairs, counts = policy.preference_pairs(stage_cfg, ctx)
    return policy.build_dpo_trainer(stage_cfg, ctx, pairs), counts


@pytest.mark.slow
def test_dpo_widens_the_margin_and_beats_sft(
    config_file: Path, sft_metrics: dict[str, float], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    result = run_standalone("policy", policy.run, str(config_file), [FROM_SFT], str(run_dir))
    m = result.metrics
    # measured: margins 0 -> 1.6 (train) and 0 -> 1.3 (held-out pairs), accuracy 0.87, gold 0.35 -> 0.76
    assert m["reward_margin_last"] > m["reward_margin_first"] + 0.5, m
    assert m["eval_reward_margin_last"] > m["eval_reward_margin_first"] + 0.5, m
    assert m["eval_reward_accuracy_last"] > 0.75, m
    assert m["gold_reward"] > sft_metrics["gold_reward"] + 0.2, (m, sft_metrics)
    assert m["eos_share"] > 0.95, m  # still stops

    # lineage through the registry: the SFT version by reference, the preference data by fingerprint
    manifest = _registry(config_file).manifest(result.ref)
    assert manifest.parents == ["sft-policy:v1"]
    assert manifest.config["model"]["name"] == "registry:sft-policy:latest"
    preferences = run_dir / "data" / "preferences"
    assert {"name": "preferences", "path": str(preferences), "fingerprint": fingerprint(preferences)} in (
        manifest.datasets
    )
    assert manifest.lora_base is None and (result.output_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_dpo_with_lora_uses_the_base_with_adapters_disabled_as_reference(
    config_file: Path, sft_metrics: dict[str, float], tmp_path: Path
) -> None:
    lora = ["stages.policy.lora.r=8", "stages.policy.lora.alpha=16", "stages.policy.learning_rate=3e-3"]
    trainer, _ = _trainer(config_file, tmp_path / "probe", [FROM_SFT, *lora, *QUICK])
    assert trainer.ref_model is None  # no second copy: the reference is the SFT weights, adapters off
    trainer.train()
    sft_model, _ = load_causal_lm(
        registry_model(_registry(config_file), ModelSpec(name="registry:sft-policy:v1"))[0]
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = sft_model(**inputs).logits
        trained = trainer.model(**inputs).logits
        with trainer.model.disable_adapter():
            reference = trainer.model(**inputs).logits
    assert not torch.allclose(trained, expected, atol=1e-4)  # the adapter moved the policy ...
    assert torch.allclose(reference, expected, atol=1e-5)  # ... and disabling it gives back the SFT policy

    result = run_standalone(
        "policy", policy.run, str(config_file), [FROM_SFT, *lora, *QUICK], str(tmp_path / "run")
    )
    assert (result.output_dir / "adapter_config.json").is_file()
    assert not (result.output_dir / "model.safetensors").exists()
    manifest = _registry(config_file).manifest(result.ref)
    assert manifest.lora_base == "registry:sft-policy:v1"
    assert manifest.parents == ["sft-policy:v1"]


@pytest.mark.slow
def test_dpo_from_an_sft_adapter_retrains_it_against_a_frozen_copy(config_file: Path, tmp_path: Path) -> None:
    sft_lora = ["stages.sft.lora.r=8", "stages.sft.max_steps=10", "stages.sft.evaluation=null"]
    sft_run = run_standalone("sft", sft.run, str(config_file), sft_lora, str(tmp_path / "sft"))
    from_adapter = f"stages.policy.model=registry:{sft_run.ref}"
    trainer, _ = _trainer(config_file, tmp_path / "probe", [from_adapter, *QUICK])
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default", "ref"}

    result = run_standalone(
        "policy", policy.run, str(config_file), [from_adapter, *QUICK], str(tmp_path / "run")
    )
    assert (result.output_dir / "adapter_config.json").is_file()
    assert not (result.output_dir / "ref").exists()  # the frozen reference copy is not part of the policy


def test_full_fine_tuning_keeps_an_explicit_frozen_reference(config_file: Path, tmp_path: Path) -> None:
    per_step = "stages.policy.precompute_ref_log_probs=false"  # TRL's reference forward at every step
    trainer, _ = _trainer(config_file, tmp_path / "run", [per_step, *QUICK])
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    policy_weights = dict(trainer.model.named_parameters())
    for name, weight in trainer.ref_model.named_parameters():
        assert weight.data_ptr() != policy_weights[name].data_ptr()  # a copy, not shared storage
        assert torch.equal(weight, policy_weights[name])  # of the same starting weights


def test_precomputed_reference_gives_the_per_step_losses(config_file: Path, tmp_path: Path) -> None:
    losses = {}
    for precompute in ("true", "false"):
        overrides = [
            f"stages.policy.precompute_ref_log_probs={precompute}",
            "stages.policy.logging_steps=1",
            *QUICK,
        ]
        trainer, _ = _trainer(config_file, tmp_path / precompute, overrides)
        assert (trainer.ref_model is None) == (precompute == "true")
        trainer.train()
        losses[precompute] = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses["true"]) == 4 and len(set(losses["true"])) > 1  # a curve, not one repeated value
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)


def test_the_reference_is_precomputed_by_default_on_one_process_only() -> None:
    assert PolicyStageConfig().precomputes_reference(1)
    assert not PolicyStageConfig().precomputes_reference(2)  # TRL's cache file is rank 0's alone
    assert PolicyStageConfig(precompute_ref_log_probs=True).precomputes_reference(2)
    assert not PolicyStageConfig(precompute_ref_log_probs=False).precomputes_reference(1)


def test_loss_types_and_precomputed_reference_log_probs(config_file: Path, tmp_path: Path) -> None:
    overrides = ["stages.policy.loss_type=[sigmoid, sft]", *QUICK]  # precomputed: the default
    trainer, _ = _trainer(config_file, tmp_path / "probe", overrides)
    assert trainer.loss_types == ["sigmoid", "sft"]
    assert trainer.ref_model is None  # computed from the policy before the first step: no copy kept
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
    result = run_standalone("policy", policy.run, str(config_file), overrides, str(tmp_path / "run"))
    assert result.metrics["steps"] == 4
    assert math.isfinite(result.metrics["train_loss_last"])


def test_ties_are_dropped_and_counted(config_file: Path, tmp_path: Path) -> None:
    overrides = ["data.preferences.ties=keep", *QUICK]
    stage_cfg, ctx = standalone_context(load_config(config_file, overrides), "policy", tmp_path / "run")
    pairs, counts = policy.preference_pairs(stage_cfg, ctx)
    assert counts["ties_dropped"] > 0
    assert counts["pairs_train"] + counts["pairs_eval"] == len(pairs["train"]) + len(pairs["test"])
    assert pairs["train"].column_names == ["prompt", "chosen", "rejected"]


def test_over_length_pairs_are_counted_not_lost_silently(config_file: Path, tmp_path: Path) -> None:
    # prompts are 6 or 7 tokens and responses 2 to 8: at 7, the 7-token prompts leave no room for a response
    # (TRL drops those pairs) and every other pair has its responses cut
    overrides = ["stages.policy.max_length=7", *QUICK]
    trainer, counts = _trainer(config_file, tmp_path / "run", overrides)
    lengths = length_counts(trainer, {"train": counts["pairs_train"], "eval": counts["pairs_eval"]}, 7)
    dropped, cut = lengths["pairs_overlength_dropped_train"], lengths["pairs_truncated_train"]
    assert dropped > 0 and cut > 0, lengths
    assert dropped + cut == counts["pairs_train"]
    assert len(trainer.train_dataset) == counts["pairs_train"] - dropped


@pytest.mark.parametrize("precompute", ["true", "false"])
def test_no_pair_left_after_truncation_is_an_error(
    config_file: Path, tmp_path: Path, precompute: str
) -> None:
    overrides = ["stages.policy.max_length=6", f"stages.policy.precompute_ref_log_probs={precompute}", *QUICK]
    with pytest.raises(DataError, match="max_length=6: every training prompt fills it"):
        _trainer(config_file, tmp_path / "run", overrides)
