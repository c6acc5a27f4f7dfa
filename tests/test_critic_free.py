"""Stage 3c, the critic-free algorithms (GRPO, RLOO, REINFORCE++): each raises the gold reward over the SFT
policy on tiny-llama, against the task's verifiable reward or the learned reward model; no value model is
built; the `policy/*` metrics come back from a real offline wandb run; lineage names the reward model only
when one scored. A reward function that raises stops the run with one line naming it and the sample.
(Kill -9 and resume, and two processes at ZeRO-2, are in test_ppo, parametrized over PPO and GRPO.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.launch import run_standalone
from rlhf.registry import Registry
from rlhf.tracking import read_offline_run
from stages import policy
from tests.conftest import pipeline_config, run_cli

GOLD = "stages.policy.rewards=[{function: 'rlhf.rewards:gold'}]"
# the session's first reward model by name: test_ppo publishes a tiny-bert one after it, and pytest may run it first
RM = "stages.policy.ppo.reward_model=registry:reward-model:v1"
COMMON = ["tracking=wandb", "stages.policy.max_steps=40", "stages.policy.ppo.prompts_per_update=16",
          "stages.policy.ppo.rollout.samples_per_prompt=4", "stages.policy.ppo.ppo_epochs=2"]  # fmt: skip
ALGORITHMS = {
    "grpo-gold": ["stages.policy.algorithm=grpo", "stages.policy.learning_rate=5e-4", GOLD],
    "rloo-rm": ["stages.policy.algorithm=rloo", "stages.policy.learning_rate=5e-4", RM],
    "reinforce_pp-rm": [
        "stages.policy.algorithm=reinforce_pp",
        RM,
        "stages.policy.ppo.group_baseline=true",
        "stages.policy.learning_rate=5e-4",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_algorithm_raises_the_gold_reward_over_sft(
    online_config_file: Path, online_trained: dict[str, float], name: str
) -> None:
    algorithm = name.split("-")[0]
    run_dir = online_config_file.parent / f"run-{name}"
    result = run_standalone(
        "policy", policy.run, str(online_config_file), [*COMMON, *ALGORITHMS[name]], str(run_dir)
    )
    m = result.metrics
    assert m["gold_reward"] > online_trained["gold_reward"] + 0.1, (
        m["gold_reward"],
        online_trained["gold_reward"],
    )
    assert m["eos_share"] > 0.9
    assert m[f"{algorithm}_score_raw_mean_last"] > m[f"{algorithm}_score_raw_mean_first"]
    assert m[f"{algorithm}_kl_first"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its reference
    assert f"{algorithm}_explained_variance_last" not in m  # no critic

    manifest = Registry(online_config_file.parent / "registry").manifest(result.ref)
    scored_by_a_reward_model = not name.endswith("gold")
    assert manifest.parents == ["sft-policy:v1", *(["reward-model:v1"] if scored_by_a_reward_model else [])]
    assert manifest.config["algorithm"] == algorithm

    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    history = [row for row in run["history"] if "policy/kl" in row]
    assert len(history) == 40
    for key in ("score_raw_mean", "kl", "entropy", "clipfrac", "approx_kl", "advantage_mean", "no_eos_share",
                "policy_loss", "generation_s", "training_s"):  # fmt: skip
        assert f"policy/{key}" in history[-1], key
    assert not {"policy/value_loss", "policy/explained_variance"} & history[-1].keys()
    assert ("policy/kl_loss" in history[-1]) == (algorithm == "grpo")  # GRPO's KL is a loss term
    assert history[-1]["policy/score_raw_mean"] > history[0]["policy/score_raw_mean"]


@pytest.mark.slow
def test_ppo_takes_a_weighted_sum_of_a_reward_model_and_a_function(
    online_config_file: Path, online_trained: dict[str, float]
) -> None:
    rewards = "[{model: 'registry:reward-model:v1'}, {function: 'tests.reward_fixtures:words', weight: 0.5}]"
    overrides = ["tracking=wandb", "stages.policy.max_steps=3", "stages.policy.evaluation=null",
                 "stages.policy.num_threads=1", "stages.policy.ppo.prompts_per_update=16",
                 "stages.policy.per_device_train_batch_size=8", f"stages.policy.rewards={rewards}"]  # fmt: skip
    run_dir = online_config_file.parent / "run-ppo-rewards"
    result = run_standalone("policy", policy.run, str(online_config_file), overrides, str(run_dir))
    manifest = Registry(online_config_file.parent / "registry").manifest(result.ref)
    assert manifest.parents == ["sft-policy:v1", "reward-model:v1"]
    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    history = [row for row in run["history"] if "policy/kl" in row]
    assert len(history) == 3 and "policy/value_loss" in history[-1]  # PPO keeps its critic
    for row in history:  # the weighted raw sum of the reward model's score and the function's word count
        combined = row["policy/score_reward_model_mean"] + 0.5 * row["policy/score_words_mean"]
        assert row["policy/score_raw_mean"] == pytest.approx(combined, abs=1e-4)
        assert row["policy/score_words_mean"] == pytest.approx(row["policy/response_tokens"], rel=0.5)


def test_a_reward_function_that_raises_names_itself_and_the_sample(tmp_path: Path) -> None:
    config = pipeline_config(
        tmp_path,
        """
name: broken-reward
model: tiny-llama
data:
  synthetic: {num_sft_train: 64, num_sft_eval: 16, num_preference_tasks: 200}
stages:
  policy:
    algorithm: grpo
    max_steps: 2
    num_threads: 1
    evaluation: null
    rewards: [{function: "tests.reward_fixtures:fails_on_five"}]
    ppo:
      prompts_per_update: 64
      rollout: {max_new_tokens: 4, samples_per_prompt: 2}
tracking: none
""",
    )
    done = run_cli("run", str(config))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "reward function tests.reward_fixtures:fails_on_five raised KeyError: 'five' on sample" in last, (
        last
    )
    assert "(prompt 'name five " in last and "Traceback" not in done.stderr
