"""Every format through files as its tool or dataset writes them: detected, imported, bad rows quarantined
with their line, and the accounting identity holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.data.preference_dataset import load_preferences
from rlhf.data.preferences import ImportSettings, import_preferences
from tests.test_import_annotation_tools import flat_row
from tests.test_import_public_formats import HH_ROW, NECTAR_ROW, UF_ROW, battle, openai_row

SAMPLES: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    # format: (file kind, good rows, a malformed row of that format)
    "hh": ("jsonl", [HH_ROW], {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"}),
    "ultrafeedback": ("jsonl", [UF_ROW], {**UF_ROW, "completions": []}),
    "nectar": ("jsonl", [NECTAR_ROW], {**NECTAR_ROW, "answers": "not a list"}),
    "arena": (
        "json",
        [
            battle("model_a"),
            battle(
                "tie",
                conversation_b=[
                    {"role": "user", "content": "What is Python?"},
                    {"role": "assistant", "content": "A language."},
                ],
            ),
        ],
        battle("model_b", conversation_a=None),
    ),
    "openai": ("jsonl", [openai_row()], openai_row(preferred_output=[])),
    "trl": (
        "parquet",
        [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}],
        {"prompt": "The sky is", "chosen": None, "rejected": " green."},
    ),
    "argilla": ("jsonl", [flat_row(["response-1"], ["u1"], ["submitted"])], flat_row(None, None, None)),
}


def write(path: Path, kind: str, rows: list[dict[str, Any]]) -> Path:
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=1))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_each_format_from_its_file(fmt: str, tmp_path: Path) -> None:
    kind, good, malformed = SAMPLES[fmt]
    source = write(tmp_path / f"export.{kind}", kind, [*good, malformed])
    report = import_preferences([source], tmp_path / "out", ImportSettings(test_fraction=0, ties="keep"))
    manifest = json.loads(report.manifest_path.read_text())
    assert manifest["sources"][0]["format"] == fmt  # auto-detected
    assert report.read == report.kept + report.quarantined + report.duplicates
    assert report.kept >= len(good) and report.quarantined >= 1
    quarantined = [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]
    row_of_malformed = str(len(good) + (1 if kind == "jsonl" else 0))  # lines count from 1, items from 0
    assert any(row_of_malformed in q["source_row"] for q in quarantined), quarantined
    assert len(load_preferences(tmp_path / "out")["train"]) == report.kept


def test_several_files_of_different_formats_make_one_dataset(tmp_path: Path) -> None:
    sources = [write(tmp_path / f"{fmt}.{kind}", kind, good) for fmt, (kind, good, _) in SAMPLES.items()]
    report = import_preferences(sources, tmp_path / "out", ImportSettings(test_fraction=0, ties="keep"))
    formats = {s["format"] for s in json.loads(report.manifest_path.read_text())["sources"]}
    assert formats == set(SAMPLES)
    assert report.read == report.kept + report.quarantined + report.duplicates and report.kept >= len(SAMPLES)


ODD_JSON = [
    b'{"n": 123456789012345678901234567890, "m": -9223372036854775809}',  # over 64 bits: exact ints
    b'{"margin": NaN, "x": Infinity}',  # not JSON to orjson, read by json.loads as before
    b'{"big": 1e400}',  # inf to json.loads, an error to orjson
    b'{"s": "\\ud800 lone", "t": "\\ud83d\\ude00"}',  # a lone surrogate escape, and a pair
    b'{"a": 1, "b": 2, "a": 3}',  # the last of a repeated key, in the first one's place
    b'{"bad": "\xff"}',  # not UTF-8: quarantined with json's reason
    b"[1, 2]",  # not an object
]


@pytest.mark.parametrize("kind", ["jsonl", "json"])
def test_records_read_as_json_loads_reads_them(kind: str, tmp_path: Path) -> None:
    """The fast parser (orjson) gives what `json.loads` gives, or leaves the record to it."""
    from rlhf.data import readers
    from rlhf.data.records import Quarantined

    path = tmp_path / f"odd.{kind}"
    path.write_bytes(b"\n".join(ODD_JSON) + b"\n" if kind == "jsonl" else b"[" + b",\n".join(ODD_JSON) + b"]")
    items = list(readers.read_records(path))
    records = [record for item in items if not isinstance(item, Quarantined) for record in [item[1]]]
    readable = [line for line in ODD_JSON if b"\xff" not in line and line.startswith(b"{")]
    expected = [json.loads(line.decode("utf-8")) for line in readable]
    if kind == "json":  # an array item's bad byte is a U+FFFD for the quality checks, not a quarantine
        expected.insert(5, {"bad": "\ufffd"})
    assert repr(records) == repr(expected)
    assert [type(value) for value in records[0].values()] == [int, int]
    reasons = [item.reason for item in items if isinstance(item, Quarantined)]
    if kind == "jsonl":
        assert reasons == [
            "not valid UTF-8 (invalid start byte at byte 9)",
            "expected a JSON object, got list",
        ]
    else:
        assert reasons == ["expected a JSON object, got list"]
