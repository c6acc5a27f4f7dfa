"""Evaluation: log-probs of sampled responses, the KL estimate, win rates, and policy-vs-reference runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf import eval as eval_module
from rlhf.config import TrackingConfig
from rlhf.eval import (
    evaluate_and_record,
    evaluate_policy,
    generate,
    load_prompts,
    response_logprobs,
    win_rate,
)
from rlhf.models import load_causal_lm
from rlhf.registry import Registry
from rlhf.settings import GenerationSpec, ModelSpec
from rlhf.tracking import read_offline_run
from tests.conftest import pipeline_config

GEN = GenerationSpec(max_new_tokens=8, samples_per_prompt=2)


@pytest.mark.parametrize("budget", [eval_module.LOGIT_BUDGET, 1])  # a budget of 1: one row a pass
def test_response_logprobs_match_a_direct_computation(
    tiny_llama_dir: Path, small_task: dict[str, Path], budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    samples = generate(model, tokenizer, load_prompts(small_task["eval_prompts"])[:3], GEN, seed=1)
    monkeypatch.setattr(eval_module, "LOGIT_BUDGET", budget)
    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    batched = response_logprobs(model, samples, temperature=0.7)
    assert len(passes) == (len(samples) if budget == 1 else 1)
    for sample, value in zip(samples, batched, strict=True):
        ids = torch.tensor([sample.prompt_ids + sample.response_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1] / 0.7, -1)
        start = len(sample.prompt_ids)
        expected = sum(logp[i - 1, ids[0, i]].item() for i in range(start, ids.shape[1]))
        assert value == pytest.approx(expected, abs=1e-4)
        assert len(sample.response_ids) == sample.num_tokens + sample.ended_with_eos


def test_win_rate_counts_ties_half() -> None:
    assert win_rate([1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_a_model_against_itself_has_zero_kl_and_even_odds(
    tiny_llama_dir: Path, small_task: dict[str, Path]
) -> None:
    spec = ModelSpec(name=str(tiny_llama_dir))
    prompts = load_prompts(small_task["eval_prompts"])[:4]
    evaluation = evaluate_policy(spec, spec, prompts, GEN, "synthetic", seed=3)
    assert evaluation.metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert evaluation.metrics["gold_win_rate"] == pytest.approx(0.5)  # same seed, same samples
    assert evaluation.columns == ["prompt", "policy", "reference", "policy_gold", "reference_gold"]
    assert len(evaluation.rows) == 8


@pytest.mark.slow
def test_evaluation_is_recorded_in_the_registry_and_wandb(
    tiny_llama_dir: Path, small_task: dict[str, Path], tmp_path: Path
) -> None:
    from rlhf.launch import run_standalone
    from stages import sft

    config = pipeline_config(
        tmp_path,
        "model: tiny-llama\ndata:\n  synthetic: {num_sft_train: 1500, num_preference_tasks: 10}\n"
        "stages:\n  sft: {learning_rate: 3.0e-3, per_device_train_batch_size: 32, num_threads: 1, evaluation: null}\n"
        "tracking: none\n",
    )
    run_standalone("sft", sft.run, str(config), [], str(tmp_path / "run"))
    registry = Registry(tmp_path / "registry")
    evaluation = evaluate_and_record(
        registry, "registry:sft-policy:latest", str(tiny_llama_dir), small_task["eval_prompts"], GEN,
        "synthetic", TrackingConfig(project="eval-test"), tmp_path / "eval", seed=0,
    )  # fmt: skip
    assert evaluation.metrics["kl"] > 0.1  # SFT moved away from the random base
    assert evaluation.metrics["gold_win_rate"] > 0.5
    recorded = registry.manifest("sft-policy:v1").extra["evaluation"]
    assert recorded["metrics"]["kl"] == pytest.approx(evaluation.metrics["kl"])
    assert recorded["models"]["policy"] == "sft-policy:v1"
    assert registry.verify("sft-policy:v1") == []  # the record kept manifest and index in step
    (run_file,) = (tmp_path / "eval" / "wandb").glob("offline-run-*/run-*.wandb")
    wandb_run = read_offline_run(run_file)
    assert wandb_run["job_type"] == "eval" and wandb_run["summary"]["kl"] == pytest.approx(
        evaluation.metrics["kl"]
    )
    assert "samples" in wandb_run["summary"]  # the wandb Table of generations
