"""PPO's arithmetic against values worked out by hand: GAE, KL estimators, whitening, both clipped losses,
per-token rewards, score shaping, the KL controller, and the log-probs of left-padded batches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlhf.eval import generate, response_logprobs
from rlhf.models import load_causal_lm
from rlhf.policy_forward import position_ids, response_forward, token_logprobs
from rlhf.ppo_math import (
    KLController,
    explained_variance,
    gae,
    kl_estimate,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    shape_scores,
    truncated_is_weights,
    value_loss,
)
from rlhf.ppo_models import PolicyAndValue, logits_kept
from rlhf.reward_sources import RewardTerm, combined
from rlhf.rollout import collate
from rlhf.settings import GenerationSpec, ModelSpec, PPOSpec


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_full_response_by_hand() -> None:
    # deltas: t2 = 1 + 0 - 0.7 = 0.3; t1 = 0 + 0.7 - 0.6 = 0.1; t0 = 0 + 0.6 - 0.5 = 0.1
    # A2 = 0.3; A1 = 0.1 + 0.95 * 0.3 = 0.385; A0 = 0.1 + 0.95 * 0.385 = 0.46575
    advantages, returns = gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=0.95)
    assert advantages.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_stops_at_the_last_valid_token_and_discounts() -> None:
    # the value at the masked position (9.0) must not leak in; gamma 0.9, lambda 0.5:
    # delta1 = 1 + 0.9 * 0 - 0.6 = 0.4; delta0 = 0 + 0.9 * 0.6 - 0.5 = 0.04; A0 = 0.04 + 0.45 * 0.4 = 0.22
    advantages, returns = gae(t([0, 1, 0]), t([0.5, 0.6, 9.0]), t([1, 1, 0]), gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.22, 0.4, 0.0])
    assert returns.tolist()[0] == pytest.approx([0.72, 1.0, 0.0])


def test_gae_matches_the_textbook_loop_on_random_batches() -> None:
    torch.manual_seed(0)
    rewards, values = torch.randn(5, 9), torch.randn(5, 9)
    lengths = torch.tensor([9, 1, 4, 7, 3])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).float()
    advantages, _ = gae(rewards * mask, values, mask, gamma=0.99, lam=0.9)
    for row in range(5):
        n, last, expected = int(lengths[row]), 0.0, []
        for step in reversed(range(n)):
            next_value = float(values[row, step + 1]) if step + 1 < n else 0.0
            delta = float(rewards[row, step]) + 0.99 * next_value - float(values[row, step])
            last = delta + 0.99 * 0.9 * last
            expected.insert(0, last)
        assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert advantages[row, n:].abs().sum() == 0


def test_kl_estimators_by_hand() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 = (r - 1) - log r with r = p_ref / p = 0.5
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - math.log(0.5))


def test_kl_estimators_are_unbiased_and_k3_never_negative() -> None:
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, ref = p.log()[tokens], q.log()[tokens]
    k1, k3 = kl_estimate(logp, ref, "k1"), kl_estimate(logp, ref, "k3")
    assert k1.mean().item() == pytest.approx(exact, abs=0.01)
    assert k3.mean().item() == pytest.approx(exact, abs=0.01)
    assert (k3 >= 0).all() and (k1 < 0).any()
    assert k3.var() < k1.var()


def test_whitening_over_valid_tokens_only() -> None:
    # valid 2, 4, 6: mean 4, sample variance 4 -> -1, 0, 1; the padded 100 neither counts nor survives
    x, mask = t([2, 4, 6, 100]), t([1, 1, 1, 0])
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1, 0, 1, 0], abs=1e-4)
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([3, 4, 5, 0], abs=1e-4)


def test_clipped_policy_loss_by_hand() -> None:
    # ratios 1.5, 0.5, 1.1; advantages 1, 1, -1; clip 0.2:
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(1.1, 1.1) = 1.1
    old = t([0.0, 0.0, 0.0, 0.0])
    new = torch.log(t([1.5, 0.5, 1.1, 7.0]))
    advantages, mask = t([1, 1, -1, 5]), t([1, 1, 1, 0])
    loss, clipfrac, approx_kl = policy_loss(new, old, advantages, mask, cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert approx_kl.item() == pytest.approx(expected_kl)


def test_truncated_importance_weights_by_hand() -> None:
    # p_old / p_engine = exp(old - engine): 1, e^0.5 = 1.6487, e^-1 = 0.3679, e^2 = 7.389 -> capped at 2
    old, engine = t([0.0, 0.0, -1.0, 0.0]), t([0.0, -0.5, 0.0, -2.0])
    weights = truncated_is_weights(old, engine, cap=2.0)
    assert weights.tolist()[0] == pytest.approx([1.0, math.exp(0.5), math.exp(-1.0), 2.0])
    assert not weights.requires_grad


def test_policy_loss_weights_each_token() -> None:
    # the by-hand tokens above (-1.2, -0.5, 1.1) weighted 2, 1, 0.5: (-2.4 - 0.5 + 0.55) / 3
    old = t([0.0, 0.0, 0.0, 0.0])
    new = torch.log(t([1.5, 0.5, 1.1, 7.0]))
    advantages, mask = t([1, 1, -1, 5]), t([1, 1, 1, 0])
    loss, clipfrac, _ = policy_loss(
        new, old, advantages, mask, cliprange=0.2, weights=t([2.0, 1.0, 0.5, 9.0])
    )
    assert loss.item() == pytest.approx((-2.4 - 0.5 + 0.55) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)  # the clip fraction is the unweighted one


def test_clipped_value_loss_by_hand() -> None:
    # old 0.5, clip 0.2: values 1.0 -> clipped 0.7, values 0.0 -> clipped 0.3; returns 0:
    # token 0: max(1.0, 0.49) = 1.0; token 1: max(0.0, 0.09) = 0.09; loss = 0.5 * mean = 0.2725
    loss, clipfrac = value_loss(t([1.0, 0.0, 5.0]), t([0.5, 0.5, 0.0]), t([0.0, 0.0, 0.0]), t([1, 1, 0]), 0.2)
    assert loss.item() == pytest.approx(0.2725)
    assert clipfrac.item() == pytest.approx(0.5)


def test_rewards_put_the_score_on_the_last_valid_token() -> None:
    kl, mask = t([0.1, 0.2, 0.3], [0.1, 0.1, 0.4]), t([1, 1, 1], [1, 1, 0])
    rewards = per_token_rewards(kl * mask, torch.tensor([1.0, 2.0]), mask, kl_coef=0.5)
    assert rewards.tolist() == [
        pytest.approx([-0.05, -0.1, 0.85]),
        pytest.approx([-0.05, 1.95, 0.0]),
    ]


def test_scores_normalized_scaled_clipped_and_penalized_without_eos() -> None:
    raw, ended = torch.tensor([1.0, 3.0, 101.0]), torch.tensor([True, False, True])
    spec = PPOSpec(reward_scale=2.0, reward_clip=3.0, missing_eos_penalty=1.0)
    # (raw - 1) / 2 * 2 = 0, 2, 100 -> clipped at 3 -> minus 1 where no EOS
    normalized = combined(raw[:, None], [RewardTerm("reward_model", 1.0)], [(1.0, 2.0)])
    assert shape_scores(normalized, ended, spec).tolist() == pytest.approx([0.0, 1.0, 3.0])
    plain = PPOSpec(reward_clip=None, missing_eos_penalty=None)
    assert shape_scores(raw, ended, plain).tolist() == pytest.approx([1.0, 3.0, 101.0])


def test_kl_controller_fixed_and_adaptive() -> None:
    fixed = KLController(0.1)
    fixed.update(kl=5.0, responses=1000)
    assert fixed.kl_coef == 0.1
    adaptive = KLController(0.1, target=1.0, horizon=100)
    adaptive.update(kl=2.0, responses=10)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 10 / 100)
    assert adaptive.kl_coef == pytest.approx(0.102)
    adaptive.update(kl=0.5, responses=10)  # error -0.5 clipped to -0.2
    assert adaptive.kl_coef == pytest.approx(0.102 * 0.98)
    restored = KLController(0.1, target=1.0, horizon=100)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.kl_coef == adaptive.kl_coef


def test_explained_variance() -> None:
    returns, mask = t([1.0, 2.0, 3.0, 0.0]), t([1, 1, 1, 0])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


def test_left_padded_rollout_log_probs_match_one_sequence_at_a_time(tiny_llama_dir: Path) -> None:
    """Left padding, position ids and the temperature: the batched per-token log-probs of a rollout sum to
    what each sample gets alone (right-padded, `response_logprobs`)."""
    model, tokenizer = load_causal_lm(ModelSpec(name=str(tiny_llama_dir)))
    prompts = [[{"role": "user", "content": text}] for text in ("name 3 fruits", "name 1 animal please now")]
    spec = GenerationSpec(max_new_tokens=6, samples_per_prompt=3, temperature=0.7)
    samples = generate(model, tokenizer, prompts, spec, seed=1)
    ids, attention, context = collate(samples, tokenizer.pad_token_id, model.device)
    assert attention[:, :context].sum(-1).tolist() == [len(s.prompt_ids) for s in samples]
    with torch.no_grad():
        logp, entropy, values = response_forward(PolicyAndValue(model, None), ids, attention, context, 0.7)
    mask = attention[:, context:]
    batched = (logp * mask).sum(-1)
    alone = torch.tensor(response_logprobs(model, samples, temperature=0.7))
    assert batched.tolist() == pytest.approx(alone.tolist(), abs=1e-4)
    assert (entropy > 0).all() and values.abs().sum() == 0  # a fresh value head starts at 0
    keep = ids.shape[1] - context + 1
    logits, _ = PolicyAndValue(model, None)(ids, attention, position_ids(attention), keep)
    assert logits.shape[1] == keep < ids.shape[1]  # the prompt's logits were never computed


def test_a_model_without_logits_to_keep_computes_all_logits() -> None:
    class RemoteCode(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    assert logits_kept(RemoteCode(), 5) == {}
    assert logits_kept(torch.nn.Linear(2, 2), 0) == {}


def test_entropy_carries_gradients_only_for_an_entropy_bonus() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3))
    logp, entropy = token_logprobs(logits, tokens, temperature=1.0)
    assert logp.requires_grad and not entropy.requires_grad
    _, entropy = token_logprobs(logits, tokens, temperature=1.0, entropy_grad=True)
    assert entropy.requires_grad
    assert entropy.max() <= math.log(5) + 1e-5  # at most the uniform distribution's
