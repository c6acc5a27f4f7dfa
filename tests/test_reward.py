"""Stage 2, the reward model: learns the synthetic preferences, publishes its reward statistics, fits every
pair to max_length itself (prompt cut from the left, responses whole, or quarantined), encoder and LoRA paths,
and the shared scoring library it is built on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhf.builtin_models import EOS, build_tokenizer
from rlhf.config import load_config
from rlhf.data.preference_dataset import load_preferences
from rlhf.data.synthetic import task_corpus
from rlhf.errors import StageError
from rlhf.launch import run_standalone
from rlhf.models import (
    export_model,
    load_causal_lm,
    load_reward_model,
    registry_model,
)
from rlhf.registry import Registry
from rlhf.rewards import (
    FittedPair,
    encode_for_scoring,
    encode_parts,
    fit_length,
    framing,
    pair_text,
    reward_stats,
    score,
)
from rlhf.settings import ModelSpec
from rlhf.stage import StageResult
from rlhf.workspace import standalone_context
from stages import reward
from tests.conftest import pipeline_config

CONFIG = """
name: reward-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 64, num_sft_eval: 16, num_preference_tasks: 1500}
stages:
  reward:
    learning_rate: 5.0e-4
    num_train_epochs: 5
    per_device_train_batch_size: 16
    max_length: 64
    logging_steps: 10
    save_steps: 1000
    num_threads: 1
tracking: none
"""

PROMPT = [{"role": "user", "content": "name three fruits"}]
# The stage scores on its training device, the tests on the CPU: they agreed to 1e-6 on a CPU and to 2e-3 on
# an H200. Statistics of the wrong responses (chosen only, the test split) were off by 0.05 or more.
DEVICE_TOLERANCE = 1e-2


def write_config(folder: Path) -> Path:
    return pipeline_config(folder, CONFIG)


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[StageResult, Path]:
    """One full reward-model run on the synthetic task, shared by the checks on what it produced."""
    folder = tmp_path_factory.mktemp("reward")
    result = run_standalone("reward", reward.run, str(write_config(folder)), [], str(folder / "run"))
    return result, folder


def _pairs_in(run_dir: Path) -> int:
    data = load_preferences(run_dir / "data" / "preferences")
    return len(data["train"]) + len(data["test"])


def _train_reward_stats(model: Any, tokenizer: Any, run_dir: Path) -> tuple[float, float]:
    """Mean and std of the training responses' scores, recomputed through the library's `score`."""
    train = load_preferences(run_dir / "data" / "preferences")["train"]
    prompts, chosen, rejected = (list(train[column]) for column in ("prompt", "chosen", "rejected"))
    return reward_stats(score(model, tokenizer, prompts * 2, chosen + rejected))


def _accounted(m: dict[str, float]) -> float:
    return m["pairs_train"] + m["pairs_test"] + m["pairs_quarantined"] + m["ties_skipped"]


@pytest.mark.slow
def test_reward_model_learns_the_synthetic_preferences(trained: tuple[StageResult, Path]) -> None:
    result, folder = trained
    m = result.metrics
    # chance is 0.5; measured 0.85-0.93 against gold and 0.82-0.87 against the majority over seeds
    assert m["accuracy_gold"] >= 0.75, m
    assert m["accuracy"] >= 0.7, m
    assert m["pairs_gold"] > 50 and m["pairs_test"] >= m["pairs_gold"]
    assert m["train_loss_last"] < 0.85 * m["train_loss_first"]
    assert m["pairs_truncated"] == m["pairs_quarantined"] == m["ties_skipped"] == 0  # all fit in 64 tokens
    assert _accounted(m) == _pairs_in(folder / "run")
    assert result.ref == "reward-model:v1"


@pytest.mark.slow
def test_reward_statistics_are_in_the_manifest_and_the_model_loads_back(
    trained: tuple[StageResult, Path],
) -> None:
    _, folder = trained
    registry = Registry(folder / "registry")
    manifest = registry.manifest("reward-model:v1")
    assert manifest.stage == "reward" and manifest.base_model == "tiny-llama"
    assert {d["name"] for d in manifest.datasets} == {"preferences"}
    spec, _ = registry_model(registry, ModelSpec(name="registry:reward-model:v1"))
    model, tokenizer = load_reward_model(spec)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id

    test = load_preferences(folder / "run" / "data" / "preferences")["test"]
    chosen = score(model, tokenizer, list(test["prompt"]), list(test["chosen"]))
    rejected = score(model, tokenizer, list(test["prompt"]), list(test["rejected"]))
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(test) >= 0.7
    # the stored statistics are those of the training responses, scored the way the library scores
    mean, std = _train_reward_stats(model, tokenizer, folder / "run")
    assert manifest.metrics["reward_mean"] == pytest.approx(mean, abs=DEVICE_TOLERANCE)
    assert manifest.metrics["reward_std"] == pytest.approx(std, abs=DEVICE_TOLERANCE) and std > 0


@pytest.mark.slow
def test_long_pairs_are_truncated_or_quarantined_and_counted(config_file: Path, tmp_path: Path) -> None:
    # 6 tokens: every prompt is cut; a pair with a response of 6 or more words cannot fit at all
    overrides = ["stages.reward.max_length=6", "stages.reward.max_steps=2", "data.preferences.ties=keep"]
    run_dir = tmp_path / "run"
    m = run_standalone("reward", reward.run, str(config_file), overrides, str(run_dir)).metrics
    assert m["pairs_truncated"] > 0 and m["pairs_quarantined"] > 0 and m["ties_skipped"] > 0
    assert m["pairs_truncated"] == m["pairs_train"] + m["pairs_test"]
    assert _accounted(m) == _pairs_in(run_dir)  # pairs in = used + quarantined + ties skipped
    lines = (run_dir / "reward" / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == m["pairs_quarantined"]
    assert all(e["reason"].startswith("response over max_length 6") and e["source_row"] for e in entries)


def test_the_trainer_gets_every_fitted_pair_and_a_silent_drop_is_caught(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(config_file, ["stages.reward.max_length=8"])
    stage_cfg, ctx = standalone_context(cfg, "reward", tmp_path / "run")
    trainer, splits = reward.build_trainer(stage_cfg, ctx)
    assert len(trainer.train_dataset) == len(splits["train"].chosen_ids) > 0
    assert max(map(len, trainer.train_dataset["rejected_ids"])) <= 8 and splits["train"].truncated > 0

    # Handed whole over-long pairs, TRL drops them without a word; the stage refuses to train on what is left.
    def unfitted(tokenizer: Any, prompt: Any, chosen: Any, rejected: Any, *_: object) -> FittedPair:
        return FittedPair(*encode_for_scoring(tokenizer, [prompt] * 2, [chosen, rejected]), 0)

    monkeypatch.setattr(reward, "fit_length", unfitted)
    with pytest.raises(StageError, match=r"the trainer kept \d+ of \d+ train pairs"):
        reward.build_trainer(stage_cfg, ctx)


def test_fit_length_cuts_the_prompt_from_the_left_and_keeps_responses_whole(tiny_llama_dir: Path) -> None:
    _, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    prompt_ids, chosen_ids = encode_parts(tokenizer, PROMPT, "apple pear")
    rejected_ids = encode_parts(tokenizer, PROMPT, "cat dog horse")[1]
    assert tokenizer.convert_ids_to_tokens(chosen_ids) == ["apple", "pear", EOS]

    whole = fit_length(tokenizer, PROMPT, "apple pear", "cat dog horse", 64)
    assert whole.prompt_tokens_cut == 0 and whole.reason is None
    assert whole.chosen_ids == prompt_ids + chosen_ids
    assert tokenizer.decode(whole.chosen_ids) == pair_text(tokenizer, PROMPT, "apple pear").strip()

    fitted = fit_length(tokenizer, PROMPT, "apple pear", "cat dog horse", 7)
    assert fitted.prompt_tokens_cut == len(prompt_ids) + len(rejected_ids) - 7
    kept = prompt_ids[fitted.prompt_tokens_cut :]
    assert fitted.chosen_ids == kept + chosen_ids and fitted.rejected_ids == kept + rejected_ids
    assert len(fitted.rejected_ids) == 7

    too_long = fit_length(tokenizer, PROMPT, "apple pear", "cat dog horse", 3)
    assert (
        too_long.reason == "response over max_length 3: chosen 3 tokens, rejected 4 tokens, 0 special tokens"
    )
    strict = fit_length(tokenizer, PROMPT, "apple pear", "cat dog horse", 7, policy="quarantine")
    assert strict.reason is not None and "length_policy=quarantine" in strict.reason


def test_encoder_text_is_a_plain_join_framed_by_its_special_tokens() -> None:
    tokenizer = build_tokenizer(task_corpus(), encoder=True)
    assert tokenizer.chat_template is None
    assert pair_text(tokenizer, PROMPT, "apple pear") == "user: name three fruits\n\nassistant: apple pear"
    frame = framing(tokenizer)
    assert frame.prefix == (tokenizer.cls_token_id,) and frame.suffix == (tokenizer.sep_token_id,)
    fitted = fit_length(tokenizer, PROMPT, "apple pear", "cat dog horse", 6, frame=frame)
    tokens = tokenizer.convert_ids_to_tokens(fitted.rejected_ids)
    assert tokens == [tokenizer.cls_token, ":", "cat", "dog", "horse", tokenizer.sep_token]
    assert tokenizer.unk_token_id not in fitted.chosen_ids


def test_batched_scores_equal_one_at_a_time(tiny_llama_dir: Path) -> None:
    """Right padding must not move the score: the head reads the last non-pad token."""
    model, tokenizer = load_reward_model(ModelSpec(name=str(tiny_llama_dir)))
    responses = ["apple", "apple pear cherry grape", "cat", "red blue"]
    batched = score(model, tokenizer, [PROMPT] * 4, responses, batch_size=4)
    single = [score(model, tokenizer, [PROMPT], [r])[0] for r in responses]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(batched)) == 4


def test_a_lora_policy_is_merged_before_it_becomes_a_reward_model(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from peft import get_peft_model

    from rlhf.models import lora_config
    from rlhf.settings import LoraSpec

    policy, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    adapter = get_peft_model(policy, lora_config(LoraSpec(r=4)))
    adapter.save_pretrained(tmp_path / "sft-lora")
    tokenizer.save_pretrained(tmp_path / "sft-lora")
    model, _ = load_reward_model(ModelSpec(name=str(tmp_path / "sft-lora"), base=str(tiny_llama_dir)))
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not any("lora_" in name for name, _ in model.named_parameters())


@pytest.mark.slow
def test_encoder_reward_model_trains_and_publishes(config_file: Path, tmp_path: Path) -> None:
    overrides = ["stages.reward.model=tiny-bert", "stages.reward.learning_rate=1e-3",
                 "stages.reward.per_device_train_batch_size=32", "stages.reward.max_steps=200"]  # fmt: skip
    result = run_standalone("reward", reward.run, str(config_file), overrides, str(tmp_path / "run"))
    m = result.metrics
    # a random-init encoder learns the training pairs first (measured: loss 0.69 -> 0.48-0.53, training
    # accuracy 0.66-0.76 over seeds) and generalizes later (held-out gold accuracy 0.76 after 10 epochs)
    assert m["train_loss_last"] < 0.85 * m["train_loss_first"], m
    assert m["train_accuracy"] > 0.6, m
    assert m["pairs_truncated"] == m["pairs_quarantined"] == 0
    assert result.ref == "reward-model:v1"
    model, tokenizer = load_reward_model(ModelSpec(name=str(result.output_dir)))
    assert model.config.model_type == "bert" and tokenizer.chat_template is None


@pytest.mark.slow
def test_lora_reward_model_publishes_an_adapter_on_its_base(config_file: Path, tmp_path: Path) -> None:
    overrides = ["stages.reward.lora.r=8", "stages.reward.learning_rate=3e-3", "stages.reward.max_steps=20"]
    result = run_standalone("reward", reward.run, str(config_file), overrides, str(tmp_path / "run"))
    assert (result.output_dir / "adapter_config.json").is_file()
    assert not (result.output_dir / "model.safetensors").exists()
    registry = Registry(tmp_path / "registry")
    assert registry.manifest(result.ref).lora_base == "registry:tiny-llama:v1"
    spec, _ = registry_model(registry, ModelSpec(name=f"registry:{result.ref}"))
    model, tokenizer = load_reward_model(spec)
    assert any("lora_" in name for name, _ in model.named_parameters())
    # adapter and trained head load back exactly: the training responses score as the stage measured them
    stats = _train_reward_stats(model, tokenizer, tmp_path / "run")
    expected = (result.metrics["reward_mean"], result.metrics["reward_std"])
    assert stats == pytest.approx(expected, abs=DEVICE_TOLERANCE)
    # merged for export, it is an ordinary reward model that scores the same
    merged, _ = load_reward_model(ModelSpec(name=str(export_model(spec, tmp_path / "x", merge_lora=True))))
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    responses = ["apple pear cherry", "cat red", "gold"]
    assert score(merged, tokenizer, [PROMPT] * 3, responses) == pytest.approx(
        score(model, tokenizer, [PROMPT] * 3, responses), abs=1e-5
    )
