"""Shared fixtures: everything offline, tiny models and a small synthetic task built locally."""

from __future__ import annotations

import os
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

REPO = Path(__file__).resolve().parents[1]


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
