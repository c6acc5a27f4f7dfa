"""`rlhf data import` and `rlhf data export-for-annotation`, end to end through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rlhf.data.preference_dataset import load_preferences
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
                   "--model", "registry:tiny-base:latest", "--out", str(out), "--responses", "3",
                   "--max-new-tokens", "6", "--registry", str(tmp_path / "registry"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    tasks = json.loads(out.read_text())
    prompts = len(small_task["eval_prompts"].read_text().splitlines())
    assert 0 < len(tasks) <= 3 * prompts  # every pair of 3 distinct samples
    assert all(
        t["meta"]["model"] == "tiny-base:v1" and t["data"]["answer1"] != t["data"]["answer2"] for t in tasks
    )
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
    pairs = {}
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
        pairs[export] = {
            (
                row["prompt"][-1]["content"],
                frozenset((row["chosen"][0]["content"], row["rejected"][0]["content"])),
            )
            for row in load_preferences(out)["train"]
        }
    assert pairs["json"] == pairs["min.json"] == pairs["csv"] and len(pairs["json"]) == 4


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
