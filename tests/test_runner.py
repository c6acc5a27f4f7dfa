"""`rlhf run` as a pipeline runner: stages reused by fingerprint, --force / --from / --only, a stage taken
from the registry, a failing stage, a killed stage resumed, run records and `rlhf status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.checkpoints import last_complete_checkpoint
from rlhf.config import validate_config
from rlhf.errors import ConfigError
from rlhf.registry import Registry
from rlhf.runs import RunRecord, list_runs
from rlhf.training import TRAINER_WRITES_LAST
from tests.conftest import REPO, pipeline_config
from tests.conftest import run_cli as rlhf

CONFIG = """
name: runner
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 400, num_sft_eval: 16, num_preference_tasks: 100}
stages:
  sft: {learning_rate: 3.0e-3, max_steps: 3, per_device_train_batch_size: 8, max_length: 64, logging_steps: 1,
        num_threads: 1, evaluation: null}
  reward: {max_steps: 3, per_device_train_batch_size: 8, max_length: 64, logging_steps: 1, num_threads: 1}
evaluation: null
tracking: none
"""


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    return pipeline_config(tmp_path, CONFIG)


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = rlhf("run", str(config), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def versions(config: Path) -> list[str]:
    registry = Registry(config.parent / "registry")
    return [version.ref for entry in registry.list().values() for version in entry.versions]


@pytest.mark.slow
def test_a_rerun_reuses_each_stage_whose_fingerprint_has_a_version(config: Path) -> None:
    first = run(config)
    assert "sft: published sft-policy:v1" in first.stdout and "report: " in first.stdout

    again = run(config, "stages.sft.logging_steps=2")  # how a stage runs, not what it makes: same fingerprint
    assert "sft: cached as sft-policy:v1" in again.stdout
    assert "reward: cached as reward-model:v1" in again.stdout
    assert versions(config) == ["reward-model:v1", "sft-policy:v1"]
    cached_run = sorted((config.parent / "runs").glob("runner-*"))[-1]
    report = (cached_run / "report.md").read_text(encoding="utf-8")
    assert "report/training-sft.png" in report and "cached" in report  # the curves of the run that trained it

    changed = run(config, "stages.reward.learning_rate=2.0e-4")  # what the reward model is: trained again
    assert "sft: cached as sft-policy:v1" in changed.stdout
    assert "reward: published reward-model:v2" in changed.stdout
    registry = Registry(config.parent / "registry")
    assert (
        registry.manifest("reward-model:v2").extra["fingerprint"]
        != registry.manifest("reward-model:v1").extra["fingerprint"]
    )

    records = list_runs(config.parent / "runs")
    assert [r.stages["sft"].status for r in records] == ["done", "cached", "cached"]
    assert [r.stages["reward"].status for r in records] == ["done", "cached", "done"]
    assert all(r.state == "done" and r.stages["data"].status == "done" for r in records)
    status = rlhf("status", "--runs-dir", str(config.parent / "runs"))
    assert status.returncode == 0 and status.stdout.count("runner-") >= 3 and "cached" in status.stdout


@pytest.mark.slow
def test_force_from_and_only_choose_what_trains(config: Path) -> None:
    run(config, "stages.sft.save_steps=1")  # checkpoints at every step, gone once the stage published
    forced = run(config, "--force", "sft")  # a new SFT version: the reward model's input changed with it
    assert "sft: published sft-policy:v2" in forced.stdout
    assert "reward: published reward-model:v2" in forced.stdout
    assert Registry(config.parent / "registry").manifest("sft-policy:v2").metrics["resumed_from_step"] == 0

    only = run(config, "--only", "reward")
    assert (
        "sft: cached as sft-policy:v2" in only.stdout and "reward: published reward-model:v3" in only.stdout
    )
    assert RunRecord.load(sorted((config.parent / "runs").glob("runner-*"))[-1]).stages[
        "evaluate"
    ].status == ("skipped")

    later = run(config, "--from", "reward")
    assert (
        "sft: cached as sft-policy:v2" in later.stdout and "reward: published reward-model:v4" in later.stdout
    )

    unknown = rlhf("run", str(config), "--only", "policy")
    assert unknown.returncode == 2 and "no stage 'policy' in this pipeline" in unknown.stderr

    fresh = rlhf("run", str(config), f"registry={config.parent / 'empty-registry'}", "--only", "reward")
    assert fresh.returncode == 2
    assert "sft failed: --only reward needs this stage published with fingerprint" in fresh.stderr


@pytest.mark.slow
def test_a_stage_taken_from_the_registry_feeds_the_next(config: Path) -> None:
    run(config)
    taken = run(config, "stages.sft=registry:sft-policy:latest")
    assert "sft: taken from the registry as sft-policy:v1" in taken.stderr
    assert "reward: cached as reward-model:v1" in taken.stdout  # it starts from the same version as before
    record = RunRecord.load(sorted((config.parent / "runs").glob("runner-*"))[-1])
    assert (record.stages["sft"].status, record.stages["sft"].ref) == ("taken", "sft-policy:v1")


def test_a_failing_stage_stops_the_run_names_its_log_and_publishes_nothing(config: Path) -> None:
    not_preferences = config.parent / "not-preferences.jsonl"
    not_preferences.write_text('{"text": "hello"}\n', encoding="utf-8")
    done = rlhf("run", str(config), "stages.sft.max_steps=1", f"stages.reward.dataset={not_preferences}",
                "stages.policy={model: 'registry:sft-policy:v1', max_steps: 1}")  # fmt: skip
    assert done.returncode == 2
    (run_dir,) = (config.parent / "runs").glob("runner-*")
    log = run_dir / "reward" / "stage.log"
    assert "reward failed: " in done.stderr and f"(log: {log})" in done.stderr
    assert str(not_preferences) in log.read_text(encoding="utf-8")  # the stage's own error, in its log
    assert versions(config) == ["sft-policy:v1"]  # nothing from the failed stage, nothing after it
    record = RunRecord.load(run_dir)
    assert record.state == "failed" and record.error.startswith("reward failed")
    assert [record.stages[s].status for s in ("data", "sft", "reward", "policy", "evaluate")] == [
        "done", "done", "failed", "skipped", "skipped"]  # fmt: skip
    shown = rlhf("status", str(run_dir))
    assert shown.returncode == 0 and "failed" in shown.stdout and "stage.log" in shown.stdout


@pytest.mark.slow
def test_a_stage_killed_mid_training_resumes_at_the_next_run(config: Path) -> None:
    """kill -9 of `rlhf run` while SFT trains; the next run finds the stage's checkpoints under its
    fingerprint, trains only the remaining steps and goes on to the reward model."""
    overrides = ["stages.sft.max_steps=100", "stages.sft.save_steps=5", "stages.sft.learning_rate=1.0e-3"]
    command = [sys.executable, "-m", "rlhf.cli", "run", str(config), *overrides]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    checkpoints = config.parent / "runs" / "checkpoints"
    deadline = time.monotonic() + 300
    # killed once checkpoint-10 is whole: a kill in the middle of its save resumes from step 5, which is
    # right (test_resume_passes_over_a_checkpoint_cut_short) but not what this test is about
    while not list(checkpoints.glob(f"sft-*/checkpoint-10/{TRAINER_WRITES_LAST}")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert versions(config) == []  # killed before anything was published
    (killed,) = list_runs(config.parent / "runs")
    assert killed.state == "interrupted" and killed.stages["sft"].status == "running"

    resumed = run(config, *overrides)
    assert (
        "sft: published sft-policy:v1" in resumed.stdout
        and "reward: published reward-model:v1" in resumed.stdout
    )
    metrics = Registry(config.parent / "registry").manifest("sft-policy:v1").metrics
    assert metrics["resumed_from_step"] >= 10 and metrics["steps"] == 100, metrics
    log = json.loads((sorted((config.parent / "runs").glob("runner-*"))[-1] / "run.json").read_text())
    assert log["stages"]["sft"]["status"] == "done"
    assert not list(checkpoints.glob("sft-*"))  # published: a rerun is cached, so its checkpoints went


def test_resume_passes_over_a_checkpoint_cut_short(tmp_path: Path) -> None:
    """The trainer writes trainer_state.json last: a checkpoint without it was killed mid-save."""
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if complete:
            (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    assert last_complete_checkpoint(tmp_path, TRAINER_WRITES_LAST) == tmp_path / "checkpoint-10"
    assert last_complete_checkpoint(tmp_path / "none-yet", TRAINER_WRITES_LAST) is None


def test_a_stage_given_as_anything_but_a_registry_version_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"^config: stages\.sft: expected the stage's settings or a registry "
                       r"version \(registry:NAME:VERSION\), got 'sft-policy:v3'$"):  # fmt: skip
        validate_config({"model": "tiny-llama", "stages": {"sft": "sft-policy:v3"}})
