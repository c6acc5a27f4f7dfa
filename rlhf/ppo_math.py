"""PPO's arithmetic as small pure functions: KL estimators, the KL controller, per-token rewards, score shaping,
masked statistics, whitening, GAE, the clipped policy and value losses, explained variance.

The `[n]` marks are the PPO details listed in `rlhf.ppo`'s docstring; tensor shapes follow its notation (B
responses, T the response width; `mask: [B, T]` marks a response's tokens up to and including its EOS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.errors import ConfigError
from rlhf.settings import PPOSpec


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

    logprobs, ref_logprobs: [B, T] -> kl: [B, T]. k1 = log p - log p_ref: unbiased, can be negative on one
    token; k3 = (r - 1) - log r with r = p_ref / p: unbiased and never negative, lower variance (Schulman,
    "Approximating KL divergence").
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ConfigError(f"stages.policy.ppo.kl_estimator: unknown estimator {estimator!r} (k1 or k3)")


class KLController:
    """The KL coefficient kl_coef [8]: fixed, or adapted toward a target KL per response (Ziegler et al.
    2019): kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * responses / horizon."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.kl_coef, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, responses: int) -> None:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.kl_coef *= 1.0 + error * responses / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = state["kl_coef"]


def per_token_rewards(kl: Tensor, scores: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """[8] -kl_coef * KL on every response token, plus the sequence's score on its last valid token [1].
    kl: [B, T], scores: [B], mask: [B, T] -> rewards: [B, T]."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # [B]: each response's EOS, or the last token sampled
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def shape_scores(combined: Tensor, ended: Tensor, spec: PPOSpec) -> Tensor:
    """The reward terms' combined score (each reward model's normalized [6], `rlhf.reward_sources.combined`)
    to the score the policy optimizes: scaled, clipped, and a penalty for responses that never ended with
    EOS [7]. combined: [B], ended: [B] bool -> scores: [B]."""
    shaped = combined * spec.reward_scale
    if spec.reward_clip is not None:
        shaped = shaped.clamp(-spec.reward_clip, spec.reward_clip)
    if spec.missing_eos_penalty is not None:
        shaped = shaped - spec.missing_eos_penalty * (~ended).float()
    return shaped


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """The mean over the masked entries. x, mask: [B, T] -> []."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Variance over the masked entries, with Bessel's correction (as the usual whitening has it).
    x, mask: [B, T] -> []."""
    centered = (x - masked_mean(x, mask)) * mask
    return (centered**2).sum() / (mask.sum() - 1).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """[9] Mean 0 (optionally kept), std 1 over the valid tokens only; entries outside the mask become 0.
    x, mask: [B, T] -> [B, T]."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """[10] Generalized advantage estimation over each response; returns = advantages + values.
    rewards, values, mask: [B, T] -> (advantages: [B, T], returns: [B, T]).

    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 past the last valid token), and
    A_t = sum_k (gamma*lam)^k delta_{t+k}: one matrix product with the upper-triangular [T, T] matrix of
    (gamma*lam)^k rather than a Python loop over positions.
    """
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    steps = torch.arange(rewards.shape[1], device=rewards.device)
    offset = steps[None, :] - steps[:, None]  # [t, s] = s - t
    discount = torch.where(offset >= 0, (gamma * lam) ** offset.clamp(min=0).double(), 0.0).to(rewards.dtype)
    advantages = (deltas @ discount.T) * mask
    return advantages, (advantages + values) * mask


# ==================================================================================================
# Losses


def aggregate(per_token: Tensor, mask: Tensor, how: str, max_tokens: int) -> Tensor:
    """Per-token losses to one number: `token_mean` over every valid token (each token weighs the same),
    `sequence_mean` over each response's tokens then over responses (GRPO: each response weighs the same),
    `constant`: each response's sum over `max_tokens`, then the mean over responses (Dr. GRPO: no length bias).
    per_token, mask: [B, T] -> []."""
    if how == "token_mean":
        return masked_mean(per_token, mask)
    sums = (per_token * mask).sum(-1)
    if how == "sequence_mean":
        return (sums / mask.sum(-1).clamp(min=1)).mean()
    if how == "constant":
        return (sums / max_tokens).mean()
    raise ValueError(f"unknown loss aggregation {how!r}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float,
    weights: Tensor | None = None,
    aggregation: str = "token_mean",
    max_tokens: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """[11] The clipped surrogate over valid tokens (averaged as `aggregate` says), its clip fraction and
    approximate KL 0.5 * E[(log r)^2]; each token's term times `weights` when given (`truncated_is_weights`).
    logprobs, old_logprobs, advantages, mask, weights: [B, T] -> (loss: [], clipfrac: [], approx_kl: [])."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token if weights is None else per_token * weights, mask, aggregation, max_tokens)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approx_kl


def truncated_is_weights(logprobs: Tensor, engine_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training", as in verl and TRL): the rollout engine sampled from its own numerics, p_engine,
    not from the trainer's p_old; min(p_old / p_engine, cap) per token reweights the policy gradient toward
    the trainer's distribution, the cap bounding its variance. No gradient flows through it.
    logprobs (the trainer's old), engine_logprobs: [B, T] -> weights: [B, T]."""
    return torch.exp(logprobs - engine_logprobs).clamp(max=cap).detach()


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """[11] The clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2) and its clip fraction.
    values, old_values, returns, mask: [B, T] -> (loss: [], clipfrac: [])."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant.
    values, returns, mask: [B, T] -> a float."""
    var_returns = masked_var(returns, mask)
    return float(1.0 - masked_var(returns - values, mask) / var_returns) if var_returns > 0 else float("nan")
