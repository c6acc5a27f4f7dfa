"""`rlhf data import` and `rlhf data export-for-annotation`, end to end through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlhf.data.preference_dataset import load_preferences
from rlhf.errors import ConfigError, DataError
from rlhf.registry import Registry
from tests.conftest import run_cli


def test_import_the_synthetic_label_studio_export(small_task: dict[str, Path], tmp_path: Path) -> None:
    done = run_cli("data", "import", str(small_task["preferences"]), "--out", str(tmp_path / "prefs"))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "prefs" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + counts["quarantined"] + counts["duplicates"]
    assert f"rows read = kept + quarantined + duplicates: {counts['read']} = {counts['kept']}" in done.stdout
    assert manifest["sources"][0]["format"] == "labelstudio"
    data = load_preferences(tmp_path / "prefs")
    assert len(data["train"]) + len(data["test"]) == counts["kept"]
    train_prompts = {row["prompt"][0]["content"] for row in data["train"]}
    assert not train_prompts & {row["prompt"][0]["content"] for row in data["test"]}
    quarantined = [
        json.loads(line) for line in (tmp_path / "prefs" / "quarantine.jsonl").read_text().splitlines()
    ]
    assert len(quarantined) == counts["quarantined"] and all(
        q["reason"] and q["source_row"] for q in quarantined
    )


def test_a_file_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "export.json"
    bad.write_text("id,prompt\n1,hello\n")
    done = run_cli("data", "import", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:1")
    assert not (tmp_path / "out").exists()


def test_mapped_csv_with_a_tokenizer_length_limit(tiny_llama_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "good", "bad"])
        writer.writerow(["name two animals", "cat dog", "red blue"])
        writer.writerow(["name two fruits", "apple pear", "apple pear"])  # identical: quarantined
        writer.writerow(["name two colors", "red blue", " ".join(["green"] * 50)])  # over-length
    done = run_cli("data", "import", str(path), "--out", str(tmp_path / "out"), "--format", "mapped",
                   "--map", "prompt=question", "--map", "chosen=good", "--map", "rejected=bad",
                   "--max-tokens", "20", "--tokenizer", str(tiny_llama_dir), "--test-fraction", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 = 1 + 2 + 0" in done.stdout
    reasons = [
        json.loads(line)["reason"]
        for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
    ]
    assert any("identical" in r for r in reasons) and any("token" in r for r in reasons)


def test_export_for_annotation_round_trips_through_import(small_task: dict[str, Path], tiny_llama_dir: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    registry = Registry(tmp_path / "registry")
    registry.add("tiny-base", tiny_llama_dir)
    out = tmp_path / "ls" / "tasks.json"
    done = run_cli("data", "export-for-annotation", "--prompts", str(small_task["eval_prompts"]),
                   "--model", "registry:tiny-base:latest", "--out", str(out), "--responses", "2",
                   "--max-new-tokens", "6", "--registry", str(tmp_path / "registry"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    tasks = json.loads(out.read_text())
    prompts = len(small_task["eval_prompts"].read_text().splitlines())
    assert 0 < len(tasks) <= prompts  # one pairwise task a prompt with two distinct samples
    assert all(
        t["meta"]["rlhf"]["model"] == "tiny-base:v1" and t["data"]["answer1"] != t["data"]["answer2"]
        for t in tasks
    )
    assert len({t["meta"]["rlhf"]["key"] for t in tasks}) == len(tasks)
    assert "<Pairwise" in out.with_suffix(".label_config.xml").read_text()

    # annotators pick the left answer; their export comes back through the importer
    for number, task in enumerate(tasks, start=1):
        task.update(id=number, annotations=[{"id": number, "completed_by": 7, "was_cancelled": False,
                    "result": [{"type": "pairwise", "from_name": "comparison", "to_name": "comparison",
                                "value": {"selected": "left"}}]}])  # fmt: skip
    out.write_text(json.dumps(tasks))
    done = run_cli("data", "import", str(out), "--out", str(tmp_path / "prefs"), "--test-fraction", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = load_preferences(tmp_path / "prefs")["train"]
    assert len(rows) == len(tasks)
    pairs = {(t["data"]["prompt"], t["data"]["answer1"], t["data"]["answer2"]) for t in tasks}
    assert {
        (r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows
    } == pairs


LABEL_STUDIO = Path(__file__).parent / "data" / "labelstudio"


def test_label_studio_json_min_and_csv_import_like_json(tmp_path: Path) -> None:
    """One LLM Ranker project exported three ways; its buckets are ranked in the order the user gives."""
    pairs, votes = {}, {}
    for export in ("json", "min.json", "csv"):
        out = tmp_path / export
        done = run_cli("data", "import", str(LABEL_STUDIO / f"ranker.{export}"), "--out", str(out),
                       "--ties", "keep", "--test-fraction", "0", "--bucket-order", "relevant_results, biased_results",
                       "--label-config", str(LABEL_STUDIO / "ranker.xml"))  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["sources"][0]["format"] == "labelstudio"
        options = manifest["settings"]["options"]
        assert options["bucket_order"] == ["relevant_results", "biased_results"]
        assert options["label_config"] == str(LABEL_STUDIO / "ranker.xml")
        votes[export] = manifest["agreement"], manifest["annotators"], manifest["counts"]["kept"]
        pairs[export] = {
            (
                row["prompt"][-1]["content"],
                frozenset((row["chosen"][0]["content"], row["rejected"][0]["content"])),
            )
            for row in load_preferences(out)["train"]
        }
    assert pairs["json"] == pairs["min.json"] == pairs["csv"] and len(pairs["json"]) == 4
    # a task's annotators, one row each in JSON_MIN and CSV, are merged into votes on one comparison
    assert votes["json"] == votes["min.json"] == votes["csv"], votes


def test_label_studio_buckets_without_an_order_are_quarantined(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli("data", "import", str(LABEL_STUDIO / "ranker.csv"), "--out", str(out))
    reasons = [json.loads(line)["reason"] for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 3 and all("pass --bucket-order BEST,...,WORST to rank them" in r for r in reasons)
    done = run_cli(
        "data", "import", str(LABEL_STUDIO / "ranker.csv"), "--out", str(out), "--bucket-order", "a,,b"
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1]
        == "error: bucket_order: expected distinct bucket names, got ['a', '', 'b']"
    )


def _labelstudio_task(number: int, data: dict, result: dict) -> dict:
    """A task as Label Studio's JSON export writes it, with one submitted annotation."""
    annotation = {
        "id": 100 + number,
        "completed_by": 1,
        "was_cancelled": False,
        "ground_truth": False,
        "result": [{"id": f"r{number}", "origin": "manual", **result}],
        "lead_time": 4.2,
        "created_at": "2024-05-02T10:00:00.000000Z",
        "task": number,
        "project": 3,
    }
    return {
        "id": number,
        "data": data,
        "annotations": [annotation],
        "predictions": [],
        "meta": {},
        "inner_id": number,
        "total_annotations": 1,
        "cancelled_annotations": 0,
    }


def _arena_battle(number: int) -> dict:
    """A battle of Chatbot Arena's published battle logs: the vote, but no conversation text."""
    return {
        "question_id": f"{number:032x}",
        "model_a": "vicuna-13b",
        "model_b": "koala-13b",
        "winner": "model_a",
        "judge": f"arena_user_{number}",
        "turn": 1,
        "anony": True,
        "language": "English",
        "tstamp": 1682351591.13 + number,
        "num_tokens_info": {"context_a_tokens": 16, "context_b_tokens": 16},
        "is_code": False,
    }


SENTIMENT = {
    "type": "choices",
    "from_name": "sentiment",
    "to_name": "text",
    "value": {"choices": ["Positive"]},
}
POLYGON = {
    "type": "polygonlabels",
    "from_name": "label",
    "to_name": "image",
    "original_width": 1280,
    "original_height": 720,
    "image_rotation": 0,
    "value": {"points": [[12.5, 20.0], [40.1, 22.3], [30.0, 55.7]], "closed": True, "polygonlabels": ["Car"]},
}
NOTHING_TO_KEEP = {
    "arena_battles.json": [_arena_battle(i) for i in range(4)],
    "sentiment.json": [
        _labelstudio_task(i, {"text": f"It broke after {i} days."}, SENTIMENT) for i in (1, 2, 3)
    ],
    "polygons.json": [
        _labelstudio_task(i, {"image": f"/data/upload/3/street-{i}.jpg"}, POLYGON) for i in (1, 2)
    ],
}


@pytest.mark.parametrize("name", NOTHING_TO_KEEP)
def test_an_import_that_keeps_nothing_fails_with_its_top_reason(name: str, tmp_path: Path) -> None:
    export = tmp_path / name
    export.write_text(json.dumps(NOTHING_TO_KEEP[name]))
    out = tmp_path / "prefs"
    done = run_cli("data", "import", str(export), "--out", str(out))
    assert done.returncode == 2 and not done.stdout
    [line] = done.stderr.strip().splitlines()
    manifest = json.loads((out / "manifest.json").read_text())  # the outputs stay for inspection
    rows = len(NOTHING_TO_KEEP[name])
    assert manifest["counts"]["quarantined"] == rows and manifest["counts"]["kept"] == 0
    [(reason, count)] = manifest["counts"]["by_reason"].items()
    assert line == (
        f"error: nothing imported (rows read = kept + quarantined + duplicates: {rows} = 0 + {rows} + 0); "
        f"top quarantine reason: {reason} ({count} of {rows} rows); see {out / 'report.md'}"
    )
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == rows and (out / "report.md").is_file()


def test_a_pipeline_whose_preference_import_keeps_nothing_stops_with_the_same_line(tmp_path: Path) -> None:
    from rlhf.config import PreferencesConfig
    from rlhf.workspace import import_exports

    export = tmp_path / "sentiment.json"
    export.write_text(json.dumps(NOTHING_TO_KEEP["sentiment.json"]))
    with pytest.raises(
        DataError, match=r"^nothing imported \(.*3 = 0 \+ 3 \+ 0\); top quarantine reason: .* \(3 of 3"
    ):
        import_exports([export], PreferencesConfig(), tmp_path / "prefs")
    assert (tmp_path / "prefs" / "report.md").is_file()


def test_a_pipeline_passes_every_import_setting(tmp_path: Path) -> None:
    """`data.preferences` takes `rlhf data import`'s settings: the same export, the same dataset."""
    from rlhf.config import PreferencesConfig
    from rlhf.workspace import import_exports

    export, config = LABEL_STUDIO / "ranker.min.json", LABEL_STUDIO / "ranker.xml"
    flags = ["--bucket-order", "relevant_results,biased_results", "--label-config", str(config),
             "--ties", "keep", "--test-fraction", "0", "--max-depth", "32"]  # fmt: skip
    done = run_cli("data", "import", str(export), "--out", str(tmp_path / "cli"), *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    prefs = PreferencesConfig(bucket_order=["relevant_results", "biased_results"], label_config=str(config),
                              ties="keep", test_fraction=0, max_depth=32)  # fmt: skip
    import_exports([export], prefs, tmp_path / "pipeline")
    manifests = [json.loads((tmp_path / out / "manifest.json").read_text()) for out in ("cli", "pipeline")]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]
    assert manifests[0]["settings"] == manifests[1]["settings"]
    with pytest.raises(ConfigError, match=r"^data\.preferences\.bucket_order: expected distinct"):
        import_exports([export], PreferencesConfig(bucket_order=["a", "a"]), tmp_path / "bad")
