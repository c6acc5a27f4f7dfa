"""Evaluation: sample a policy on held-out prompts and score the samples.

Sampling uses the policy's own distribution (temperature 1 by default), not greedy decoding: alignment
changes which answers a policy *samples*, and greedy decoding of a model trained on imperfect
demonstrations can look better than the policy really is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING

from rlhf.config import GenerationSpec, ModelSpec
from rlhf.data import synthetic
from rlhf.data.files import iter_jsonl
from rlhf.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]

# Tasks whose correct answers a program can score, by the name a StageContext carries.
GOLD_REWARDS: dict[str, Callable[[str, str], float]] = {"synthetic": synthetic.gold_reward}


@dataclass(frozen=True)
class Sample:
    prompt: Messages
    response: str
    ended_with_eos: bool
    num_tokens: int


def load_prompts(path: str | Path) -> list[Messages]:
    """Prompts from JSONL rows `{"prompt": [messages]}` or `{"prompt": "text"}`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    prompts: list[Messages] = []
    for number, row in iter_jsonl(path):
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            prompts.append([{"role": "user", "content": prompt}])
        elif isinstance(prompt, list) and prompt:
            prompts.append(prompt)
        else:
            raise DataError(f"{path}:{number}: expected key 'prompt' with text or a list of messages")
    return prompts


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    spec: GenerationSpec,
    seed: int = 0,
) -> list[Sample]:
    """Sample `spec.samples_per_prompt` responses per prompt, batched and left-padded; cut at the first EOS."""
    import torch

    prompts = [p for p in prompts for _ in range(spec.samples_per_prompt)]
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    samples: list[Sample] = []
    try:
        for start in range(0, len(prompts), spec.batch_size):
            batch = prompts[start : start + spec.batch_size]
            texts = [
                tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=spec.temperature,
                    top_p=spec.top_p,
                    top_k=spec.top_k,
                    max_new_tokens=spec.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            for prompt, row in zip(batch, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
                ended = eos in row
                tokens = row[: row.index(eos)] if ended else row
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                samples.append(Sample(prompt, text, ended, len(tokens)))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return samples


def gold_scores(task: str, samples: Sequence[Sample]) -> list[float]:
    """The task's programmatic reward of each sample (prompt = the last user message)."""
    reward = GOLD_REWARDS[task]
    return [reward(_last_user_text(s.prompt), s.response) for s in samples]


def summarize(samples: Sequence[Sample], task: str | None) -> dict[str, float]:
    """Headline numbers of a set of samples: gold reward (where known), EOS share, length."""
    metrics = {
        "eos_share": fmean(s.ended_with_eos for s in samples),
        "response_tokens": fmean(s.num_tokens for s in samples),
    }
    if task in GOLD_REWARDS:
        metrics["gold_reward"] = fmean(gold_scores(task, samples))
    return metrics


def _last_user_text(prompt: Messages) -> str:
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def evaluate_model(
    spec: ModelSpec, prompts_path: str, gen: GenerationSpec, task: str | None, seed: int
) -> dict[str, float]:
    """Load a model, sample it on the prompts file, and summarize (e.g. the untrained base, as a baseline)."""
    from rlhf.models import load_causal_lm

    model, tokenizer = load_causal_lm(spec)
    return summarize(generate(model, tokenizer, load_prompts(prompts_path), gen, seed), task)
