"""Annotation rounds end to end: sample, judge, retrain, repeat; and a round picked up where it stopped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.registry import Registry
from rlhf.rounds import rounds_folder
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
