"""Shared fixtures: everything offline, tiny models and a small synthetic task built locally."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tests never touch a network: no hub, wandb offline, quiet tokenizers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("WANDB_API_KEY", None)
# A safety net: a test that forgets to name its registry never writes into the working tree's ./registry.
os.environ["RLHF_REGISTRY"] = tempfile.mkdtemp(prefix="rlhf-test-registry-")
atexit.register(shutil.rmtree, os.environ["RLHF_REGISTRY"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
# The online algorithms' tests (test_ppo, test_critic_free) start from one SFT policy and reward model, trained
# once per session by `online_trained`; each test overrides the policy section for its own run.
ONLINE_CONFIG = """
name: ppo-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 8000, num_sft_eval: 64, num_preference_tasks: 4000}
stages:
  sft:
    learning_rate: 3.0e-3
    num_train_epochs: 2
    per_device_train_batch_size: 32
    warmup_steps: 0.05
    lr_scheduler_type: cosine
    max_length: 64
    logging_steps: 50
    save_steps: 1000
    num_threads: 2
    evaluation: {max_new_tokens: 12, samples_per_prompt: 8}
  reward:
    model: tiny-llama
    learning_rate: 5.0e-4
    num_train_epochs: 5
    per_device_train_batch_size: 16
    max_length: 64
    logging_steps: 50
    save_steps: 1000
    num_threads: 2
  policy:
    model: registry:sft-policy:v1
    algorithm: ppo
    learning_rate: 2.0e-4
    max_steps: 100
    per_device_train_batch_size: 32
    logging_steps: 20
    save_steps: 1000
    num_threads: 2
    evaluation: {max_new_tokens: 12, samples_per_prompt: 8}
    ppo:
      prompts_per_update: 64
      rollout: {max_new_tokens: 12, samples_per_prompt: 1}
      num_mini_batches: 2
      kl_coef: 0.1
tracking: none
"""


@pytest.fixture(scope="session")
def small_task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The built-in task at a size that trains in seconds."""
    from rlhf.data.synthetic import SynthConfig, write_synthetic_task

    cfg = SynthConfig(seed=0, num_sft_train=3000, num_sft_eval=64, num_preference_tasks=200)
    return write_synthetic_task(tmp_path_factory.mktemp("task") / "synthetic", cfg)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama materialized once as an ordinary HF directory."""
    from rlhf.builtin_models import materialize
    from rlhf.settings import ModelSpec

    return materialize(ModelSpec(name="tiny-llama"), tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


def pipeline_config(folder: Path, text: str) -> Path:
    """A pipeline YAML in `folder` whose runs and registry stay inside that folder."""
    path = folder / "pipeline.yaml"
    path.write_text(
        text + f"runs_dir: {folder / 'runs'}\nregistry: {folder / 'registry'}\n", encoding="utf-8"
    )
    return path


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The `rlhf` command in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "rlhf.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def launch_stage(
    program: str, config: Path, run_dir: Path, overrides: list[str], processes: int = 2
) -> subprocess.CompletedProcess[str]:
    """`python -m stages.<program>` on several real processes (torch.distributed.run; on this CPU machine
    DeepSpeed runs on its CPU accelerator over gloo)."""
    from rlhf.distributed import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), "-m", f"stages.{program}", "--config", str(config),
               "--run-dir", str(run_dir), *overrides]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def held_shares(log: str) -> dict[str, dict[str, float]]:
    """Per rank, the share of each model it holds (1.0: a whole copy), from the stages' `this rank holds`
    log lines (`rlhf.sharding.log_held_shares`)."""
    from rlhf.sharding import held_from_log

    return {rank: {name: share for name, (share, _, _) in models.items()}
            for rank, models in held_from_log(log).items()}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip cleanly on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def online_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_config(tmp_path_factory.mktemp("online"), ONLINE_CONFIG)


@pytest.fixture(scope="session")
def online_trained(online_config_file: Path) -> dict[str, float]:
    """The SFT policy (sft-policy:v1) and the reward model (reward-model:v1) every online test starts from;
    the SFT policy's metrics (its held-out gold reward) for the tests to compare with."""
    from rlhf.launch import run_standalone
    from stages import reward, sft

    folder = online_config_file.parent
    sft_result = run_standalone("sft", sft.run, str(online_config_file), [], str(folder / "sft-run"))
    reward_result = run_standalone("reward", reward.run, str(online_config_file), [], str(folder / "rm-run"))
    assert (sft_result.ref, reward_result.ref) == ("sft-policy:v1", "reward-model:v1")
    return sft_result.metrics


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """A real Label Studio server shared by the session's `labelstudio` tests (about a minute to start);
    skipped when `scripts/setup_labelstudio.sh` has not installed one."""
    from tests.labelstudio_server import running_label_studio

    with running_label_studio(tmp_path_factory.mktemp("label-studio")) as server:
        yield server
