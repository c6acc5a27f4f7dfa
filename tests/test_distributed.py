"""The TRL stages (SFT, reward model, DPO) under DeepSpeed on 2 real processes at ZeRO-2 and ZeRO-3 (here on
DeepSpeed's CPU accelerator over gloo); the shipped DeepSpeed configs; the DeepSpeed config a ZeRO stage
gets. (PPO's distributed test is in test_ppo.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.distributed import ZERO_OPTIMIZATION, deepspeed_config
from rlhf.errors import ConfigError
from rlhf.models import load_causal_lm
from rlhf.partitioned_loading import reads_from_log
from rlhf.registry import Registry
from rlhf.settings import DistributedConfig, ModelSpec
from tests.conftest import REPO, held_shares, launch_stage, pipeline_config, run_cli

CONFIG = """
name: ds-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 800, num_sft_eval: 32, num_preference_tasks: 300}
stages:
  sft: {learning_rate: 3.0e-3, max_steps: 6, per_device_train_batch_size: 8, max_length: 64, logging_steps: 1,
        save_steps: 4, num_threads: 1, evaluation: {max_new_tokens: 8, samples_per_prompt: 1}}
  reward: {model: tiny-llama, max_steps: 6, per_device_train_batch_size: 8, max_length: 64, logging_steps: 1,
           save_steps: 4, num_threads: 1}
  policy: {model: "registry:sft-policy:v1", loss_type: [apo_zero], learning_rate: 1.0e-3, max_steps: 6,
           per_device_train_batch_size: 8, max_length: 64, logging_steps: 1, save_steps: 4, num_threads: 1,
           evaluation: {max_new_tokens: 8, samples_per_prompt: 1}}
tracking: none
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_config(tmp_path_factory.mktemp("distributed"), CONFIG)


def _published(log: str) -> str:
    """The one version published, by rank 0 alone."""
    lines = [line for line in log.splitlines() if ": published " in line and "[rank" in line]
    assert len(lines) == 1 and "[rank 0]" in lines[0], lines
    return lines[0].rsplit("published ", 1)[1].strip()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("program", ["sft", "reward", "policy"])
def test_trl_stages_on_two_processes_at_zero_2_and_zero_3(config_file: Path, program: str) -> None:
    """Each stage trains under DeepSpeed (its checkpoints are DeepSpeed's), logs from both ranks, publishes
    once, and ZeRO-2 and ZeRO-3 give the same model (same data order, same seeds)."""
    registry = Registry(config_file.parent / "registry")
    if program == "policy" and "sft-policy" not in registry.list():
        done = launch_stage(
            "sft", config_file, config_file.parent / "sft-for-dpo", ["distributed.zero_stage=2"]
        )
        assert done.returncode == 0, done.stderr[-3000:]
    weights = {}
    for zero in (2, 3):
        run_dir = config_file.parent / f"{program}-zero{zero}"
        done = launch_stage(program, config_file, run_dir, [f"distributed.zero_stage={zero}"])
        assert done.returncode == 0, done.stderr[-4000:]
        log = done.stderr + done.stdout
        assert "[rank 1]" in log and "[rank 0]" in log
        shares = held_shares(log)  # ZeRO-3 loads the trained model (and DPO's reference) partitioned
        assert set(shares) == {"0", "1"}
        for rank in shares.values():
            assert all(share < 0.6 for share in rank.values()) if zero == 3 else set(rank.values()) == {1.0}
        reads = reads_from_log(log)  # at ZeRO-3 each rank read its partition's rows of each checkpoint only
        assert set(reads) == ({"0", "1"} if zero == 3 else set()), reads
        assert all(0.4 < share < 0.6 for rank in reads.values() for share in rank), reads
        ref = _published(log)
        checkpoint = run_dir / program / "checkpoints" / "checkpoint-4"
        assert (checkpoint / "global_step4").is_dir()  # DeepSpeed's own checkpoint layout: it really ran
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
        result = json.loads((run_dir / program / "result.json").read_text(encoding="utf-8"))
        assert result["metrics"]["steps"] == 6
        if program == "sft":
            assert result["metrics"]["train_loss_last"] < result["metrics"]["train_loss_first"]
            assert "gold_reward" in result["metrics"]  # held-out sampling ran on every rank, rank 0 reported
        if program != "reward":
            weights[zero] = load_causal_lm(ModelSpec(name=str(registry.resolve(ref))))[0].state_dict()
    for name, tensor in weights.get(2, {}).items():
        torch.testing.assert_close(weights[3][name], tensor, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_shipped_deepspeed_configs_leave_batch_settings_to_the_trainer(name: str) -> None:
    path = REPO / "configs" / "deepspeed" / f"{name}.json"
    config = deepspeed_config(DistributedConfig(deepspeed_config=str(path)))
    assert config is not None
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        assert config[key] == "auto", key
    zero = dict(config["zero_optimization"])
    assert name.startswith(f"zero{zero['stage']}")
    if name.endswith("offload"):
        assert zero.pop("offload_optimizer")["device"] == zero.pop("offload_param")["device"] == "cpu"
    assert zero == ZERO_OPTIMIZATION[zero["stage"]]  # the file says what `zero_stage: N` means


def test_deepspeed_config_from_a_zero_stage_or_a_bad_file(tmp_path: Path) -> None:
    assert deepspeed_config(DistributedConfig()) is None
    config = deepspeed_config(DistributedConfig(zero_stage=3))
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["zero_optimization"]["reduce_bucket_size"] == "auto"  # not DeepSpeed's 2 GB default
    assert config["train_batch_size"] == "auto"
    bad = tmp_path / "ds.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"distributed.deepspeed_config: cannot read .*ds.json as JSON"):
        deepspeed_config(DistributedConfig(deepspeed_config=str(bad)))
    bad.write_text('{"train_batch_size": 8}', encoding="utf-8")
    with pytest.raises(ConfigError, match="has no 'zero_optimization' section"):
        deepspeed_config(DistributedConfig(deepspeed_config=str(bad)))


@pytest.mark.slow
@pytest.mark.distributed
def test_rlhf_stage_and_rlhf_run_start_the_launcher(config_file: Path) -> None:
    """With `distributed.num_processes: 2`, `rlhf stage` (here through DeepSpeed's launcher) and `rlhf run`
    (through torchrun) start every stage on 2 processes and carry on with what rank 0 recorded: the
    pipeline's DPO starts from the SFT version it just published."""
    launch = ["distributed.num_processes=2", "distributed.zero_stage=2"]
    done = run_cli("stage", "sft", str(config_file), *launch, "distributed.launcher=deepspeed",
                   "--run-dir", str(config_file.parent / "cli-stage"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rank 1] stages.sft" in done.stderr  # every rank's own lines on the console
    launcher_chatter = "exits successfully"  # DeepSpeed's launcher: in the stage's log, off the console (-v)
    stage_log = (config_file.parent / "cli-stage" / "sft" / "stage.log").read_text()
    assert launcher_chatter in stage_log and launcher_chatter not in done.stderr
    assert "sft: done in" in done.stdout
    launch.append("distributed.launcher=torchrun")

    done = run_cli("run", str(config_file), *launch, "stages.reward=null", "stages.policy.model=null",
                   "--run-dir", str(config_file.parent / "cli-run"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sft_ref = next(line for line in done.stdout.splitlines() if line.startswith("sft: published ")).split()[2]
    policy_ref = next(
        line for line in done.stdout.splitlines() if line.startswith("policy: published ")
    ).split()[2]
    assert Registry(config_file.parent / "registry").manifest(policy_ref).parents == [sft_ref]
    assert "policy vs SFT: gold_win_rate" in done.stdout


@pytest.mark.distributed
def test_an_error_on_the_ranks_stops_the_launched_stage(config_file: Path) -> None:
    broken = config_file.parent / "broken.jsonl"
    broken.write_text('{"prompt": "no completion"}\n', encoding="utf-8")
    done = run_cli("stage", "sft", str(config_file), "distributed.num_processes=2", "distributed.launcher=torchrun",
                   f"data.sft_train={broken}", "--run-dir", str(config_file.parent / "cli-fail"))  # fmt: skip
    assert done.returncode != 0
    assert f"error: [rank 0] {broken}" in done.stderr  # the rank's own one-line message
    assert "sft: failed on 2 processes" in done.stderr


def _loss_curve(run_dir: Path, step: int) -> list[float]:
    state = json.loads(
        (run_dir / "sft" / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text()
    )
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_follow_the_loss_curve_of_one_at_the_same_global_batch(config_file: Path) -> None:
    """Global batch 8 as 1 process x 8, as 2 processes x 4 (ZeRO-2) and as 2 processes x 2 x 2 accumulation
    steps (ZeRO-3): the same examples in each step, so the same losses. Tolerance 1e-4 per step, for float32
    sums taken in another order across ranks (measured: at most 5e-7 over 10 steps)."""
    steps = ["stages.sft.max_steps=10", "stages.sft.save_steps=10", "stages.sft.evaluation=null"]
    layouts = {
        "one": ["distributed.num_processes=1", "stages.sft.per_device_train_batch_size=8"],
        "two-zero2": ["distributed.num_processes=2", "distributed.zero_stage=2",
                      "stages.sft.per_device_train_batch_size=4"],
        "two-zero3-accumulating": ["distributed.num_processes=2", "distributed.zero_stage=3",
                                   "stages.sft.per_device_train_batch_size=2",
                                   "stages.sft.gradient_accumulation_steps=2"],
    }  # fmt: skip
    curves = {}
    for name, layout in layouts.items():
        run_dir = config_file.parent / f"equivalence-{name}"
        done = run_cli("stage", "sft", str(config_file), *steps, *layout, "distributed.launcher=torchrun",
                       "--run-dir", str(run_dir))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        curves[name] = _loss_curve(run_dir, 10)
    assert len(curves["one"]) == 10 and curves["one"][-1] < curves["one"][0]
    for name in ("two-zero2", "two-zero3-accumulating"):
        assert curves[name] == pytest.approx(curves["one"], abs=1e-4), name


@pytest.mark.slow
@pytest.mark.distributed
def test_a_stages_own_distributed_block_launches_that_stage_alone(config_file: Path) -> None:
    """The pipeline runs in one process; the reward model's own `distributed:` asks for 2 at ZeRO-2, so only
    that stage goes through the launcher."""
    done = run_cli("run", str(config_file), "stages.policy=null", "stages.sft.max_steps=2",
                   "stages.reward.distributed={num_processes: 2, zero_stage: 2, launcher: torchrun}",
                   "--run-dir", str(config_file.parent / "per-stage"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reward: starting 2 processes" in done.stderr and "[rank 1] stages.reward" in done.stderr
    assert "sft: starting 2 processes" not in done.stderr  # SFT trained in-process
    assert "reward: published reward-model:" in done.stdout
