"""Records of one comparison are votes on it: same prompt and the same two responses, in either order and in
any file of an import, merge their votes (turned to the first record's order) before the majority, the
ties, `min_votes` and the agreement figures; each later record is a "merged vote" duplicate.

Records use the test-only "fake" format of test_import_core: {"q", "a", "b", "votes": [[annotator, choice]]}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhf.data.preference_dataset import load_preferences
from rlhf.data.preferences import ImportReport, ImportSettings, import_preferences
from tests import test_import_core as core

fake_format = core.fake_format
row, write_jsonl = core.row, core.write_jsonl
GOOD, BAD = "a helpful answer", "an unhelpful answer"


def run(tmp_path: Path, name: str, files: list[list[Any]], **settings: Any) -> ImportReport:
    sources = [write_jsonl(tmp_path / f"{name}-{i}.jsonl", rows) for i, rows in enumerate(files)]
    report = import_preferences(sources, tmp_path / name, ImportSettings(test_fraction=0, **settings))
    assert report.read == report.kept + report.quarantined + report.duplicates
    return report


def kept_rows(report: ImportReport) -> list[dict[str, Any]]:
    return list(load_preferences(report.out_dir)["train"])


def listed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_swapped_pair_is_a_vote_the_other_way(tmp_path: Path, fake_format: None) -> None:
    rows = [row("p", GOOD, BAD, votes=[("ann1", "a")]), row("p", BAD, GOOD, votes=[("ann2", "a")])]
    # ann1 prefers GOOD; ann2 prefers BAD (the pair turned round): one vote each way, a tie
    dropped = run(tmp_path, "drop", [rows])
    assert (dropped.read, dropped.kept, dropped.quarantined, dropped.duplicates) == (2, 0, 1, 1)
    assert (dropped.merged, dropped.conflicts, dropped.by_reason) == (1, 1, {"tie dropped": 1})
    [quarantined] = listed(dropped.quarantine_path)
    assert (quarantined["source_row"], quarantined["reason"]) == ("line 1", "tie dropped (ties=drop)")
    [duplicate] = listed(dropped.duplicates_path)
    assert list(duplicate) == ["source_file", "source_row", "kind", "duplicate_of"]
    assert (duplicate["source_row"], duplicate["kind"]) == ("line 2", "merged vote")
    assert duplicate["duplicate_of"] == {
        "quarantined": "tie dropped (ties=drop)",
        "source_file": str(tmp_path / "drop-0.jsonl"),
        "source_row": "line 1",
    }

    kept = run(tmp_path, "keep", [rows], ties="keep")
    assert (kept.kept, kept.duplicates, kept.ties_kept) == (1, 1, 1)
    [record] = kept_rows(kept)
    assert (record["chosen"][0]["content"], record["rejected"][0]["content"], record["tie"]) == (
        GOOD,
        BAD,
        True,
    )
    assert (record["annotators"], record["votes"]) == (["ann1", "ann2"], ["chosen", "rejected"])
    assert listed(kept.duplicates_path)[0]["duplicate_of"]["split"] == "train"
    text = kept.report_path.read_text()
    assert "| merged vote | 1 |" in text and "- **conflicts** among them: 1 (" in text


def test_two_against_one_across_records_files_and_orientations(tmp_path: Path, fake_format: None) -> None:
    first = [row("p", GOOD, BAD, votes=[("ann1", "b")]), row("other", votes=[("ann1", "a")])]
    second = [row("p", BAD, GOOD, votes=[("ann2", "a")]), row("p", GOOD, BAD, votes=[("ann3", "a")])]
    # in the first record's order (GOOD, BAD): ann1 b, ann2 b, ann3 a -> b wins 2 to 1
    report = run(tmp_path, "out", [first, second])
    assert (report.read, report.kept, report.duplicates, report.merged, report.conflicts) == (4, 2, 2, 1, 1)
    record = kept_rows(report)[0]  # where the first record was read, before "other"
    assert (record["source_file"], record["source_row"]) == (str(tmp_path / "out-0.jsonl"), "line 1")
    assert (record["chosen"][0]["content"], record["rejected"][0]["content"], record["tie"]) == (
        BAD,
        GOOD,
        False,
    )
    assert (record["annotators"], record["votes"]) == (
        ["ann1", "ann2", "ann3"],
        ["chosen", "chosen", "rejected"],
    )
    assert [(d["source_file"], d["source_row"], d["duplicate_of"]["row"]) for d in listed(report.duplicates_path)] == [
        (str(tmp_path / "out-1.jsonl"), "line 1", 0),
        (str(tmp_path / "out-1.jsonl"), "line 2", 0),
    ]  # fmt: skip


def test_agreement_of_merged_votes_equals_that_of_the_same_votes_in_one_record(
    tmp_path: Path, fake_format: None
) -> None:
    together, apart_first, apart_second = [], [], []
    for unit, votes in enumerate(core.HAND_TABLE):
        prompt = f"unit {unit}"
        together.append(row(prompt, GOOD, BAD, votes=votes.items()))
        for number, (name, choice) in enumerate(votes.items()):
            if number % 2:  # every other annotator's record has the pair the other way round
                swapped = {"a": "b", "b": "a", "tie": "tie"}[choice]
                apart_second.append(row(prompt, BAD, GOOD, votes=[(name, swapped)]))
            else:
                apart_first.append(row(prompt, GOOD, BAD, votes=[(name, choice)]))
    for settings in ({"ties": "keep"}, {"ties": "keep", "min_annotator_agreement": 0.75}):
        one = run(tmp_path, f"one-{len(settings)}", [together], **settings)
        merged = run(tmp_path, f"merged-{len(settings)}", [apart_first, apart_second], **settings)
        manifests = [json.loads(r.manifest_path.read_text()) for r in (one, merged)]
        assert manifests[0]["agreement"] == manifests[1]["agreement"]
        assert manifests[0]["annotators"] == manifests[1]["annotators"]
        columns = ("prompt", "chosen", "rejected", "tie")
        rows = [
            [
                ([r[c] for c in columns], sorted(zip(r["annotators"], r["votes"], strict=True)))
                for r in kept_rows(x)
            ]
            for x in (one, merged)
        ]  # the annotators in the order their records were read
        assert rows[0] == rows[1] and len(rows[0]) == 6
        assert (merged.merged, merged.duplicates, one.merged) == (6, 17 - 6, 0)
        # not unanimous: u2, u4, u5; once C is excluded only u4 (a against b)
        assert merged.conflicts == {1: 3, 2: 1}[len(settings)]
    assert merged.excluded_annotators == ("C",)
    assert json.loads(merged.manifest_path.read_text())["agreement"]["before_exclusion"][
        "krippendorff_alpha"
    ] == pytest.approx(5 / 13)


def test_a_row_repeated_verbatim_is_two_agreeing_votes(tmp_path: Path, fake_format: None) -> None:
    hh_like = row("p", GOOD, BAD)  # one anonymous vote for a, as HH-RLHF rows carry
    report = run(tmp_path, "out", [[hh_like, row("lonely"), hh_like]], min_votes=2)
    assert (report.kept, report.quarantined, report.duplicates) == (1, 1, 1)
    assert (report.by_reason, report.conflicts) == ({"too few votes": 1}, 0)
    [record] = kept_rows(report)
    assert (record["chosen"][0]["content"], record["source_row"]) == (GOOD, "line 1")


def test_a_named_annotator_counts_once_per_comparison(tmp_path: Path, fake_format: None) -> None:
    rows = [
        row("p", GOOD, BAD, votes=[("ann1", "a")]),
        row("p", BAD, GOOD, votes=[("ann1", "b")]),  # the same judgement again (the file imported twice)
        row("p", GOOD, BAD, votes=[("ann2", "b")]),
    ]
    report = run(tmp_path, "out", [rows])
    assert (report.kept, report.by_reason, report.duplicates) == (
        0,
        {"tie dropped": 1},
        2,
    )  # 1 : 1, not 2 : 1
    manifest = json.loads(report.manifest_path.read_text())
    assert {name: a["votes"] for name, a in manifest["annotators"].items()} == {"ann1": 1, "ann2": 1}


def test_a_normalized_duplicate_is_still_not_a_vote(tmp_path: Path, fake_format: None) -> None:
    rows = [
        row("Prompt", GOOD, BAD, votes=[("ann1", "a")]),
        row("prompt ", BAD.upper(), GOOD, votes=[("ann2", "b"), ("ann3", "b")]),  # the texts differ
    ]
    report = run(tmp_path, "out", [rows])
    assert (report.kept, report.duplicates, report.merged) == (1, 1, 0)
    assert kept_rows(report)[0]["chosen"][0]["content"] == GOOD
    assert [d["kind"] for d in listed(report.duplicates_path)] == ["normalized"]
