"""The critic-free algorithms' arithmetic as small pure functions: advantages from scores alone (no value
model), the KL as a reward term or a loss term, and how per-token losses are averaged.

Which paper each formula follows:

- GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3 and sec. 4.1.2): each response's advantage is its score
  minus its group's mean, over the group's std, on every one of its tokens; the KL to the reference is a loss
  term with the k3 estimator; the loss is averaged over each response's tokens, then over responses.
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", sec. 3.2): the same without the std
  division and without the per-response length normalization (each response's token sum over a constant,
  the maximum response length).
- RLOO (Ahmadian et al. 2024, "Back to Basics", sec. 3.3; Kool et al. 2019): the sequence reward is the
  score minus kl_coef times the response's summed KL (k1); each response's baseline is the mean reward of
  the other responses to the same prompt: A_i = R_i - mean_{j != i} R_j.
- REINFORCE++ (Hu 2025, "REINFORCE++", sec. 3): PPO's per-token reward (score at the last token, -kl_coef *
  k1 on every token), the return to go (gamma), no critic; advantages normalized over the whole batch. Its
  baseline variant subtracts each group's mean score first.

Shapes: B responses, in groups of G consecutive responses to one prompt (B = prompts x G); T the response
width; `mask: [B, T]` marks a response's tokens up to and including its EOS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlhf.ppo_math import gae


def grouped(scores: Tensor, group_size: int) -> Tensor:
    """scores: [B] -> [B / G, G], one row per prompt (its responses are consecutive)."""
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def group_normalized(scores: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's advantage of each response: (score - group mean) / (group std + eps); Dr. GRPO without the
    division (`scale` False). The std is the unbiased one, as DeepSeekMath's and TRL's. scores: [B] -> [B]."""
    groups = grouped(scores, group_size)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale:
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO's advantage: each reward minus the mean of the other G - 1 rewards of its group.
    rewards: [B] -> [B]; G >= 2."""
    groups = grouped(rewards, group_size)
    others = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def on_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """One advantage per response on each of its valid tokens. advantages: [B], mask: [B, T] -> [B, T]."""
    return advantages[:, None] * mask


def returns_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """REINFORCE++'s per-token return: sum_k gamma^k r_{t+k} over the response (GAE with no values and
    lambda 1). rewards, mask: [B, T] -> [B, T]."""
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]


def normalized_with(x: Tensor, mask: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """REINFORCE++'s batch normalization with statistics given (over every process's batch, so that each
    process normalizes alike): (x - mean) / sqrt(var + 1e-8) on valid tokens, 0 elsewhere.
    x, mask: [B, T], mean, var: [] -> [B, T]."""
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """(sum, sum of squares, count) of the valid entries, to be summed over processes: x, mask: [B, T] -> [3]."""
    valid = x * mask
    return torch.stack([valid.sum(), (valid * x).sum(), mask.sum()])


def moments_to_mean_var(moments: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and unbiased variance from `masked_moments` summed over processes: [3] -> ([], [])."""
    total, squares, count = moments
    mean = total / count.clamp(min=1)
    var = (squares - count * mean**2) / (count - 1).clamp(min=1)
    return mean, var.clamp(min=0)


def critic_free_advantages(
    algorithm: str,
    rewards: Tensor,
    mask: Tensor,
    group_size: int,
    scale: bool = True,
    gamma: float = 1.0,
    reduce_sum: Callable[[Tensor], Tensor] = lambda moments: moments,
) -> Tensor:
    """Each algorithm's advantage on every response token, from the per-token rewards (`ppo_math.
    per_token_rewards`: the score on the last token, -kl_coef * KL on each token where the KL is in the reward).

    grpo: `group_normalized` over each response's total reward (`scale` False: Dr. GRPO); rloo: `leave_one_out`
    over the totals; reinforce_pp: `returns_to_go`, normalized over every process's tokens (`reduce_sum` sums
    the moments over processes). rewards, mask: [B, T] -> advantages: [B, T].
    """
    if algorithm == "grpo":
        return on_tokens(group_normalized(rewards.sum(-1), group_size, scale), mask)
    if algorithm == "rloo":
        return on_tokens(leave_one_out(rewards.sum(-1), group_size), mask)
    if algorithm == "reinforce_pp":
        returns = returns_to_go(rewards, mask, gamma)
        mean, var = moments_to_mean_var(reduce_sum(masked_moments(returns, mask)))
        return normalized_with(returns, mask, mean, var)
    raise ValueError(f"no critic-free advantage for algorithm {algorithm!r}")
