"""The import machinery: readers, quality checks, aggregation and agreement, the accounting identity, the
split, atomic output and bounded memory.

A small test-only format ("fake") stands in for the real importers, so these tests do not depend on them:
a record is {"q": prompt, "a": text, "b": text, "votes": [[annotator or null, "a" | "b" | "tie"], ...]}.
"""

from __future__ import annotations

import csv
import json
import sys
import tracemalloc
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.data import importers, preference_dataset, quality, readers
from rlhf.data.aggregate import AgreementTracker, aggregate, majority
from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.preference_dataset import load_preferences
from rlhf.data.preferences import ImportSettings, import_preferences
from rlhf.data.records import Comparison, Quarantined, Source, Vote, user
from rlhf.errors import ConfigError, DataError

# --- a test-only importer --------------------------------------------------------------------------------


class FakeImporter:
    name = "fake"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return "q" in record and "votes" in record

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        if record.get("boom"):
            raise KeyError("boom")
        if record.get("skip"):
            return
        for key in ("q", "a", "b", "votes"):
            if key not in record:
                raise BadRow(f"missing '{key}'")
        votes = [Vote(annotator, choice) for annotator, choice in record["votes"]]
        yield Comparison(user(record["q"]), record["a"], record["b"], votes, source)


@pytest.fixture
def fake_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """The only known format is "fake" (the real format modules are neither needed nor imported)."""
    module = types.ModuleType("fake_preference_importer")
    module.IMPORTER = FakeImporter()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(importers, "FORMATS", {"fake": module.__name__})


def row(
    q: str, a: str = "answer one", b: str = "answer two", votes: Any = ((None, "a"),), **extra: Any
) -> dict:
    return {"q": q, "a": a, "b": b, "votes": [list(vote) for vote in votes], **extra}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows are objects (dumped) or raw bytes (written as they are, for malformed lines)."""
    with path.open("wb") as handle:
        for item in rows:
            handle.write(item if isinstance(item, bytes) else json.dumps(item).encode() + b"\n")
    return path


def items(path: Path) -> list[Any]:
    return list(readers.read_records(path))


# --- readers --------------------------------------------------------------------------------------------


def test_jsonl_reader_quarantines_bad_lines_with_their_line_number(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [{"n": 1}, b"\n", b'{"n": 2,,}\n', b'{"n": "\xff"}\n', b"[1, 2]\n", {"n": 3}],
    )
    got = items(path)
    assert [(i.source.row, i.reason.split(" (")[0]) for i in got if isinstance(i, Quarantined)] == [
        ("line 3", "not valid JSON"),
        ("line 4", "not valid UTF-8"),
        ("line 5", "expected a JSON object, got list"),
    ]
    assert [(s.row, r) for s, r in (i for i in got if not isinstance(i, Quarantined))] == [
        ("line 1", {"n": 1}),
        ("line 6", {"n": 3}),
    ]


def test_a_file_whose_first_record_is_unreadable_is_one_error_naming_file_and_line(
    tmp_path: Path, fake_format: None
) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text("hello, this is not JSON\n{}\n")
    with pytest.raises(DataError, match=rf"^{path}:1: not valid JSON \("):
        import_preferences([path], tmp_path / "out", ImportSettings())
    csv_like = tmp_path / "data.json"
    csv_like.write_text("prompt,chosen\nhi,there\n")
    with pytest.raises(DataError, match=rf"^{csv_like}:1: not valid JSON"):
        items(csv_like)


def test_json_array_streams_items_and_places_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text('[\n {"id": 1},\n "text",\n {"id": 2}\n]\n')
    got = items(path)
    assert [(i.source.row, i.reason) for i in got if isinstance(i, Quarantined)] == [
        ("item 1", "expected a JSON object, got str")
    ]
    assert [(s.row, r) for s, r in (i for i in got if not isinstance(i, Quarantined))] == [
        ("item 0", {"id": 1}),
        ("item 2", {"id": 2}),
    ]
    # An error past the reader's first 64 KiB chunk: its line is counted across chunks.
    lines = ["["] + [f'{{"id": {i}, "text": "{"x" * 60}"}},' for i in range(3000)]
    lines[2500] = lines[2500].rstrip(",")  # missing comma: line 2501 ends an item, line 2502 starts one
    path.write_text("\n".join([*lines, '{"id": -1}]']))
    seen = 0
    with pytest.raises(DataError, match=rf"^{path}:2502:1: not valid JSON \(Extra data"):
        for _ in readers.read_records(path):
            seen += 1
    assert seen >= 2000  # the items before the error streamed out first


def test_json_object_is_one_record_and_json_lines_named_json_keep_line_numbers(tmp_path: Path) -> None:
    single = tmp_path / "one.json"
    single.write_text('{\n  "q": "hi",\n  "votes": []\n}\n')
    assert items(single) == [(Source(str(single), "object"), {"q": "hi", "votes": []})]
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "q": "hi",\n  "votes": [\n}\n')
    with pytest.raises(DataError, match=rf"^{broken}:4:1: not valid JSON"):
        items(broken)
    lines = write_jsonl(tmp_path / "lines.json", [{"n": 1}, {"n": 2}])
    assert [s.row for s, _ in items(lines)] == ["line 1", "line 2"]


def test_parquet_and_datasets_directories_yield_rows(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    table = pa.table({"q": ["a", "b", "c"], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    assert [(s.row, r["q"]) for s, r in items(tmp_path / "t.parquet")] == [
        ("row 0", "a"),
        ("row 1", "b"),
        ("row 2", "c"),
    ]

    bad = pa.array([b"fine", b"\xff\xfe"], pa.binary()).view(pa.string())  # invalid UTF-8 in a string column
    pq.write_table(pa.table({"q": bad}), tmp_path / "bad.parquet")
    got = items(tmp_path / "bad.parquet")
    assert got[0][1] == {"q": "fine"}
    assert isinstance(got[1], Quarantined) and got[1].source.row == "row 1" and "UTF-8" in got[1].reason

    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a parquet file"):
        items(tmp_path / "fake.parquet")

    ds = Dataset.from_list([{"q": str(i)} for i in range(5)])
    DatasetDict(train=ds, test=ds.select(range(2))).save_to_disk(str(tmp_path / "dd"))
    units = readers.data_files(tmp_path / "dd")
    assert units == [tmp_path / "dd" / "train", tmp_path / "dd" / "test"]
    assert [r["q"] for s, r in items(units[0])] == ["0", "1", "2", "3", "4"]
    assert items(units[1])[1][0] == Source(str(units[1]), "row 1")


def test_csv_rows_keep_line_numbers_and_bad_rows_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "good", "bad"])
        writer.writerow(["p1", "multi\nline", "x"])
        writer.writerow(["p2", "only two"])
        writer.writerow(["p3", "y", "z"])
    got = items(path)
    assert got[0] == (Source(str(path), "lines 2-3"), {"prompt": "p1", "good": "multi\nline", "bad": "x"})
    assert isinstance(got[1], Quarantined) and got[1].source.row == "line 4"
    assert got[1].reason == "not valid CSV (row has 2 fields, header has 3)"
    assert got[2][0].row == "line 5"


def test_directory_of_files_is_read_file_by_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", [{"n": 2}])
    pq.write_table(pa.table({"n": [1]}), tmp_path / "a.parquet")
    (tmp_path / "notes.txt").write_text("ignored")
    assert readers.data_files(tmp_path) == [tmp_path / "a.parquet", tmp_path / "b.jsonl"]
    with pytest.raises(DataError, match="unsupported file type"):
        readers.data_files(tmp_path / "notes.txt")


# --- quality --------------------------------------------------------------------------------------------


def comparison(
    prompt: str = "q", a: str = "first answer", b: str = "second answer", votes: Any = None
) -> Comparison:
    return Comparison(user(prompt), a, b, votes or [Vote(None, "a")], Source("f", "line 1"))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, None),
        ({"prompt": "  "}, "empty prompt"),
        ({"b": "\n"}, "empty response (response b)"),
        ({"a": "same  text", "b": " same text\n"}, "chosen identical to rejected"),
        ({"a": "caf\ufffd"}, "bad encoding: replacement character U+FFFD in response a"),
        ({"b": "x\ud800y"}, "bad encoding: lone surrogate in response b"),
        ({"prompt": "cafÃ© au lait"}, "bad encoding: mojibake 'Ã©' in prompt"),
        ({"a": 7}, "malformed comparison: response_a is int, not str"),
    ],
)
def test_quality_checks(kwargs: dict[str, Any], reason: str | None) -> None:
    assert quality.check(comparison(**kwargs)) == reason


def test_over_length_counts_prompt_plus_each_response() -> None:
    words = lambda text: len(text.split())  # noqa: E731
    short = comparison("one two three", "four five", "six")
    assert quality.check(short, words, max_tokens=5) is None
    assert (
        quality.check(short, words, max_tokens=4)
        == "over length: prompt + response a is 5 tokens > max_tokens 4"
    )
    assert quality.check(short, None, max_tokens=1) is None  # no counter, no check


def test_duplicate_keys_and_index() -> None:
    keys = quality.row_keys(user("Hello  World"), "A", "B")
    assert keys == quality.row_keys(user("Hello  World"), "B", "A")  # the pair is unordered
    normalized = quality.row_keys(user("hello world "), "a", "b")
    assert normalized.normalized == keys.normalized and normalized.exact != keys.exact
    index = quality.DuplicateIndex(capacity=8)
    assert index.first(keys, 5) is None
    assert index.first(keys, 9) == ("exact", 5)
    assert index.first(normalized, 9) == ("normalized", 5)
    many = [quality.row_keys(user(f"prompt {i}"), "a", "b") for i in range(5000)]  # forces many doublings
    assert all(index.first(k, i) is None for i, k in enumerate(many))
    assert all(index.first(k, 0) == ("exact", i) for i, k in enumerate(many))
    assert len(index) == 5001


def test_reason_categories() -> None:
    assert quality.category("over length: prompt + response a is 5 tokens > max_tokens 4") == "over length"
    assert quality.category("not valid JSON (Expecting value at column 1)") == "not valid JSON"
    assert quality.category("missing 'q'") == "missing 'q'"


# --- aggregation and agreement ------------------------------------------------------------------------


def test_majority() -> None:
    assert majority(["a", "a", "b"]) == "a"
    assert majority(["b"]) == "b"
    assert majority(["a", "b"]) == "tie"
    assert majority(["a", "b", "tie"]) == "tie"
    assert majority(["a", "tie", "tie"]) == "tie"
    assert majority([]) == "tie"


def test_ties_drop_or_keep_and_min_votes() -> None:
    tied = comparison(votes=[Vote("x", "a"), Vote("y", "b")])
    assert aggregate(tied, tied.votes, "drop", 1) == "tie dropped (ties=drop)"
    kept = aggregate(tied, tied.votes, "keep", 1)
    assert not isinstance(kept, str)
    assert (kept.tie, kept.chosen_text, kept.rejected_text) == (True, "first answer", "second answer")
    assert kept.votes == ["chosen", "rejected"]
    assert aggregate(tied, tied.votes, "keep", 3) == "too few votes: 2 < min_votes 3"
    won_by_b = comparison(votes=[Vote("x", "b"), Vote("y", "b"), Vote(None, "a")])
    record = aggregate(won_by_b, won_by_b.votes, "drop", 3)
    assert not isinstance(record, str)
    assert (record.chosen_text, record.rejected_text, record.tie) == ("second answer", "first answer", False)
    assert (record.annotators, record.votes) == (
        ["x", "y"],
        ["chosen", "chosen"],
    )  # the anonymous vote is not listed


# Six comparisons, three annotators (A, B, C); u6 has only two raters.
#
#   unit  A    B    C    | counts (a, b, tie)  m
#   u1    a    a    a    | (3, 0, 0)           3
#   u2    a    a    b    | (2, 1, 0)           3
#   u3    b    b    b    | (0, 3, 0)           3
#   u4    a    b    tie  | (1, 1, 1)           3
#   u5    tie  tie  a    | (1, 0, 2)           3
#   u6    b    b    -    | (0, 2, 0)           2
#
# Krippendorff's alpha (nominal). Coincidences o_ck = Σ_u n_uc·(n_uk − [c=k]) / (m_u − 1):
#   u1: o_aa += 3·2/2 = 3
#   u2: o_aa += 2·1/2 = 1;  o_ab = o_ba += 2·1/2 = 1;  o_bb += 1·0/2 = 0
#   u3: o_bb += 3·2/2 = 3
#   u4: every off-diagonal cell += 1·1/2 = 0.5
#   u5: o_at = o_ta += 1·2/2 = 1;  o_tt += 2·1/2 = 1
#   u6: o_bb += 2·1/1 = 2
#   o = [[4, 1.5, 1.5], [1.5, 5, 0.5], [1.5, 0.5, 1]]   (rows a, b, tie)
#   n_a = 7, n_b = 7, n_tie = 3, n = 17 (= 5·3 + 2 pairable values)
#   Σ_{c≠k} o_ck = 2·(1.5 + 1.5 + 0.5) = 7;  Σ_{c≠k} n_c·n_k = 2·(7·7 + 7·3 + 7·3) = 182
#   alpha = 1 − (n − 1)·7/182 = 1 − 16·7/182 = 1 − 112/182 = 70/182 = 5/13 ≈ 0.384615
#
# Fleiss' kappa over the five units with the modal three raters (u6 left out):
#   P_i = (Σ_j n_ij² − 3)/(3·2):  u1 (9−3)/6 = 1;  u2 (5−3)/6 = 1/3;  u3 1;  u4 (3−3)/6 = 0;  u5 (5−3)/6 = 1/3
#   P̄ = (1 + 1/3 + 1 + 0 + 1/3)/5 = 8/15
#   category totals a 7, b 5, tie 3 of 15 → P̄_e = (49 + 25 + 9)/225 = 83/225
#   kappa = (8/15 − 83/225)/(1 − 83/225) = (120 − 83)/(225 − 83) = 37/142 ≈ 0.260563
#
# Leave-one-out agreement (the others' unique majority; none → the unit does not count):
#   A: u1 (a,a)→a ✓  u2 (a,b) -  u3 (b,b)→b ✓  u4 (b,tie) -  u5 (tie,a) -  u6 (b)→b ✓   → 3/3
#   B: u1 ✓  u2 (a,b) -  u3 ✓  u4 (a,tie) -  u5 (tie,a) -  u6 (b)→b ✓                   → 3/3
#   C: u1 ✓  u2 (a,a)→a ✗(b)  u3 ✓  u4 (a,b) -  u5 (tie,tie)→tie ✗(a)                   → 2/4
HAND_TABLE = [
    {"A": "a", "B": "a", "C": "a"},
    {"A": "a", "B": "a", "C": "b"},
    {"A": "b", "B": "b", "C": "b"},
    {"A": "a", "B": "b", "C": "tie"},
    {"A": "tie", "B": "tie", "C": "a"},
    {"A": "b", "B": "b"},
]


def test_agreement_matches_the_hand_computation() -> None:
    tracker = AgreementTracker()
    for unit in HAND_TABLE:
        tracker.add(
            [Vote(name, choice) for name, choice in unit.items()] + [Vote(None, "a")]
        )  # anonymous: ignored
    result = tracker.result()
    assert result.krippendorff_alpha == pytest.approx(5 / 13, abs=1e-9)
    assert result.fleiss_kappa == pytest.approx(37 / 142, abs=1e-9)
    assert (result.alpha_units, result.fleiss_units, result.fleiss_raters) == (6, 5, 3)
    stats = {name: (s.votes, s.compared, s.agreed) for name, s in result.annotators.items()}
    assert stats == {"A": (6, 3, 3), "B": (6, 3, 3), "C": (5, 4, 2)}
    assert result.annotators["C"].agreement == 0.5
    assert result.below(0.75) == {"C"}


def test_agreement_is_undefined_without_variation() -> None:
    tracker = AgreementTracker()
    tracker.add([Vote("x", "a"), Vote("y", "a")])
    tracker.add([Vote("x", "b")])  # one rater: no unit
    result = tracker.result()
    assert (result.krippendorff_alpha, result.fleiss_kappa, result.alpha_units) == (None, None, 1)


def test_excluding_a_contrarian_annotator_changes_the_outcome(tmp_path: Path, fake_format: None) -> None:
    good, bad = ("g1", "g2"), "bad"
    rows = [
        row("p1", votes=[(good[0], "a"), (good[1], "a"), (bad, "b")]),
        row("p2", votes=[(good[0], "b"), (good[1], "b"), (bad, "a")]),
        row("p3", votes=[(good[0], "a"), (bad, "b")]),  # a tie while bad counts
        row("p4", votes=[(good[1], "b"), (bad, "a")]),  # a tie while bad counts
        *(row(f"p{i}", votes=[(good[0], c), (good[1], c)]) for i, c in [(5, "a"), (6, "b"), (7, "a")]),
    ]
    source = write_jsonl(tmp_path / "votes.jsonl", rows)
    everyone = import_preferences([source], tmp_path / "all", ImportSettings(test_fraction=0))
    assert (everyone.kept, everyone.by_reason) == (5, {"tie dropped": 2})
    strict = import_preferences(
        [source], tmp_path / "strict", ImportSettings(test_fraction=0, min_annotator_agreement=0.5)
    )
    assert (strict.kept, strict.quarantined, strict.excluded_annotators) == (7, 0, ("bad",))
    manifest = json.loads(strict.manifest_path.read_text())
    assert manifest["annotators"]["bad"] == {"votes": 4, "compared": 4, "agreement": 0.0, "excluded": True}
    assert manifest["annotators"]["g1"]["agreement"] == 0.75 and not manifest["annotators"]["g1"]["excluded"]
    assert manifest["agreement"]["krippendorff_alpha"] == 1.0  # only the two who agree are left
    assert manifest["agreement"]["before_exclusion"]["krippendorff_alpha"] < 0.1
    records = {r["prompt"][0]["content"]: r for r in load_preferences(strict.out_dir)["train"]}
    assert records["p3"]["chosen"][0]["content"] == "answer one" and records["p3"]["annotators"] == ["g1"]
    assert records["p4"]["chosen"][0]["content"] == "answer two"
    assert "| bad | 4 | 4 | 0.000 | yes |" in strict.report_path.read_text()


# --- the import: accounting, split, output --------------------------------------------------------------


def test_every_row_is_accounted_for_with_a_reason_and_a_location(tmp_path: Path, fake_format: None) -> None:
    two = [("x", "a"), ("y", "a")]
    lines: list[Any] = [
        row("good one", votes=two),  # line 1
        row("good two", votes=two),  # 2
        row("good one", votes=two),  # 3 same comparison as line 1: a merged vote (x and y counted once)
        row("GOOD   one ", "Answer one", "answer  TWO", votes=two),  # 4 normalized duplicate of line 1
        b"{oops\n",  # 5
        b'{"q": "\xff"}\n',  # 6
        b'"a string"\n',  # 7
        {"q": "no answers", "votes": []},  # 8 importer's BadRow
        row("boom", boom=True),  # 9 importer crash
        row("skip", skip=True),  # 10 no comparisons
        row(" ", votes=two),  # 11
        row("empty", b="", votes=two),  # 12
        row("same", "x  y", "x y", votes=two),  # 13
        row("encoding", "caf\ufffd", votes=two),  # 14
        row("long", "word " * 60, votes=two),  # 15
        row("tie", votes=[("x", "a"), ("y", "b")]),  # 16
        row("lonely vote", votes=[("x", "a")]),  # 17
        row("malformed", 42, votes=two),  # 18
        b"\n",  # 19 blank: not a row
        row("good three", votes=[("x", "b"), ("y", "b"), (None, "a")]),  # 20
    ]
    source = write_jsonl(tmp_path / "mixed.jsonl", lines)
    settings = ImportSettings(min_votes=2, max_tokens=50, test_fraction=0)
    report = import_preferences([source], tmp_path / "out", settings, count_tokens=lambda t: len(t.split()))

    assert (report.read, report.kept, report.quarantined, report.duplicates) == (19, 3, 14, 2)
    assert report.read == report.kept + report.quarantined + report.duplicates
    quarantined = [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]
    assert [(q["source_row"], quality.category(q["reason"])) for q in quarantined] == [
        ("line 5", "not valid JSON"),
        ("line 6", "not valid UTF-8"),
        ("line 7", "expected a JSON object, got str"),
        ("line 8", "missing 'a'"),
        ("line 9", "importer error"),
        ("line 10", "no comparisons"),
        ("line 11", "empty prompt"),
        ("line 12", "empty response"),
        ("line 13", "chosen identical to rejected"),
        ("line 14", "bad encoding"),
        ("line 15", "over length"),
        ("line 18", "malformed comparison"),
        ("line 16", "tie dropped"),  # the voting pass's, after every record is read
        ("line 17", "too few votes"),
    ]
    assert all(q["source_file"] == str(source) and q["raw"] for q in quarantined)
    assert quarantined[4]["reason"] == "importer error: KeyError: 'boom'"
    assert quarantined[12]["reason"] == "tie dropped (ties=drop)"
    assert quarantined[13]["reason"] == "too few votes: 1 < min_votes 2"
    duplicates = [json.loads(line) for line in report.duplicates_path.read_text().splitlines()]
    assert [(d["source_row"], d["kind"], d["duplicate_of"]["source_row"]) for d in duplicates] == [
        ("line 3", "merged vote", "line 1"),
        ("line 4", "normalized", "line 1"),
    ]
    assert duplicates[0]["duplicate_of"] == {
        "split": "train",
        "row": 0,
        "source_file": str(source),
        "source_row": "line 1",
    }

    manifest = json.loads(report.manifest_path.read_text())
    assert (
        manifest["counts"]["by_reason"]["not valid JSON"] == 1
        and sum(manifest["counts"]["by_reason"].values()) == 14
    )
    assert manifest["sources"] == [
        {
            "file": str(source),
            "sha256": readers.sha256_of(source),
            "format": "fake",
            "records": 19,
            "comparisons": 13,
        }
    ]
    text = report.report_path.read_text()
    assert "rows read = kept + quarantined + duplicates: 19 = 3 + 14 + 2" in text
    assert "| over length | 1 |" in text
    good_three = load_preferences(report.out_dir)["train"][2]
    assert (good_three["chosen"][0]["content"], good_three["votes"]) == ("answer two", ["chosen", "chosen"])


def test_whole_file_problems_are_one_error(tmp_path: Path, fake_format: None) -> None:
    wrong = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError, match=rf"^{wrong}:1: cannot tell the format"):
        import_preferences([wrong], tmp_path / "out", ImportSettings())
    with pytest.raises(DataError, match=rf"^{wrong}:1: not in the 'fake' format \(missing 'q'\)"):
        import_preferences([wrong], tmp_path / "out", ImportSettings(format="fake"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        import_preferences([empty], tmp_path / "out", ImportSettings())
    with pytest.raises(DataError, match="unknown format 'nope'"):
        import_preferences([wrong], tmp_path / "out", ImportSettings(format="nope"))
    with pytest.raises(ConfigError, match="max_tokens"):
        import_preferences([wrong], tmp_path / "out", ImportSettings(max_tokens=10))
    with pytest.raises(ConfigError, match="ties"):
        ImportSettings(ties="coin")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "other.jsonl"]


def test_split_keeps_each_prompt_on_one_side_and_is_deterministic(tmp_path: Path, fake_format: None) -> None:
    rows = [
        row(f"Prompt {i % 150}", f"answer {i}", f"other {i}") for i in range(600)
    ]  # four pairs per prompt
    rows += [row(f"  prompt {i}  ", "variant a", "variant b") for i in range(150)]  # same prompts, normalized
    source = write_jsonl(tmp_path / "rows.jsonl", rows)

    def split_prompts(seed: int, name: str) -> tuple[str, dict[str, set[str]]]:
        report = import_preferences(
            [source], tmp_path / name, ImportSettings(test_fraction=0.3, split_seed=seed)
        )
        data = load_preferences(report.out_dir)
        prompts = {
            s: {quality.normalize(r["prompt"][0]["content"]) for r in data[s]} for s in ("train", "test")
        }
        return report.fingerprint, prompts

    fingerprint, prompts = split_prompts(0, "a")
    assert not prompts["train"] & prompts["test"]
    assert 0.15 < len(prompts["test"]) / 150 < 0.45
    again, same = split_prompts(0, "b")
    assert (again, same) == (fingerprint, prompts)
    other, reseeded = split_prompts(1, "c")
    assert reseeded["test"] != prompts["test"] and other != fingerprint


def test_the_output_loads_with_datasets_and_a_corrupted_file_is_caught(
    tmp_path: Path, fake_format: None
) -> None:
    from datasets import load_dataset

    source = write_jsonl(tmp_path / "rows.jsonl", [row(f"p{i}") for i in range(50)])
    report = import_preferences([source], tmp_path / "out", ImportSettings(test_fraction=0.2))
    data = load_preferences(report.out_dir)
    assert (data["train"].num_rows, data["test"].num_rows) == (report.train, report.test)
    assert report.train + report.test == 50 and report.test > 0
    assert data["train"][0]["prompt"] == [
        {"role": "user", "content": data["train"][0]["prompt"][0]["content"]}
    ]
    assert data["train"][0]["rejected"][0]["role"] == "assistant"
    plain = load_dataset(str(report.out_dir))  # the directory alone is a dataset `datasets` understands
    assert (plain["train"].num_rows, plain["test"].num_rows) == (report.train, report.test)

    only_train = import_preferences([source], tmp_path / "all-train", ImportSettings(test_fraction=0))
    assert load_preferences(only_train.out_dir)["test"].num_rows == 0

    data_file = report.out_dir / "train" / "data.parquet"
    data_file.write_bytes(data_file.read_bytes()[:-100] + bytes(100))
    with pytest.raises(DataError, match="fingerprint"):
        load_preferences(report.out_dir)


def test_a_crash_mid_write_leaves_no_dataset_and_keeps_the_previous_one(
    tmp_path: Path, fake_format: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", [row(f"p{i}") for i in range(100)])
    monkeypatch.setattr(preference_dataset, "BATCH_ROWS", 10)
    real_flush = preference_dataset.SplitWriter.flush
    calls = []

    def crashing_flush(self: preference_dataset.SplitWriter) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        real_flush(self)

    monkeypatch.setattr(preference_dataset.SplitWriter, "flush", crashing_flush)
    with pytest.raises(OSError, match="injected"):
        import_preferences([source], tmp_path / "out", ImportSettings())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]  # no dataset, no leftovers

    monkeypatch.setattr(preference_dataset.SplitWriter, "flush", real_flush)
    first = import_preferences([source], tmp_path / "out", ImportSettings())
    calls.clear()
    monkeypatch.setattr(preference_dataset.SplitWriter, "flush", crashing_flush)
    with pytest.raises(OSError, match="injected"):
        import_preferences([source], tmp_path / "out", ImportSettings(split_seed=1))
    assert json.loads(first.manifest_path.read_text())["fingerprint"] == first.fingerprint
    assert load_preferences(tmp_path / "out")["train"].num_rows == first.train
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "rows.jsonl"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an imported preference dataset"):
        import_preferences([source], tmp_path / "mine", ImportSettings())
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


# 50,000 rows of about 1 KiB: the file is ~50 MiB, and holding its rows as Python objects would take several
# times that. Streaming holds a batch of pending rows per split and the duplicate table (~2 MiB here).
STREAMING_BOUND_MIB = 32


@pytest.mark.slow
def test_a_large_import_streams_in_bounded_memory(tmp_path: Path, fake_format: None) -> None:
    source = tmp_path / "big.jsonl"
    filler = "lorem ipsum dolor sit amet " * 15
    with source.open("w") as handle:
        for i in range(50_000):
            line = row(f"question {i} {filler[:100]}", f"yes {i} {filler}", f"no {i} {filler}")
            handle.write(json.dumps(line) + "\n")
    assert source.stat().st_size > 40 * 2**20
    # A first small import loads the modules the import uses lazily (pyarrow loads pandas), which are not
    # the import's memory.
    import_preferences(
        [write_jsonl(tmp_path / "warm.jsonl", [row("q")])], tmp_path / "warm", ImportSettings()
    )
    tracemalloc.start()
    try:
        report = import_preferences([source], tmp_path / "out", ImportSettings())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.read, report.kept) == (50_000, 50_000)
    assert peak < STREAMING_BOUND_MIB * 2**20, f"peak {peak / 2**20:.1f} MiB"
