"""The critic-free algorithms' arithmetic against hand-computed tensors: GRPO's and Dr. GRPO's group-normalized
advantages, RLOO's leave-one-out baseline, REINFORCE++'s returns and batch normalization (the same over two
processes as over one), the loss aggregations, and each algorithm's defaults resolved from its paper."""

from __future__ import annotations

import pytest
import torch

from rlhf.critic_free_math import (
    critic_free_advantages,
    group_normalized,
    leave_one_out,
    masked_moments,
    moments_to_mean_var,
    returns_to_go,
)
from rlhf.ppo_math import aggregate, masked_mean, masked_var, per_token_rewards, policy_loss
from rlhf.settings import PolicyStageConfig


def test_grpo_advantages_are_group_normalized_and_dr_grpo_only_centred() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0])  # two prompts, two responses each
    # group 1: mean 1.5, unbiased std 0.7071; group 2: mean 4, std 1.4142
    expected = [-0.5 / (0.70711 + 1e-4), 0.5 / (0.70711 + 1e-4), -1 / (1.41421 + 1e-4), 1 / (1.41421 + 1e-4)]
    assert group_normalized(scores, 2).tolist() == pytest.approx(expected, abs=1e-4)
    assert group_normalized(scores, 2, scale=False).tolist() == pytest.approx([-0.5, 0.5, -1.0, 1.0])


def test_groups_must_be_whole() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        group_normalized(torch.ones(4), 3)


def test_rloo_baseline_is_the_mean_of_the_other_responses() -> None:
    rewards = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0])  # two prompts, three responses each
    # 1 - (2 + 4) / 2 = -2; 2 - (1 + 4) / 2 = -0.5; 4 - (1 + 2) / 2 = 2.5; 0 - 1.5; 0 - 1.5; 3 - 0
    assert leave_one_out(rewards, 3).tolist() == pytest.approx([-2.0, -0.5, 2.5, -1.5, -1.5, 3.0])


def test_returns_to_go() -> None:
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.5, 2.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second response ended a token earlier
    assert returns_to_go(rewards, mask, 1.0).tolist() == [
        pytest.approx([0.9, 0.9, 1.0]),
        pytest.approx([2.5, 2.0, 0.0]),
    ]
    # gamma 0.5: 1.0; -0.1 + 0.5 * 1.0 = 0.4; 0 + 0.5 * 0.4 = 0.2
    assert returns_to_go(rewards[:1], mask[:1], 0.5).tolist() == [pytest.approx([0.2, 0.4, 1.0])]


def test_each_algorithm_from_per_token_rewards() -> None:
    kl = torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    mask = torch.ones(4, 2)
    rewards = per_token_rewards(kl, torch.tensor([1.0, 3.0, 0.0, 2.0]), mask, kl_coef=0.1)
    # totals: 1 - 0.1 = 0.9; 3 - 0.1 = 2.9; 0; 2 - 0.2 = 1.8 (groups of 2)
    grpo = critic_free_advantages("grpo", rewards, mask, 2, scale=False)
    assert grpo[:, 0].tolist() == pytest.approx([-1.0, 1.0, -0.9, 0.9])
    assert torch.equal(grpo[:, 0], grpo[:, 1])  # one advantage on every token of a response
    rloo = critic_free_advantages("rloo", rewards, mask, 2)
    assert rloo[:, 1].tolist() == pytest.approx([-2.0, 2.0, -1.8, 1.8])
    reinforce = critic_free_advantages("reinforce_pp", rewards, mask, 2)
    returns = returns_to_go(rewards, mask, 1.0)
    expected = (returns - returns.mean()) / returns.flatten().std()
    assert reinforce.tolist() == [pytest.approx(row, abs=1e-5) for row in expected.tolist()]
    with pytest.raises(ValueError, match="ppo"):
        critic_free_advantages("ppo", rewards, mask, 2)


def test_batch_normalization_over_two_processes_equals_one() -> None:
    """REINFORCE++ normalizes over the whole batch: moments summed over processes give the statistics of all."""
    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    mean, var = moments_to_mean_var(masked_moments(x[:2], mask[:2]) + masked_moments(x[2:], mask[2:]))
    assert float(mean) == pytest.approx(float(masked_mean(x, mask)), abs=1e-6)
    assert float(var) == pytest.approx(float(masked_var(x, mask)), abs=1e-5)


def test_loss_aggregations() -> None:
    per_token = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(aggregate(per_token, mask, "token_mean", 4)) == pytest.approx((1 + 2 + 3) / 3)
    assert float(aggregate(per_token, mask, "sequence_mean", 4)) == pytest.approx((1.5 + 3) / 2)
    assert float(aggregate(per_token, mask, "constant", 4)) == pytest.approx((3 / 4 + 3 / 4) / 2)
    # on-policy (ratio 1) the clipped surrogate is -advantage, aggregated the same way
    logp = torch.zeros(2, 3)
    loss, clipfrac, _ = policy_loss(
        logp, logp, per_token, mask, 0.2, aggregation="sequence_mean", max_tokens=4
    )
    assert float(loss) == pytest.approx(-2.25) and float(clipfrac) == 0.0


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"algorithm": "ppo"}, ("k1", "reward", "token_mean", True, True)),
        ({"algorithm": "grpo"}, ("k3", "loss", "sequence_mean", True, False)),
        ({"algorithm": "grpo", "ppo": {"dr_grpo": True}}, ("k3", "loss", "constant", False, False)),
        ({"algorithm": "rloo"}, ("k1", "reward", "token_mean", True, False)),
        (
            {"algorithm": "reinforce_pp", "ppo": {"kl_penalty": "loss", "kl_estimator": "k3"}},
            ("k3", "loss", "token_mean", True, False),
        ),
    ],
)
def test_each_algorithm_resolves_its_papers_defaults(settings: dict, expected: tuple) -> None:
    ppo = {"rollout": {"samples_per_prompt": 4}} | settings.pop("ppo", {})
    recipe = PolicyStageConfig(**settings, ppo=ppo).online_recipe()
    resolved = (
        recipe.kl_estimator,
        recipe.kl_penalty,
        recipe.loss_aggregation,
        recipe.scale_advantages,
        recipe.critic,
    )
    assert resolved == expected


def test_group_algorithms_need_a_group_and_rewards_one_source() -> None:
    for algorithm, extra in (("grpo", {}), ("rloo", {}), ("reinforce_pp", {"group_baseline": True})):
        with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
            PolicyStageConfig(algorithm=algorithm, ppo=extra)
    PolicyStageConfig(algorithm="reinforce_pp")  # its batch baseline needs no group
    with pytest.raises(ValueError, match="exactly one"):
        PolicyStageConfig(algorithm="ppo", rewards=[{"weight": 1.0}])
    with pytest.raises(ValueError, match="import path"):
        PolicyStageConfig(algorithm="ppo", rewards=[{"function": "not a path"}])
    with pytest.raises(ValueError, match=r"leave ppo\.reward_model unset"):
        PolicyStageConfig(algorithm="ppo", rewards=[{"function": "a:b"}], ppo={"reward_model": "x"})
