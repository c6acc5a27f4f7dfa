"""The `rlhf` command end to end: a pipeline run tracked in wandb, data synth, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf.registry import Registry
from rlhf.tracking import read_offline_run
from tests.conftest import REPO, pipeline_config
from tests.conftest import run_cli as rlhf

CONFIG = """
name: cli-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 800, num_sft_eval: 32, num_preference_tasks: 20}
stages:
  sft:
    learning_rate: 3.0e-3
    per_device_train_batch_size: 32
    max_steps: 12
    logging_steps: 4
    max_length: 64
    evaluation: {max_new_tokens: 8, samples_per_prompt: 1}
tracking: {backend: wandb, project: cli-test}
"""


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    return pipeline_config(tmp_path, CONFIG)


@pytest.mark.slow
def test_run_trains_tracks_and_says_where_results_went(config_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    done = rlhf("run", str(config_file), "stages.sft.learning_rate=4e-3", "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"sft: published sft-policy:v1 ({tmp_path / 'registry' / 'models' / 'sft-policy' / 'v1'})"
        in done.stdout
    )
    assert "│ base " in done.stdout  # the untrained baseline row of the table
    console = done.stdout + done.stderr  # a quiet console: the trainer's dicts and warnings only in stage.log
    assert "'loss':" not in console and "Warning" not in console and "sft: done in" in console
    assert "'loss':" in (run_dir / "sft" / "stage.log").read_text()

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["stages"]["sft"]["learning_rate"] == pytest.approx(4e-3)  # the override, resolved
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"][0]["stage"] == "sft" and "gold_reward" in summary["stages"][0]["metrics"]

    # the stage's wandb run, read back from disk
    runs = [read_offline_run(path) for path in run_dir.glob("wandb/offline-run-*/run-*.wandb")]
    (run,) = [run for run in runs if run["job_type"] == "sft"]
    assert [r["job_type"] for r in runs if r["job_type"] != "sft"] == ["report"]  # the run report, logged too
    assert run["group"] == "r1" and run["job_type"] == "sft" and run["project"] == "cli-test"
    assert run["config"]["stage"]["learning_rate"] == pytest.approx(4e-3)
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(losses) >= 3  # the trainer's own callback logged into our run
    assert run["summary"]["gold_reward"] == pytest.approx(summary["stages"][0]["metrics"]["gold_reward"])
    assert run["exit_code"] == 0


@pytest.mark.slow
def test_only_runs_its_stage_and_skips_the_rest(tmp_path: Path) -> None:
    """`--only sft` on a fresh registry trains SFT, publishes it, and stops: exit 0, nothing after it runs."""
    reward = "  reward: {model: tiny-llama, max_steps: 3, per_device_train_batch_size: 8, max_length: 64}\n"
    config = pipeline_config(tmp_path, CONFIG.replace("tracking:", reward + "tracking:"))
    run_dir = tmp_path / "runs" / "only"
    done = rlhf("run", str(config), "--only", "sft", "tracking=none", "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft: published sft-policy:v1" in done.stdout
    assert "skipped, after the --only stage: reward, evaluate" in done.stdout
    assert list(Registry(tmp_path / "registry").list()) == ["sft-policy"]  # no reward model

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    assert {name: stage["status"] for name, stage in record["stages"].items()} == {
        "data": "done", "sft": "done", "reward": "skipped", "evaluate": "skipped"
    }  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [stage["stage"] for stage in summary["stages"]] == ["sft"]
    assert "sft" in (run_dir / "report.md").read_text()
    status = rlhf("status", str(run_dir))
    assert status.returncode == 0 and "skipped" in status.stdout


def test_tracking_none_writes_no_wandb_run(config_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["tracking=none", "stages.sft.max_steps=2", "stages.sft.evaluation=null"]
    done = rlhf("stage", "sft", str(config_file), *overrides, "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "registry" / "models" / "sft-policy" / "v1" / "model.safetensors").is_file()
    assert not (run_dir / "wandb").exists()
    assert "'train_runtime':" in (run_dir / "sft" / "stage.log").read_text()  # `rlhf stage` keeps a log too


def test_data_synth_writes_the_task(tmp_path: Path) -> None:
    done = rlhf("data", "synth", "--out", str(tmp_path / "task"), "--seed", "3", "num_sft_train=50")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "task" / "task.json").read_text())
    assert manifest["config"]["seed"] == 3
    assert len((tmp_path / "task" / "sft_train.jsonl").read_text().splitlines()) == 50
    export = json.loads((tmp_path / "task" / "preferences_labelstudio.json").read_text())
    assert (
        export[0]["annotations"][0]["result"] == []
        or export[0]["annotations"][0]["result"][0]["type"] == "pairwise"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["data", "synth", "--out", "x", "num_sft_trian=5"],
            "num_sft_trian: unknown key, did you mean num_sft_train?",
        ),
        (
            ["run", "{cfg}", "stages.sft.learning_rate=fast"],
            "stages.sft.learning_rate: expected a number, got 'fast'",
        ),
        (
            ["run", "{cfg}", "tracking=none", "data.sft_train=/nope/train.jsonl"],
            "data.sft_train: /nope/train.jsonl: no such file or directory",
        ),
        (["run", "{cfg}", "tracking=none", "model=no-org/no-model"], "model 'no-org/no-model': cannot load"),
        (["run", "{tmp}/absent.yaml"], "absent.yaml: config file not found"),
        (["stage", "nosuch", "{cfg}"], "unknown stage 'nosuch'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    args: list[str], message: str, config_file: Path, tmp_path: Path
) -> None:
    args = [a.format(cfg=config_file, tmp=tmp_path) for a in args]
    done = rlhf(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in done.stderr


def test_malformed_jsonl_line_is_named(config_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    done = rlhf("run", str(config_file), f"data.sft_train={bad}", "tracking=none", cwd=tmp_path)
    assert done.returncode == 2
    assert f"error: sft failed: {bad}:2: not valid JSON" in done.stderr and "sft/stage.log)" in done.stderr
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(config_file: Path, tmp_path: Path) -> None:
    done = rlhf(
        "--debug", "run", str(config_file), "data.sft_train=/nope.jsonl", "tracking=none", cwd=tmp_path
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError: data.sft_train: /nope.jsonl" in done.stderr


@pytest.mark.slow
def test_the_quickstart_pipeline_end_to_end_at_small_size(tmp_path: Path) -> None:
    """Every stage chained through the registry (DPO, PPO and KTO side by side), and the closing evaluations."""
    small = ["data.synthetic.num_sft_train=1500", "data.synthetic.num_preference_tasks=300",
             "stages.sft.num_train_epochs=1", "stages.reward.num_train_epochs=1",
             "stages.policy.dpo.num_train_epochs=1", "stages.policy.ppo.max_steps=3",
             "stages.policy.kto.max_steps=3", "data.synthetic.num_thumbs_tasks=300",
             "evaluation.samples_per_prompt=1", f"registry={tmp_path / 'registry'}", f"runs_dir={tmp_path / 'runs'}",
             "tracking=none"]  # fmt: skip
    done = rlhf("run", str(REPO / "configs" / "quickstart.yaml"), *small, "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        "sft: published sft-policy:v1",
        "reward: published reward-model:v1",
        "policy-dpo: published policy:v1",
        "policy-ppo: published policy:v2",
        "policy-kto: published policy:v3",
        "policy-dpo vs SFT: gold_win_rate",
        "policy-ppo vs SFT: gold_win_rate",
        "policy-kto vs SFT: gold_win_rate",
    ):
        assert line in done.stdout
    table = done.stdout[: done.stdout.index("policy-dpo vs SFT")]
    assert "│ policy-dpo │" in table and "│ policy-ppo │" in table  # one row each in the final table
    registry = Registry(tmp_path / "registry")
    assert (
        registry.manifest("reward-model:v1").parents == []
    )  # the quickstart's reward model starts from the base
    dpo, ppo = registry.manifest("policy:v1"), registry.manifest("policy:v2")
    assert dpo.parents == ["sft-policy:v1"] and dpo.stage == "policy-dpo"
    assert ppo.parents == ["sft-policy:v1", "reward-model:v1"] and ppo.stage == "policy-ppo"
    assert ppo.config["algorithm"] == "ppo" and ppo.metrics["steps"] == 3
    assert {d["name"] for d in dpo.datasets} == {"preferences"}
    kto = registry.manifest("policy:v3")
    assert kto.parents == ["sft-policy:v1"] and kto.config["algorithm"] == "kto" and kto.metrics["steps"] == 3
    assert {d["name"] for d in kto.datasets} == {"unpaired"}
    assert dpo.extra["evaluation"]["models"] == {"policy": "policy:v1", "reference": "sft-policy:v1",
                                                 "judge": "reward-model:v1"}  # fmt: skip
    assert ppo.extra["evaluation"]["models"]["policy"] == "policy:v2"
    assert {"reward_mean", "reward_std", "accuracy"} <= registry.manifest("reward-model:v1").metrics.keys()

    # the same evaluation, by hand, through `rlhf eval`
    done = rlhf("eval", "registry:policy:v1", "--reference", "registry:sft-policy:v1", "--judge",
                "registry:reward-model:latest", "--prompts", str(tmp_path / "run" / "data" / "synthetic" /
                "eval_prompts.jsonl"), "--gold", "synthetic", "--samples-per-prompt", "1", "--max-new-tokens", "8",
                "--tracking", "none", "--registry", str(tmp_path / "registry"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rm_win_rate" in done.stdout and "gold_win_rate" in done.stdout and "kl" in done.stdout
