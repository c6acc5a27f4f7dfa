"""Property-based: no export, however malformed, knocks an import over or loses a row.

For every importer, hypothesis writes a file that opens with one good record of the format and goes on with
generated ones: the good record with a value replaced (wrong types, lone surrogates, huge strings, nesting
past the depth cap and Python's recursion limit), a key dropped, chosen and rejected swapped, an earlier record repeated, or a line that
is not a record at all (invalid UTF-8, not JSON, a bare value). The file is written as JSON lines, as a JSON
array and gzipped, and imported with the format detected (and, as JSON lines, given). Whatever comes in:

- no exception escapes the import;
- every row is accounted for: rows read = kept + quarantined + duplicates, every record read gives at least
  one row, and quarantine.jsonl / duplicates.jsonl hold one line per quarantined / duplicate row;
- the dataset written loads, with `kept` rows;
- the Python heap the import allocates stays bounded (tracemalloc's peak, with a 1 MiB string in a record).

CI runs `EXAMPLES` examples per case (`derandomize`: the same ones every run); `bench/import_fuzz.py` runs
the same properties with many more.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.data.importers import ImportOptions
from rlhf.data.preference_dataset import load_preferences
from rlhf.data.preferences import ImportSettings, import_preferences
from tests.test_import_annotation_tools import PAIR_DATA, annotation, pairwise, task
from tests.test_import_files import SAMPLES
from tests.test_import_public_formats import COLUMNS, csv_row

EXAMPLES = int(os.environ.get("RLHF_FUZZ_EXAMPLES", "6"))
FIXED = "RLHF_FUZZ_RANDOM" not in os.environ  # CI: the same examples every run; the bench: fresh ones
HEAP_LIMIT = 96 * 2**20  # the import's Python heap peak, for files of a few MiB at most
DEEP = "\x00deep\x00"  # where the writer puts a nesting too deep to build as a Python object

GOOD: dict[str, tuple[dict[str, Any], ImportOptions]] = {
    **{name: (rows[0], ImportOptions()) for name, (_, rows, _) in SAMPLES.items()},
    "labelstudio": (task(PAIR_DATA, [annotation(11, 1, [pairwise("left")])]), ImportOptions()),
    "mapped": (csv_row(), ImportOptions(column_map=COLUMNS)),
}
DETECTED = sorted(set(GOOD) - {"mapped"})  # mapped is never detected: it needs its column map

odd_strings = st.sampled_from(["", "\ud800", "a\udfffb", "\x00", "é\u2028", "\ufeff", "x" * 2**20])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | odd_strings
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
raw_lines = st.sampled_from(
    [b"\xff\xfe latin-1 \xe9t\xe9", b'{"chosen": "caf\xe9"}', b"{not json", b"[]", b"null", b"42",
     b'"a string"', b"[" * 3000 + b"]" * 3000, b'{"a":' * 2000 + b"1" + b"}" * 2000]
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a record a value can be put: each key of each object, each item of each list."""
    found = []
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


def _set(record: Any, path: tuple[Any, ...], value: Any, drop: bool = False) -> None:
    *parents, last = path
    for key in parents:
        record = record[key]
    if drop:
        del record[last]
    else:
        record[last] = value


@st.composite
def records(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """One line of the export: the good record mutated, or a line that is no record."""
    kind = draw(st.sampled_from(["replace", "drop", "deep", "swap", "same", "raw"]))
    if kind == "raw":
        return draw(raw_lines)
    record = copy.deepcopy(good)
    paths = _paths(record)
    if kind in ("replace", "drop", "deep") and paths:
        path = draw(st.sampled_from(paths))
        value = DEEP if kind == "deep" else draw(json_values)
        _set(record, path, value, drop=kind == "drop")
    if kind == "swap":  # chosen and rejected (or the format's first two responses) the other way round
        pairs = [("chosen", "rejected"), ("response-1", "response-2"), ("good", "bad")]
        for first, second in pairs:
            if first in record and second in record:
                record[first], record[second] = record[second], record[first]
    text = json.dumps(record, ensure_ascii=True)  # escapes keep lone surrogates writable, as `\ud800`
    depth = draw(st.integers(65, 3000))  # past the cap (64) and Python's recursion limit (1000)
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth).encode()


def _exports(tmp_path: Path, lines: list[bytes]) -> dict[str, Path]:
    """The same records as JSON lines, gzipped JSON lines and a JSON array (of the lines that are JSON)."""
    jsonl = tmp_path / "export.jsonl"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    gz = tmp_path / "export.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    array = tmp_path / "export.json"
    items = [
        line for line in lines if line.lstrip()[:1] in (b"{", b"[", b"n", b"4", b'"') and b"{not" not in line
    ]
    array.write_bytes(b"[\n" + b",\n".join(items) + b"\n]")
    return {"jsonl": jsonl, "jsonl.gz": gz, "json": array}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines split at "\n" only, as JSON lines are: a string may hold U+2028 (which `splitlines` splits at)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def _check_import(source: Path, out: Path, settings_: ImportSettings, records_written: int) -> None:
    tracemalloc.start()
    try:
        report = import_preferences([source], out, settings_)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.read == report.kept + report.quarantined + report.duplicates, report.identity
    assert report.read >= records_written
    quarantined = _jsonl(report.quarantine_path)
    assert len(quarantined) == report.quarantined
    assert all(entry["reason"] for entry in quarantined)
    assert len(_jsonl(report.duplicates_path)) == report.duplicates
    dataset = load_preferences(out)
    assert sum(len(split) for split in dataset.values()) == report.kept
    assert peak < HEAP_LIMIT, f"the import's heap peaked at {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_no_export_knocks_an_import_over(fmt: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    good, options = GOOD[fmt]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=FIXED, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(st.lists(records(good), min_size=1, max_size=8))
    def check(lines: list[bytes]) -> None:
        folder = tmp_path_factory.mktemp(fmt)
        lines = [json.dumps(good).encode(), *lines]
        detected = fmt if fmt not in DETECTED else None
        for kind, source in _exports(folder, lines).items():
            written = len(lines) if kind != "json" else source.read_bytes().count(b"\n") - 1
            for chosen in {fmt, detected} if kind == "jsonl" else {detected}:
                settings_ = ImportSettings(format=chosen, options=options, ties="keep", test_fraction=0.5)
                _check_import(source, folder / f"out-{kind}-{chosen}", settings_, written)

    check()


@pytest.mark.parametrize("fmt", DETECTED)
def test_bad_leading_records_are_quarantined_not_fatal(fmt: str, tmp_path: Path) -> None:
    """Detection looks past bad first records: they are quarantined like any other row."""
    good, options = GOOD[fmt]
    broken = copy.deepcopy(good)
    _set(broken, _paths(broken)[0], None)
    lines = [
        b"\xff\xfe latin-1 \xe9t\xe9",
        b"{not json",
        json.dumps(broken).encode(),
        json.dumps(good).encode(),
    ]
    source = _exports(tmp_path, lines)["jsonl"]
    _check_import(source, tmp_path / "out", ImportSettings(options=options, test_fraction=0), len(lines))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sources"][0]["format"] == fmt
    assert manifest["counts"]["quarantined"] >= 2 and manifest["counts"]["kept"] >= 1
