"""Evaluation: sample a policy on held-out prompts and score the samples.

Sampling uses the policy's own distribution (temperature 1 by default), not greedy decoding: alignment
changes which answers a policy *samples*, and greedy decoding of a model trained on imperfect
demonstrations can look better than the policy really is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from rlhf.config import TrackingConfig
from rlhf.data import synthetic
from rlhf.data.files import fingerprint, iter_jsonl
from rlhf.errors import DataError
from rlhf.models import inference, load_causal_lm, load_reward_model, registry_model, right_padded
from rlhf.precision import evaluation_dtype
from rlhf.registry import Registry, is_reference
from rlhf.rewards import score
from rlhf.settings import GenerationSpec, ModelSpec
from rlhf.tracking import Tracker

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlhf.generation_record import GenerationRecorder

Messages = list[dict[str, str]]

# Tasks whose correct answers a program can score, by the name a StageContext carries.
GOLD_REWARDS: dict[str, Callable[[str, str], float]] = {"synthetic": synthetic.gold_reward}


@dataclass(frozen=True)
class Sample:
    prompt: Messages
    response: str
    ended_with_eos: bool
    num_tokens: int  # response tokens before EOS
    prompt_ids: tuple[int, ...] = ()  # exactly what the model saw and produced, for log-probs later
    response_ids: tuple[int, ...] = ()  # including the EOS when it ended with one


@dataclass(frozen=True)
class PromptRow:
    """A prompt and the other fields of its row (e.g. a reference answer), which reward functions read."""

    messages: Messages
    fields: dict[str, Any]


def load_prompt_rows(path: str | Path) -> list[PromptRow]:
    """Prompts from JSONL rows `{"prompt": [messages], ...}` or `{"prompt": "text", ...}`, other keys kept."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    rows: list[PromptRow] = []
    for number, row in iter_jsonl(path):
        prompt = row.pop("prompt", None)
        if isinstance(prompt, str):
            rows.append(PromptRow([{"role": "user", "content": prompt}], row))
        elif isinstance(prompt, list) and prompt:
            rows.append(PromptRow(prompt, row))
        else:
            raise DataError(f"{path}:{number}: expected key 'prompt' with text or a list of messages")
    return rows


def load_prompts(path: str | Path) -> list[Messages]:
    """The prompts of `load_prompt_rows`, without their other fields."""
    return [row.messages for row in load_prompt_rows(path)]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    spec: GenerationSpec,
    seed: int | None = 0,
    recorder: GenerationRecorder | None = None,
) -> list[Sample]:
    """Sample `spec.samples_per_prompt` responses per prompt, batched and left-padded; cut at the first EOS.

    `seed` reseeds torch first (evaluations compare models on the same draws); None continues the caller's
    random stream (PPO rollouts, whose RNG state is checkpointed). A `recorder` keeps each sample's token
    log-probs (and hidden states) as the sampling forward computed them (PPO's old log-probs).
    """
    import torch

    prompts = [p for p in prompts for _ in range(spec.samples_per_prompt)]
    if seed is not None:
        torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with inference(model):
            return [
                sample
                for start in range(0, len(prompts), spec.batch_size)
                for sample in _sample_batch(
                    model, tokenizer, prompts[start : start + spec.batch_size], spec, recorder
                )
            ]
    finally:
        tokenizer.padding_side = side


def _sample_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Messages],
    spec: GenerationSpec,
    recorder: GenerationRecorder | None,
) -> list[Sample]:
    """One batch of prompts sampled; each response cut at its first EOS, its token ids kept for log-probs."""
    from transformers import GenerationConfig, LogitsProcessorList

    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    # the sampling is the spec's alone: generate() fills every setting left unset from the checkpoint's
    # generation_config.json (suppressed tokens, repetition penalties, ...), so a neutral one stands in for it
    checkpoints_own = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    try:
        with recorder.watching(model) if recorder else nullcontext():
            out = model.generate(**enc, do_sample=True, temperature=spec.temperature, top_p=spec.top_p,
                                 top_k=spec.top_k, max_new_tokens=spec.max_new_tokens,
                                 logits_processor=LogitsProcessorList([recorder] if recorder else []))  # fmt: skip
    finally:
        model.generation_config = checkpoints_own
    width = enc["input_ids"].shape[1]
    rows = zip(
        batch, enc["input_ids"].tolist(), enc["attention_mask"].tolist(), out[:, width:].tolist(), strict=True
    )
    samples = [
        sample_from_tokens(tokenizer, prompt, [t for t, keep in zip(ids, mask, strict=True) if keep], row)
        for prompt, ids, mask, row in rows
    ]
    if recorder:
        recorder.finish_batch(out[:, width:], [len(s.response_ids) for s in samples])
    return samples


def sample_from_tokens(
    tokenizer: PreTrainedTokenizerBase, prompt: Messages, prompt_ids: Sequence[int], generated: Sequence[int]
) -> Sample:
    """A sample from what an engine generated: cut at the first EOS (kept as the last response token), the
    text decoded without special tokens. Every rollout engine builds its samples here, so they agree."""
    eos = tokenizer.eos_token_id
    generated = list(generated)
    ended = eos in generated
    tokens = generated[: generated.index(eos)] if ended else generated
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    response_ids = (*tokens, eos) if ended else tuple(tokens)
    return Sample(prompt, text, ended, len(tokens), tuple(prompt_ids), response_ids)


# Logit values alive in one scoring pass (1 GiB in fp32, twice that with the log-softmax): 64 sequences of 300
# tokens over Qwen's 151,936-token vocabulary would be 11.7 GB at once, so a pass scores as many rows as fit.
LOGIT_BUDGET = 2**28


def response_logprobs(
    model: PreTrainedModel, samples: Sequence[Sample], temperature: float = 1.0, batch_size: int = 64
) -> list[float]:
    """log p(response | prompt) of each sample under `model`: the sum over its response tokens, with logits
    divided by the sampling temperature (as when sampling). Batched (at most `batch_size` rows, and no more
    than LOGIT_BUDGET logits, a pass), right-padded, masked, no token loops."""
    import torch

    pad = model.config.pad_token_id or 0
    longest = max((len(s.prompt_ids) + len(s.response_ids) for s in samples), default=1)
    rows = max(1, min(batch_size, LOGIT_BUDGET // (longest * model.config.vocab_size)))
    totals: list[float] = []
    with inference(model):
        for start in range(0, len(samples), rows):
            batch = samples[start : start + rows]
            ids, mask = right_padded([s.prompt_ids + s.response_ids for s in batch], pad, model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / temperature
            logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            # position j predicts token j + 1: response tokens are those at index >= prompt length
            starts = torch.tensor([len(s.prompt_ids) for s in batch], device=model.device)
            target = torch.arange(1, ids.shape[1], device=model.device)[None, :]
            in_response = (target >= starts[:, None]) & (target < mask.sum(-1, keepdim=True))
            totals.extend((logp * in_response).sum(-1).tolist())
    return totals


def gold_scores(task: str, samples: Sequence[Sample]) -> list[float]:
    """The task's programmatic reward of each sample (prompt = the last user message)."""
    reward = GOLD_REWARDS[task]
    return [reward(last_user_text(s.prompt), s.response) for s in samples]


def summarize(samples: Sequence[Sample], task: str | None) -> dict[str, float]:
    """Headline numbers of a set of samples: gold reward (where known), EOS share, length."""
    metrics = {
        "eos_share": fmean(s.ended_with_eos for s in samples),
        "response_tokens": fmean(s.num_tokens for s in samples),
    }
    if task in GOLD_REWARDS:
        metrics["gold_reward"] = fmean(gold_scores(task, samples))
    return metrics


def last_user_text(prompt: Messages) -> str:
    """The text of the last user turn: what a task's gold reward scores against."""
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def on_evaluation_device(model: PreTrainedModel) -> PreTrainedModel:
    """The GPU when there is one: the closing evaluation runs in the pipeline's own process, and sampling an
    8B policy on its CPU would take hours. (Every tensor the evaluation makes goes to `model.device`.)"""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def evaluate_model(
    spec: ModelSpec, prompts_path: str, gen: GenerationSpec, task: str | None, seed: int
) -> dict[str, float]:
    """Load a model, sample it on the prompts file, and summarize (e.g. the untrained base, as a baseline)."""
    with evaluation_model(spec) as (model, tokenizer):
        return summarize(generate(model, tokenizer, load_prompts(prompts_path), gen, seed), task)


@contextmanager
def evaluation_model(
    spec: ModelSpec, reward_model: bool = False
) -> Iterator[tuple[PreTrainedModel, PreTrainedTokenizerBase]]:
    """One model of the closing evaluation, in the evaluation's precision on its device, for the block; freed
    after it. The evaluation holds one model at a time, so any model a stage can train can be evaluated
    (three 8B models at once would not fit one 80 GB GPU; one in bf16 takes 16 GB)."""
    import gc

    import torch

    model, tokenizer = (load_reward_model if reward_model else load_causal_lm)(spec, evaluation_dtype())
    try:
        yield on_evaluation_device(model), tokenizer
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class PolicyEvaluation:
    """A policy against a reference on the same prompts: headline metrics and a table of samples."""

    metrics: dict[str, float]
    columns: list[str]
    rows: list[list[object]]


def evaluate_policy(
    policy: ModelSpec,
    reference: ModelSpec,
    prompts: Sequence[Messages],
    gen: GenerationSpec,
    task: str | None,
    seed: int = 0,
    judge: ModelSpec | None = None,
    table_rows: int = 32,
) -> PolicyEvaluation:
    """Sample policy and reference on the same prompts (same seed); score both.

    Metrics: gold reward and win rate where the task has one; reward-model score and win rate with a judge;
    KL(policy || reference) estimated on the policy's own samples as the mean of log p - log p_ref (k1,
    unbiased); EOS share and response length of each. One model is loaded at a time (`evaluation_model`).
    """
    with evaluation_model(policy) as (model, tokenizer):
        ours = generate(model, tokenizer, prompts, gen, seed)
        mine = response_logprobs(model, ours, gen.temperature, gen.batch_size)
    with evaluation_model(reference) as (model, reference_tokenizer):
        theirs = generate(model, reference_tokenizer, prompts, gen, seed)
        one_token_space = tokenizer.get_vocab() == reference_tokenizer.get_vocab()  # KL needs one
        base = response_logprobs(model, ours, gen.temperature, gen.batch_size) if one_token_space else None
    metrics = {f"policy_{k}": v for k, v in summarize(ours, task).items()}
    metrics |= {f"reference_{k}": v for k, v in summarize(theirs, task).items()}
    if base is not None:
        metrics["kl"] = fmean(a - b for a, b in zip(mine, base, strict=True))
    columns = ["prompt", "policy", "reference"]
    scores: list[tuple[list[float], list[float]]] = []
    if task in GOLD_REWARDS:
        scores.append((gold_scores(task, ours), gold_scores(task, theirs)))
        metrics["gold_win_rate"] = win_rate(*scores[-1])
        columns += ["policy_gold", "reference_gold"]
    if judge is not None:
        with evaluation_model(judge, reward_model=True) as (model, judge_tokenizer):
            scores.append(tuple(score(model, judge_tokenizer, [s.prompt for s in side],
                                      [s.response for s in side]) for side in (ours, theirs)))  # type: ignore[arg-type]  # fmt: skip
        metrics |= {"policy_rm_score": fmean(scores[-1][0]), "reference_rm_score": fmean(scores[-1][1]),
                    "rm_win_rate": win_rate(*scores[-1])}  # fmt: skip
        columns += ["policy_rm", "reference_rm"]
    rows = [
        [
            last_user_text(a.prompt),
            a.response,
            b.response,
            *(x for pair in scores for x in (pair[0][i], pair[1][i])),
        ]
        for i, (a, b) in enumerate(zip(ours[:table_rows], theirs[:table_rows], strict=True))
    ]
    return PolicyEvaluation(metrics, columns, rows)


def win_rate(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Share of paired samples where ours scores higher; a tie counts half."""
    return fmean(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs, strict=True))


def evaluate_and_record(
    registry: Registry,
    policy: str,
    reference: str,
    prompts_path: str | Path,
    gen: GenerationSpec,
    task: str | None,
    tracking: TrackingConfig,
    run_dir: Path,
    seed: int = 0,
    judge: str | None = None,
) -> PolicyEvaluation:
    """`evaluate_policy` on models named by registry reference (or directory), with the results recorded in
    the policy's registry manifest and in a wandb run (job_type "eval") with a table of the samples."""
    specs = {role: _loadable(registry, name) for role, name in (("policy", policy), ("reference", reference),
                                                               ("judge", judge)) if name}  # fmt: skip
    evaluation = evaluate_policy(specs["policy"][0], specs["reference"][0], load_prompts(prompts_path), gen, task,
                                 seed, specs["judge"][0] if judge else None)  # fmt: skip
    record = {
        "models": {role: ref or spec.name for role, (spec, ref) in specs.items()},
        "prompts": {"path": str(prompts_path), "fingerprint": fingerprint(prompts_path)},
        "generation": gen.model_dump(mode="json"),
        "seed": seed,
        "metrics": evaluation.metrics,
    }
    with Tracker(tracking, group=run_dir.name, job_type="eval", name=f"{run_dir.name}-eval", config=record,
                 run_dir=run_dir) as tracker:  # fmt: skip
        tracker.use_models([ref for _, ref in specs.values() if ref])
        tracker.log_table("samples", evaluation.columns, evaluation.rows)
        tracker.summary(evaluation.metrics)
    if specs["policy"][1]:
        registry.record(specs["policy"][1], "evaluation", record)
    return evaluation


def _loadable(registry: Registry, name: str) -> tuple[ModelSpec, str | None]:
    """A model named by registry reference (resolved, with its concrete version) or by directory / hub id."""
    if is_reference(name):
        spec, manifest = registry_model(registry, ModelSpec(name=name))
        return spec, manifest.ref
    return ModelSpec(name=name), None
