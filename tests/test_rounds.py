"""Annotation rounds end to end: sample, judge, retrain, repeat; and a round picked up where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import TrackingConfig, load_config
from rlhf.registry import Registry
from rlhf.rounds import RoundState, round_config, rounds_folder, training_exports
from rlhf.rounds_report import log_rounds, write_rounds_report
from rlhf.tracking import read_offline_run
from tests.conftest import REPO, run_cli

OFFLINE = REPO / "configs" / "rounds-offline.yaml"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_simulated_rounds_offline_improve_the_policy_and_resume_without_resampling(
    tmp_path: Path,
) -> None:
    overrides = [f"runs_dir={tmp_path / 'runs'}", f"registry={tmp_path / 'registry'}", "tracking=none"]
    done = run_cli("run", str(OFFLINE), *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = rounds_folder(load_config(OFFLINE, overrides))
    first, second = json.loads((folder / "rounds.json").read_text())

    # Round 2 samples round 1's policy, trains on both rounds' judgements, and its policy is better on gold
    assert (
        first["sampled_from"].startswith("sft-policy:")
        and second["sampled_from"] == first["refs"]["policy-dpo"]
    )
    assert first["tasks"] == second["tasks"] == 600
    assert second["metrics"]["rm_pairs_train"] > 1.5 * first["metrics"]["rm_pairs_train"]
    sft_gold = first["metrics"]["reference_gold_reward"]
    assert sft_gold < first["metrics"]["policy_gold_reward"] < second["metrics"]["policy_gold_reward"]
    registry = Registry(tmp_path / "registry")
    for number, state in ((1, first), (2, second)):
        for ref in state["refs"].values():
            name = ref.partition(":")[0]
            assert registry.manifest(f"{name}:round-{number}").ref == ref
    assert (folder / "rounds.png").stat().st_size > 0
    assert "| 2 | " + first["refs"]["policy-dpo"] in (folder / "rounds.md").read_text()

    # Stopped after sampling round 2: the next run neither samples again nor trains anew (same judgements,
    # same fingerprints), and ends where the first did
    state_file = folder / "round-2" / "state.json"
    stopped = {**second, "phase": "sampled", "export": None, "run_dir": None, "refs": {}, "metrics": {}}
    state_file.write_text(json.dumps(stopped))
    tasks_sha = _sha(folder / "round-2" / "tasks.json")
    done = run_cli("run", str(OFFLINE), *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _sha(folder / "round-2" / "tasks.json") == tasks_sha
    resumed = json.loads(state_file.read_text())
    assert resumed["phase"] == "trained" and resumed["refs"] == second["refs"]
    assert "sft: cached" in done.stderr and "policy-dpo: cached" in done.stderr

    # Raising the count continues these rounds rather than starting others
    assert rounds_folder(load_config(OFFLINE, [*overrides, "rounds.count=3"])) == folder
    assert rounds_folder(load_config(OFFLINE, [*overrides, "rounds.pairs_per_round=10"])) != folder


def test_a_round_trains_on_all_judgements_or_its_own_and_its_policy_starts_from_sft_or_the_last_round(
    tmp_path: Path,
) -> None:
    earlier = [RoundState(round=1, export="r1.json"), RoundState(round=2, export="r2.json")]
    state = RoundState(round=3, export="r3.json")
    assert training_exports("all", earlier, state) == ["r1.json", "r2.json", "r3.json"]
    assert training_exports("new", earlier, state) == ["r3.json"]

    cfg = load_config(OFFLINE, [f"runs_dir={tmp_path}", "data.preferences.files=[seed.json]"])
    from_sft = round_config(cfg, 3, "sft-policy:v1", None, ["r1.json", "r3.json"], tmp_path)
    assert from_sft.name == "rounds-offline-round3" and from_sft.rounds is None
    assert from_sft.stages.taken() == {"sft": "registry:sft-policy:v1"}
    assert from_sft.data.preferences.files == ["seed.json", "r1.json", "r3.json"]
    assert from_sft.data.preferences.label_config == str(tmp_path / "label_config.xml")
    assert from_sft.stages.plan()["policy-dpo"].model is None  # the pipeline starts it from the SFT stage
    iterative = round_config(cfg, 3, "sft-policy:v1", "policy:v2", ["r3.json"], tmp_path)
    assert iterative.stages.plan()["policy-dpo"].model.name == "registry:policy:v2"
    assert iterative.stages.plan()["reward"].model.name == "tiny-llama"  # only the sampled policy moves


def test_the_rounds_report_tables_plots_and_logs_each_round_to_wandb(tmp_path: Path) -> None:
    rounds = [
        {"round": r, "sampled_from": f"policy:v{r - 1}", "tasks": 10, "refs": {"policy-dpo": f"policy:v{r}"},
         "metrics": {"policy_gold_reward": 0.5 + r / 10, "reference_gold_reward": 0.4, "rm_accuracy": 0.6 + r / 20}}
        for r in (1, 2, 3)
    ]  # fmt: skip
    report = write_rounds_report(tmp_path, rounds)
    text = report.read_text()
    assert "| 3 | policy:v2 | 10 | 0.8 |" in text and "SFT policy (round 0) gold reward: 0.4" in text
    assert (tmp_path / "rounds.png").stat().st_size > 0
    run_id = log_rounds(tmp_path, rounds, TrackingConfig(project="rounds-test", mode="offline"))
    (path,) = tmp_path.glob(f"wandb/offline-run-*-{run_id}")
    run = read_offline_run(path)
    assert run["job_type"] == "rounds" and run["exit_code"] == 0
    gold = {
        row["_step"]: row["rounds/policy_gold_reward"]
        for row in run["history"]
        if "rounds/policy_gold_reward" in row
    }
    assert gold == {1: pytest.approx(0.6), 2: pytest.approx(0.7), 3: pytest.approx(0.8)}
    assert {file for artifact in run["artifacts"] for file in artifact["files"]} >= {
        "rounds.md",
        "rounds.png",
    }
    assert log_rounds(tmp_path, rounds, TrackingConfig(backend="none")) is None


def test_rounds_that_cannot_reach_their_annotators_fail_in_one_line_before_anything_trains(
    tmp_path: Path,
) -> None:
    from rlhf.distributed import free_port

    base = [f"runs_dir={tmp_path / 'runs'}", f"registry={tmp_path / 'registry'}", "tracking=none"]
    closed = f"http://127.0.0.1:{free_port()}"
    people = REPO / "configs" / "rounds-labelstudio.yaml"
    for overrides, key, expected in (
        ([f"rounds.label_studio.url={closed}"], "a-key", f"Label Studio at {closed}: unreachable"),
        ([f"rounds.label_studio.url={closed}", "rounds.label_studio.api_key_env=OUR_LS_KEY"], "a-key",
         "rounds.label_studio.api_key_env: set OUR_LS_KEY to the Label Studio API key"),
        ([], "a-key", "rounds.label_studio.url: needed for annotators label_studio"),
    ):  # fmt: skip
        env = {**os.environ, "LABEL_STUDIO_API_KEY": key}
        env.pop("LABEL_STUDIO_URL", None)
        done = subprocess.run([sys.executable, "-m", "rlhf.cli", "run", str(people), *base, *overrides], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2 and expected in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines() == [f"error: {done.stderr.strip().removeprefix('error: ')}"]
        assert key not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "registry").exists()
