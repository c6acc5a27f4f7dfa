"""Reward-model scoring, shared by the reward stage, evaluation and PPO: how a prompt and a response become
the text and tokens a reward model reads, how over-long pairs are fitted, and batched scoring.

One encoding path for training and scoring, so a reward model is always asked the question it was trained
on. The text is the tokenizer's chat template where it has one (the policy's format; no extra special
tokens, the template carries them), else a plain `role: content` join wrapped in the tokenizer's own special
tokens (an encoder's [CLS] ... [SEP]). Length is fitted on token ids, never by TRL: the prompt is cut from
the left, so the responses and the end of the prompt they answer stay whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean, pstdev
from typing import TYPE_CHECKING, Literal

from rlhf.builtin_models import PLAIN_TURN, PLAIN_TURN_SEPARATOR
from rlhf.models import inference, right_padded

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]
Response = str | Messages  # a text, or messages whose last one is the assistant's reply
LengthPolicy = Literal["truncate_prompt", "quarantine"]


def _response_messages(response: Response) -> Messages:
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else response


def text_parts(tokenizer: PreTrainedTokenizerBase, prompt: Messages, response: Response) -> tuple[str, str]:
    """The scored text split into (prompt part, response part); their concatenation is `pair_text`.

    With a chat template the split is where the templated conversation stops agreeing with the templated
    prompt plus generation marker, so the response part holds whatever the template puts around the reply.
    """
    messages = _response_messages(response)
    if tokenizer.chat_template:
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(prompt + messages, tokenize=False)
        cut = len(os.path.commonprefix([head, whole]))  # noqa: RUF071 - strings, character by character
        return whole[:cut], whole[cut:]
    turns = [PLAIN_TURN.format(**message) for message in prompt]
    head = PLAIN_TURN_SEPARATOR.join([*turns, PLAIN_TURN.format(role="assistant", content="")])
    return head, messages[-1]["content"]


def pair_text(tokenizer: PreTrainedTokenizerBase, prompt: Messages, response: Response) -> str:
    """The text a reward model scores for one prompt and response."""
    return "".join(text_parts(tokenizer, prompt, response))


@dataclass(frozen=True)
class Framing:
    """The special tokens a tokenizer adds around one text (none where a chat template carries them)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def wrap(self, ids: Sequence[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]


def framing(tokenizer: PreTrainedTokenizerBase) -> Framing:
    """Found by encoding a probe with and without special tokens: works for any post-processor."""
    if tokenizer.chat_template:
        return Framing((), ())
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
    return Framing(tuple(full[:start]), tuple(full[start + len(bare) :]))


def encode_parts(
    tokenizer: PreTrainedTokenizerBase, prompt: Messages, response: Response
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), without the framing special tokens."""
    head, tail = text_parts(tokenizer, prompt, response)
    return (
        tokenizer(head, add_special_tokens=False)["input_ids"],
        tokenizer(tail, add_special_tokens=False)["input_ids"],
    )


@dataclass(frozen=True)
class FittedPair:
    """A preference pair as token ids within `max_length`, or the reason it cannot be (quarantine it)."""

    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_tokens_cut: int  # tokens dropped from the left of the prompt; 0 when the pair fit whole
    reason: str | None = None


def fit_length(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Messages,
    chosen: Response,
    rejected: Response,
    max_length: int,
    policy: LengthPolicy = "truncate_prompt",
    frame: Framing | None = None,
) -> FittedPair:
    """Both sequences of a pair within `max_length` tokens, the same prompt cut for both.

    `truncate_prompt` drops prompt tokens from the left until the longer side fits, keeping both responses
    whole; a pair whose response alone (with the framing tokens) exceeds `max_length` gets a reason instead.
    `quarantine` gives every over-long pair a reason. Pass `frame` when fitting many pairs (it is probed).
    """
    frame = frame or framing(tokenizer)
    prompt_ids, chosen_ids = encode_parts(tokenizer, prompt, chosen)
    rejected_ids = encode_parts(tokenizer, prompt, rejected)[1]
    longest = max(len(chosen_ids), len(rejected_ids)) + frame.size
    cut = max(0, len(prompt_ids) + longest - max_length)
    reason = None
    if longest > max_length:
        reason = (
            f"response over max_length {max_length}: chosen {len(chosen_ids)} tokens, rejected "
            f"{len(rejected_ids)} tokens, {frame.size} special tokens"
        )
    elif cut and policy == "quarantine":
        reason = f"pair over max_length {max_length}: {len(prompt_ids) + longest} tokens (length_policy=quarantine)"
    if reason:
        return FittedPair([], [], cut, reason)
    kept = prompt_ids[cut:]
    return FittedPair(frame.wrap(kept + chosen_ids), frame.wrap(kept + rejected_ids), cut)


def encode_for_scoring(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    responses: Sequence[Response],
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each prompt + response, framed; over `max_length`, cut from the left (prompt first)."""
    frame = framing(tokenizer)
    budget = None if max_length is None else max_length - frame.size
    sequences = []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_ids, response_ids = encode_parts(tokenizer, prompt, response)
        ids = prompt_ids + response_ids
        sequences.append(frame.wrap(ids if budget is None else ids[max(0, len(ids) - budget) :]))
    return sequences


def score_ids(
    model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 64
) -> list[float]:
    """The reward of each token sequence: batched, right-padded, no grad, eval mode (dropout off).

    The model's head picks the position (a decoder's last non-pad token, an encoder's first), so this works
    for both kinds as long as the model's pad id is `pad_token_id`.
    """
    scores: list[float] = []
    with inference(model):
        for start in range(0, len(sequences), batch_size):
            ids, mask = right_padded(sequences[start : start + batch_size], pad_token_id, model.device)
            scores.extend(model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
    return scores


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    responses: Sequence[Response],
    batch_size: int = 64,
    max_length: int | None = None,
) -> list[float]:
    """The reward model's score of each (prompt, response), encoded as in training."""
    sequences = encode_for_scoring(tokenizer, prompts, responses, max_length)
    return score_ids(model, sequences, tokenizer.pad_token_id, batch_size)


def reward_stats(scores: Sequence[float]) -> tuple[float, float]:
    """(mean, standard deviation) of scores: what later stages need to normalize rewards to mean 0, std 1."""
    return fmean(scores), pstdev(scores)


def gold(prompts: Sequence[Messages], completions: Sequence[str], **fields: object) -> list[float]:
    """The built-in synthetic task's programmatic reward as a verifiable reward for the online algorithms
    (`rewards: [{function: rlhf.rewards:gold}]`): an upper bound that needs no reward model. Its value is the
    evaluation's gold reward of each completion (`rlhf.data.synthetic.gold_reward`)."""
    from rlhf.data.synthetic import gold_reward
    from rlhf.eval import last_user_text

    return [
        gold_reward(last_user_text(prompt), completion)
        for prompt, completion in zip(prompts, completions, strict=True)
    ]
