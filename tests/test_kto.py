"""KTO from unpaired labels: Label Studio Rating / thumbs Choices and Argilla label / rating exports imported
as an unpaired dataset with every row accounted for; the synthetic task's thumbs; `algorithm: kto` end to end
on tiny-llama (gold rises over SFT, metrics read back from the offline wandb run); KTO without unpaired data
is a config error naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import validate_config
from rlhf.data.importers import ImportOptions
from rlhf.data.preferences import ImportSettings
from rlhf.data.synthetic import SynthConfig, gold_reward, write_synthetic_task
from rlhf.data.unpaired import detect_kind, import_unpaired, load_unpaired
from rlhf.errors import ConfigError
from rlhf.launch import run_standalone
from rlhf.tracking import read_offline_run
from stages import policy, sft
from tests.conftest import REPO, pipeline_config, run_cli

FIXTURES = REPO / "tests" / "data" / "unpaired"


def _reasons(out: Path) -> list[str]:
    return [json.loads(line)["reason"] for line in (out / "quarantine.jsonl").read_text().splitlines()]


def _labels(out: Path) -> dict[str, bool]:
    rows = load_unpaired(out)["train"]
    return {row["completion"][0]["content"]: row["label"] for row in rows}


@pytest.mark.parametrize(
    ("name", "counts", "labels", "reasons"),
    [
        (  # ratings 5+4 (+ a 4 in a later task: a merged vote), 1+2, 3+3 neutral, 5+1 tie, "five", a skip
            "labelstudio_rating.json",
            (7, 2, 4, 1),
            {"apple pear": True, "iron hammer": False},
            ["rating not a number: 'five' in annotation 51", "no submitted judgement: 1 annotation, all cancelled",
             "neutral rating: 2 of 2 votes", "no majority: 1 desirable, 1 undesirable"],
        ),
        (  # 👍👍👎, thumbs_down x2, good, an unknown label, bad (and a normalized duplicate of it)
            "labelstudio_thumbs.json",
            (6, 4, 1, 1),
            {"apple pear": True, "iron hammer": False, "cat dog cow": True, "  Gold   Tin ": False},
            ["unknown thumbs label: 'meh' in annotation 41"],
        ),
        (  # Argilla 2.x records, label question: good+good, bad+bad+good, a draft only, good+bad
            "argilla_label.jsonl",
            (4, 2, 2, 0),
            {"apple pear": True, "iron hammer": False},
            ["no submitted judgement: answers to 'quality': 1 draft", "no majority: 1 desirable, 1 undesirable"],
        ),
        (  # Argilla v1 columns, rating question: 5+4+2, 1 (+ a discarded 2), a 3, an empty completion
            "argilla_rating.jsonl",
            (4, 2, 2, 0),
            {"apple pear": True, "iron hammer": False},
            ["empty response (completion)", "neutral rating: 1 of 1 votes"],
        ),
    ],
)  # fmt: skip
def test_unpaired_exports_are_imported_with_every_row_accounted_for(
    tmp_path: Path, name: str, counts: tuple[int, int, int, int], labels: dict[str, bool], reasons: list[str]
) -> None:
    source = FIXTURES / name
    assert detect_kind([source], ImportSettings()).name == "unpaired"
    report = import_unpaired([source], tmp_path / "out", ImportSettings(test_fraction=0.0))
    read, kept, quarantined, duplicates = counts
    assert (report.read, report.kept, report.quarantined, report.duplicates) == counts
    assert report.read == report.kept + report.quarantined + report.duplicates
    assert _labels(tmp_path / "out") == labels
    found = _reasons(tmp_path / "out")
    assert len(found) == quarantined
    for reason in reasons:
        assert any(line.startswith(reason) for line in found), (reason, found)
    manifest = json.loads(report.manifest_path.read_text())
    assert manifest["format"] == "rlhf-unpaired"
    assert manifest["counts"]["desirable"] == sum(labels.values())
    assert f"rows read = kept + quarantined + duplicates: {read} = {kept} + {quarantined} + {duplicates}" in (
        report.report_path.read_text()
    )


def test_rating_thresholds_and_thumbs_labels_are_settings(tmp_path: Path) -> None:
    strict = ImportOptions(desirable_rating=5, undesirable_rating=3)  # 4 is neutral now, 3 undesirable
    report = import_unpaired([FIXTURES / "labelstudio_rating.json"], tmp_path / "strict",
                             ImportSettings(options=strict, test_fraction=0.0))  # fmt: skip
    assert _labels(tmp_path / "strict") == {"iron hammer": False, "cat dog apple": False}
    assert report.read == report.kept + report.quarantined + report.duplicates == 7
    mapped = ImportOptions(thumbs_labels={"👍": True, "thumbs_down": False, "meh": False})
    report = import_unpaired([FIXTURES / "labelstudio_thumbs.json"], tmp_path / "mapped",
                             ImportSettings(options=mapped, test_fraction=0.0))  # fmt: skip
    assert _labels(tmp_path / "mapped") == {"iron hammer": False, "saw drill": False}
    assert (report.read, report.kept, report.quarantined) == (6, 2, 4)  # 👎, good, bad, bad: no label now
    reasons = _reasons(tmp_path / "mapped")
    assert sum(reason.startswith("unknown thumbs label: '👎'") for reason in reasons) == 1
    with pytest.raises(ConfigError, match="undesirable_rating"):
        ImportOptions(desirable_rating=3, undesirable_rating=3)


def test_rlhf_data_import_detects_unpaired_exports(tmp_path: Path) -> None:
    done = run_cli("data", "import", str(FIXTURES / "argilla_label.jsonl"), "--out", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    assert "unpaired: rows read = kept + quarantined + duplicates: 4 = 2 + 2 + 0" in done.stdout
    done = run_cli("data", "import", str(FIXTURES / "labelstudio_thumbs.json"), "--out", str(tmp_path / "b"),
                   "--kind", "unpaired", "--thumbs", "meh=undesirable", "--thumbs", "👍=desirable")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "6 = 1 + 5 + 0" in done.stdout  # only meh and 👍 are labels now: a task with another is bad
    done = run_cli("data", "import", str(FIXTURES / "labelstudio_rating.json"), "--out", str(tmp_path / "c"),
                   "--desirable-rating", "9", "--undesirable-rating", "0")  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: nothing imported (rows read")
    assert "top quarantine reason: neutral rating" in done.stderr


def test_the_synthetic_thumbs_import_and_follow_the_gold_reward(tmp_path: Path) -> None:
    cfg = SynthConfig(num_sft_train=10, num_preference_tasks=10, num_thumbs_tasks=400)
    files = write_synthetic_task(tmp_path / "task", cfg)
    assert detect_kind([files["unpaired"]], ImportSettings()).name == "unpaired"
    report = import_unpaired([files["unpaired"]], tmp_path / "unpaired", ImportSettings(test_fraction=0.0))
    assert report.read == 400 == report.kept + report.quarantined + report.duplicates
    assert report.kept > 300
    rows = load_unpaired(tmp_path / "unpaired")["train"]
    agree = [
        (gold_reward(row["prompt"][0]["content"], row["completion"][0]["content"]) >= cfg.thumbs_threshold)
        == row["label"]
        for row in rows
    ]
    assert sum(agree) / len(agree) > 0.9  # the majority of noisy annotators mostly gets it right
    assert 0.1 < sum(rows["label"]) / len(rows) < 0.6  # both labels present


def test_kto_without_unpaired_data_is_a_config_error_naming_the_key() -> None:
    raw = {"model": "tiny-llama", "stages": {"policy": {"algorithm": "kto"}}}
    key = r"stages\.policy: algorithm kto needs unpaired data .*data\.unpaired\.files"
    with pytest.raises(ConfigError, match=key):
        validate_config(raw)
    validate_config({**raw, "data": {"unpaired": {"files": ["thumbs.json"]}}})  # files given: fine


CONFIG = """
name: kto-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 8000, num_sft_eval: 64, num_preference_tasks: 100, num_thumbs_tasks: 2000}
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
    num_threads: 1
    evaluation: {max_new_tokens: 12, samples_per_prompt: 8}
  policy:
    model: registry:sft-policy:v1
    algorithm: kto
    beta: 0.3
    learning_rate: 5.0e-4
    num_train_epochs: 2
    per_device_train_batch_size: 32
    max_length: 64
    logging_steps: 10
    save_steps: 1000
    num_threads: 1
    evaluation: {max_new_tokens: 12, samples_per_prompt: 8}
    kto: {desirable_weight: 2.7}
tracking: none
"""


@pytest.mark.slow
def test_kto_on_the_synthetic_thumbs_raises_the_gold_reward_over_sft(tmp_path: Path) -> None:
    config = pipeline_config(tmp_path, CONFIG)
    sft_result = run_standalone("sft", sft.run, str(config), [], str(tmp_path / "sft-run"))
    run_dir = tmp_path / "kto-run"
    result = run_standalone("policy", policy.run, str(config), ["tracking=wandb"], str(run_dir))
    m = result.metrics
    assert m["gold_reward"] > sft_result.metrics["gold_reward"] + 0.15, (m["gold_reward"], sft_result.metrics)
    assert m["eos_share"] > 0.9
    assert m["examples_train"] + m["examples_eval"] > 1800 and 0 < m["desirable_train"] < m["examples_train"]
    assert m["reward_margin_last"] > m["reward_margin_first"] + 0.5  # desirable up, undesirable down
    assert m["reward_undesirable_last"] < 0 and m["train_loss_last"] < m["train_loss_first"]

    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")))
    history = [row for row in run["history"] if "train/kl" in row]
    assert len(history) >= 10  # logged every 10 of 110 steps
    for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"):
        assert f"train/{key}" in history[-1], key
    assert history[-1]["train/rewards/margins"] == pytest.approx(m["reward_margin_last"])
    assert run["summary"]["final/gold_reward"] == pytest.approx(m["gold_reward"])
