"""The forward passes every online algorithm takes of the policy and its reference: per-token log-probs of a
response (and the value, with a critic), the logits divided by the sampling temperature first.

The `[n]` marks are the PPO details listed in `rlhf.ppo`'s docstring; tensor shapes follow its notation.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rlhf.ppo_models import PPOModels, logits_kept

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def position_ids(attention: Tensor) -> Tensor:
    """[2] Positions counted over real tokens only, so a left-padded prompt starts at position 0.
    attention: [B, L] -> positions: [B, L]."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(
    logits: Tensor, tokens: Tensor, temperature: float, entropy_grad: bool = False
) -> tuple[Tensor, Tensor]:
    """The log-prob of each token and the entropy of each distribution, logits divided by the temperature
    first [3]. logits: [B, T, V], tokens: [B, T] -> (logprobs: [B, T], entropy: [B, T]).

    The entropy carries gradients only when asked (an entropy bonus): over a large vocabulary its graph
    would cost as much memory as the logits again, for a number that is otherwise only logged."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    source = logp if entropy_grad else logp.detach()
    entropy = -(source.exp() * source).sum(-1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1), entropy


def response_forward(model: nn.Module, ids: Tensor, attention: Tensor, context: int, temperature: float,
                     entropy_grad: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """The policy-and-value model at the response positions.

    ids, attention: [B, L] -> (logprobs: [B, T], entropy: [B, T], values: [B, T], None without a critic).
    The logits at position i
    predict token i + 1, so the response's T tokens are read from positions P - 1 ... L - 2 (`context` = P);
    the value there is that of the state before each response token. Logits are computed at those positions
    only where the model can (`logits_kept`): the prompt's would cost as much memory again.
    """
    keep = ids.shape[1] - context + 1  # positions P - 1 ... L - 1
    logits, values = model(ids, attention, position_ids(attention), keep)
    logp, entropy = token_logprobs(logits[:, -keep:-1], ids[:, context:], temperature, entropy_grad)
    return logp, entropy, None if values is None else values[:, context - 1 : -1].float()


def reference_logprobs(models: PPOModels, policy: PreTrainedModel, ids: Tensor, attention: Tensor,
                       context: int, temperature: float) -> Tensor:  # fmt: skip
    """The frozen reference's log-probs of the response tokens (with LoRA: the policy, adapters disabled).
    ids, attention: [B, L] -> ref_logprobs: [B, T]."""
    switch = policy.disable_adapter() if models.reference is None else nullcontext()
    reference = policy if models.reference is None else models.reference
    keep = ids.shape[1] - context + 1  # positions P - 1 ... L - 1, as in `response_forward`
    with switch:
        out = reference(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention),
                        **logits_kept(reference, keep))  # fmt: skip
    return token_logprobs(out.logits[:, -keep:-1], ids[:, context:], temperature)[0]
