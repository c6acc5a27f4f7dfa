"""The tasks we send annotators and the simulated annotators' answers, through the real import path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhf.annotation.simulated import answers, export
from rlhf.annotation.tasks import RANKING_CONFIG, build_tasks, label_config, responses_of, task_key
from rlhf.config import load_config
from rlhf.data.importers import ImportOptions
from rlhf.data.preference_dataset import load_preferences
from rlhf.data.preferences import ImportSettings, import_preferences
from rlhf.data.synthetic import SynthConfig, all_prompts, gold_reward, parse_prompt, sample_response
from rlhf.errors import ConfigError

PROMPT = "name two animals"
GOOD, BAD, WORSE = "cat dog", "cat apple", "apple red"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_tasks_are_keyed_shuffled_by_seed_and_skip_what_no_one_could_judge() -> None:
    prompts = [_user(PROMPT)] * 4 + [_user("name two colors")]
    responses = [[GOOD, BAD], [GOOD, GOOD], [GOOD, BAD], [GOOD, " "], [GOOD, BAD, WORSE]]
    tasks, skipped = build_tasks(prompts, responses, {"round": 1}, seed=0)
    # identical answers, an empty one, and the same task drawn twice are skipped
    assert (len(tasks), skipped) == (2, 3)
    pairwise, ranking = tasks
    assert set(responses_of(pairwise)) == {GOOD, BAD} and "items" not in pairwise["data"]
    assert sorted(responses_of(ranking)) == sorted([GOOD, BAD, WORSE])
    assert [item["id"] for item in ranking["data"]["items"]] == ["r1", "r2", "r3"]
    assert pairwise["meta"]["rlhf"]["round"] == 1 and len(task_key(pairwise)) == 64
    again, _ = build_tasks(prompts, responses, {"round": 1}, seed=0)
    assert again == tasks  # the same seed: the same tasks and keys
    other_round, _ = build_tasks(prompts, responses, {"round": 2}, seed=0)
    assert {task_key(t) for t in other_round}.isdisjoint({task_key(t) for t in tasks})
    orders = {
        tuple(responses_of(build_tasks(prompts[:1], responses[:1], {}, seed)[0][0])) for seed in range(20)
    }
    assert len(orders) == 2  # the policy's first sample is not always on the left
    assert label_config(2) != label_config(3) == RANKING_CONFIG


def test_simulated_annotators_judge_by_gold_and_their_export_imports_with_every_vote(tmp_path: Path) -> None:
    rng = random.Random(0)
    prompts = [_user(p) for p in rng.choices(all_prompts(), k=120)]
    responses = [
        [sample_response(rng, parse_prompt(p[0]["content"]), rng.random(), 0.6) for _ in range(2 + i % 2)]
        for i, p in enumerate(prompts)
    ]  # pairwise and ranking tasks
    tasks, _ = build_tasks(prompts, responses, {"round": 1}, seed=0)
    cfg = SynthConfig(annotator_noise=(0.0, 0.0, 0.0), skip_prob=0.1)
    exported = export(tasks, cfg, seed=0)
    assert [list(answers(t, cfg, 0)) for t in tasks] == [list(answers(t, cfg, 0)) for t in tasks]
    assert sum(a["was_cancelled"] for t in exported for a in t["annotations"]) > 0  # skips are written too
    # one import per kind, as a round imports its own project's export with its own labeling config
    for kind, k in (("pairwise", 2), ("ranking", 3)):
        (tmp_path / f"{kind}.xml").write_text(label_config(k))
        part = tmp_path / f"{kind}.json"
        part.write_text(json.dumps([t for t in exported if len(responses_of(t)) == k]))
        options = ImportOptions(label_config=str(tmp_path / f"{kind}.xml"))
        settings = ImportSettings(options=options, test_fraction=0.0)
        report = import_preferences([part], tmp_path / kind, settings)
        assert report.read == report.kept + report.quarantined + report.duplicates
        assert report.kept >= 30
        for row in load_preferences(tmp_path / kind)["train"]:  # noiseless: never the answer with less gold
            prompt = row["prompt"][-1]["content"]
            chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
            assert gold_reward(prompt, chosen) >= gold_reward(prompt, rejected)
        manifest = json.loads((tmp_path / kind / "manifest.json").read_text())
        assert manifest["agreement"]["krippendorff_alpha"] == pytest.approx(1.0)
        assert len(manifest["annotators"]) == 3


def test_rounds_config_names_its_policy_and_needs_the_synthetic_task_for_simulated_annotators(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"rounds\.policy: 3 policy stages"):
        load_config("configs/quickstart.yaml", ["rounds.count=2", "rounds.pairs_per_round=10"])
    cfg = load_config(
        "configs/quickstart.yaml", ["rounds.count=2", "rounds.pairs_per_round=10", "rounds.policy=dpo"]
    )
    assert cfg.rounds is not None and cfg.rounds.annotators == "simulated"
    with pytest.raises(ConfigError, match=r"rounds\.policy: no policy stage 'sac'"):
        load_config(
            "configs/quickstart.yaml", ["rounds.count=2", "rounds.pairs_per_round=10", "rounds.policy=sac"]
        )
    with pytest.raises(ConfigError, match=r"needs data\.synthetic"):
        load_config(
            "configs/rounds-offline.yaml",
            ["data.synthetic=null", f"data.eval_prompts={tmp_path}/p.jsonl", f"rounds.prompts={tmp_path}/p.jsonl",
             f"data.sft_train={tmp_path}/s.jsonl"],
        )  # fmt: skip
