"""The old log-probs (and a value head's values) of a rollout, recorded while generate() samples it.

The forward pass that picked each response token already computed that token's logits and the final hidden state
before it; a separate scoring forward over the finished sequences computes them again. Recording them saves one
policy forward per rollout (0.64 of 8.06 s, 8%, of a 40M model's PPO update on 2 CPU cores). With the KV cache
they equal the scoring forward's to float rounding (1e-6 in fp32); in bf16 the cached decode's kernels differ by
more, which is why `rollout.old_logprobs: auto` records in fp32 only. The `[n]` marks are the PPO details listed
in `rlhf.ppo`'s docstring.

Written by hand because generate() offers no cheaper way: `output_logits` keeps every step's [B, V] logits (over
a 152k vocabulary, gigabytes) and `output_hidden_states` every layer's; this keeps one step's log-softmax and,
per step, the last position's final hidden state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import LogitsProcessor

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class GenerationRecorder(LogitsProcessor):
    """Each sampled token's log-prob under the policy's full softmax at `temperature` [3], and, with
    `keep_hidden`, the policy's final hidden state at the position that predicted it, over the generate() calls
    of one rollout (`rlhf.eval.generate` passes it to each batch's call, then `finish_batch`).

    As a logits processor it sees the raw next-token logits of every step (the only processors before it are
    the config's, which `rlhf.eval.generate` leaves empty) and the ids sampled so far, so it gathers the previous
    step's token as soon as it is known and keeps no more than one step's [B, V] log-softmax.
    """

    def __init__(self, temperature: float, keep_hidden: bool) -> None:
        self.temperature, self.keep_hidden = temperature, keep_hidden
        self.logprobs: list[Tensor] = []  # per sample, in order: [n] over its response tokens (EOS included)
        self.hidden: list[Tensor] = []  # per sample, with keep_hidden: [n, H]
        self._pending: Tensor | None = None  # [B, V] the last step's log-softmax, its token not yet sampled
        self._step_logprobs: list[Tensor] = []  # this batch, per step: [B]
        self._step_hidden: list[Tensor] = []  # this batch, per step: [B, H]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: [B, P + t] (step t's prompt and tokens so far), scores: [B, V] -> scores, unchanged."""
        self._gather_pending(input_ids[:, -1])
        self._pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _gather_pending(self, sampled: Tensor) -> None:
        """sampled: [B] the token drawn from the pending step's distribution."""
        if self._pending is not None:
            self._step_logprobs.append(self._pending.gather(1, sampled[:, None]).squeeze(1))
            self._pending = None

    @contextmanager
    def watching(self, model: PreTrainedModel) -> Iterator[GenerationRecorder]:
        """For the duration of one generate() on `model`: the final hidden state of each step's last position,
        read from the output of its decoder (the `base_model_prefix` module: `model.model` for Llama and Qwen,
        `transformer` for GPT-2; inside a peft wrapper, with the adapters applied)."""
        if not self.keep_hidden:
            yield self
            return
        hook = decoder_of(model).register_forward_hook(self._keep_last_hidden)
        try:
            yield self
        finally:
            hook.remove()

    def _keep_last_hidden(self, module: nn.Module, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state  # [B, s, H]
        self._step_hidden.append(hidden[:, -1].detach())

    def finish_batch(self, generated: Tensor, lengths: list[int]) -> None:
        """generated: [B, T] the tokens one generate() call sampled; lengths: each row's response length (its
        tokens up to and including EOS). Keeps each row's first `length` steps."""
        self._gather_pending(generated[:, -1])
        logprobs = torch.stack(self._step_logprobs, dim=1)  # [B, T]
        hidden = torch.stack(self._step_hidden, dim=1) if self.keep_hidden else None  # [B, T, H]
        for row, length in enumerate(lengths):
            self.logprobs.append(logprobs[row, :length])
            if hidden is not None:
                self.hidden.append(hidden[row, :length])
        self._step_logprobs, self._step_hidden = [], []


def decoder_of(model: nn.Module) -> nn.Module:
    """The causal LM's decoder stack (whose output's last_hidden_state is what `output_hidden_states[-1]` gives),
    out of a peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix)
