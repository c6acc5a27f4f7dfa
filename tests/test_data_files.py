"""Stage data files: JSONL, parquet and datasets directories; bad input named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from rlhf.data.files import SFT_FORMS, load_rows
from rlhf.errors import DataError

ROW = {"prompt": [{"role": "user", "content": "name two animals"}],
       "completion": [{"role": "assistant", "content": "cat dog"}]}  # fmt: skip


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_parquet_and_datasets_dir_load_alike(tmp_path: Path) -> None:
    rows = [ROW, {**ROW, "completion": [{"role": "assistant", "content": "cow"}]}]
    jsonl = _jsonl(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "d_dir"))
    for source in (jsonl, tmp_path / "d.parquet", tmp_path / "d_dir"):
        dataset, form = load_rows(source, SFT_FORMS)
        assert form == "prompt-completion"
        assert [r["completion"][0]["content"] for r in dataset] == ["cat dog", "cow"]


def test_messages_form_is_recognized(tmp_path: Path) -> None:
    row = {"messages": ROW["prompt"] + ROW["completion"]}
    _, form = load_rows(_jsonl(tmp_path / "m.jsonl", [json.dumps(row)]), SFT_FORMS)
    assert form == "messages"


def test_malformed_line_is_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [json.dumps(ROW), "", '{"prompt": "x", "completion": '])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_rows(path, SFT_FORMS)


def test_wrong_keys_are_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "keys.jsonl", [json.dumps(ROW), json.dumps({"question": "q", "answer": "a"})])
    with pytest.raises(
        DataError, match=r"keys\.jsonl:2: expected keys messages or prompt/completion or text"
    ):
        load_rows(path, SFT_FORMS)


def test_mixed_forms_are_rejected(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "mixed.jsonl", [json.dumps(ROW), json.dumps({"text": "hello"})])
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: row is in 'text' form but earlier rows are"):
        load_rows(path, SFT_FORMS)


def test_bad_message_is_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "msg.jsonl", [json.dumps({"prompt": [{"role": "user"}], "completion": "x"})])
    with pytest.raises(DataError, match=r"msg\.jsonl:1: prompt\[0\] must be a message"):
        load_rows(path, SFT_FORMS)


def test_bad_encoding_is_named(tmp_path: Path) -> None:
    path = tmp_path / "enc.jsonl"
    path.write_bytes(json.dumps(ROW).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"enc\.jsonl:2: not valid UTF-8"):
        load_rows(path, SFT_FORMS)


def test_missing_and_empty_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.jsonl: data file not found"):
        load_rows(tmp_path / "absent.jsonl", SFT_FORMS)
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_rows(_jsonl(tmp_path / "empty.jsonl", [""]), SFT_FORMS)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported data file"):
        load_rows(tmp_path / "d.csv", SFT_FORMS)
