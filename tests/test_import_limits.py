"""Imports that cannot be knocked over: records over a depth or size limit, lone surrogates, compressed files,
bad first rows, and a killed import. Each case is a real file on disk; the identity read = kept + quarantined
+ duplicates holds in every one."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.data import readers, streams
from rlhf.data.importers import ImportOptions
from rlhf.data.preferences import ImportReport, ImportSettings, import_preferences
from rlhf.data.records import Quarantined, Source
from rlhf.data.streams import Limits
from rlhf.errors import ConfigError, DataError
from tests.conftest import REPO, run_cli
from tests.test_import_core import fake_format, row  # noqa: F401  (a fixture)
from tests.test_import_public_formats import HH_ROW

DEEP = 200_000


def deep(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


def quarantined(report: ImportReport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]


def accounted(report: ImportReport) -> bool:
    return report.read == report.kept + report.quarantined + report.duplicates


# --- 4. bounded resources per record ----------------------------------------------------------------------

MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))  # the unbounded parser hits this
from rlhf.data import readers, streams
from rlhf.data.importers import ImportOptions
for item in readers.read_records(Path(sys.argv[1])):
    print(getattr(item, "reason", None) or "ok", getattr(item, "source", None) or item[0])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]  # this program's peak
print("peak_rss_mib", int(hwm.split()[1]) / 1024)  # (ru_maxrss would carry the forking parent's over exec)
"""


def test_an_array_item_nested_200k_deep_is_quarantined_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(f'[{{"q": "first"}}, {deep(DEEP)}, {{"q": "last"}}]')
    assert 390_000 < path.stat().st_size < 410_000
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok") and lines[2].startswith("ok")
    assert lines[1].startswith("record too deep (nested over 64 levels; max_depth)") and "item 1" in lines[1]
    assert float(lines[3].split()[1]) < 200, lines[3]  # peak RSS, MiB


@pytest.mark.usefixtures("fake_format")
def test_deep_records_are_quarantined_with_their_location_and_the_import_goes_on(tmp_path: Path) -> None:
    at_cap = {**row("at the cap"), "x": json.loads(deep(63))}  # the object is level 1: 64 in all
    lines = [
        json.dumps(row("first")),
        deep(DEEP),  # RecursionError in json.loads, unless measured first
        json.dumps({**row("over"), "x": json.loads(deep(64))}),
        json.dumps(at_cap),
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    array = tmp_path / "items.json"
    array.write_text(f"[{json.dumps(row('a'))},\n{deep(10_000)},\n{json.dumps(row('b'))}]")
    report = import_preferences([jsonl, array], tmp_path / "out", ImportSettings(test_fraction=0))
    assert (report.read, report.kept, report.quarantined) == (7, 4, 3) and accounted(report)
    where = [(q["source_file"], q["source_row"], q["reason"].split(" (")[0]) for q in quarantined(report)]
    assert where == [
        (str(jsonl), "line 2", "record too deep"),
        (str(jsonl), "line 3", "record too deep"),
        (str(array), "item 1", "record too deep"),
    ]
    assert report.by_reason == {"record too deep": 3}
    # the limit is a setting, recorded in the manifest
    strict = import_preferences([jsonl], tmp_path / "strict", ImportSettings(max_depth=3))
    assert strict.kept == 1 and strict.by_reason == {"record too deep": 3}
    settings = json.loads(strict.manifest_path.read_text())["settings"]
    assert (settings["max_depth"], settings["max_record_bytes"]) == (3, 64 * 2**20)


def test_records_at_the_highest_depth_limit_are_parsed_checked_and_quarantined_without_recursion_errors(
    tmp_path: Path,
) -> None:
    pair = {"prompt": "hi", "chosen": "a", "rejected": "b"}
    source = tmp_path / "trl.jsonl"
    source.write_text(
        json.dumps(pair)
        + "\n"
        + json.dumps({**pair, "chosen": json.loads(deep(255))})  # a bad row: its excerpt is json.dumps'd
        + "\n"
        + deep(256)  # not an object: its excerpt is repr'd
        + "\n"
    )
    report = import_preferences([source], tmp_path / "out", ImportSettings(max_depth=256))
    assert (report.read, report.kept, report.quarantined) == (3, 1, 2)
    assert "record too deep" not in report.by_reason


@pytest.mark.usefixtures("fake_format")
def test_a_huge_line_or_item_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    huge = 20 * 2**20  # 20 MiB of text in one record, against a 1 MiB limit
    jsonl = tmp_path / "rows.jsonl"
    with jsonl.open("w") as handle:
        handle.write(json.dumps(row("first")) + "\n")
        handle.write(json.dumps({**row("huge"), "pad": "y" * huge}) + "\n")
        handle.write(json.dumps(row("last")) + "\n")
    array = tmp_path / "items.json"
    with array.open("w") as handle:
        handle.write(
            f'[{json.dumps(row("a"))}, {{"pad": "{"z" * huge}", "n": [1, 2]}}, {json.dumps(row("b"))}]'
        )
    settings = ImportSettings(test_fraction=0, max_record_bytes=2**20)
    tracemalloc.start()
    try:
        report = import_preferences([jsonl, array], tmp_path / "out", settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert (report.read, report.kept) == (6, 4) and accounted(report)
    assert [(q["source_row"], q["reason"]) for q in quarantined(report)] == [
        ("line 2", "record too large (over 1 MiB; max_record_bytes)"),
        ("item 1", "record too large (over 1 MiB; max_record_bytes)"),
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(JSON, max_size=8),
    indent=st.sampled_from([None, 0, 2]),
    chunk=st.sampled_from([1, 7, 4096]),
)
def test_array_items_split_by_the_scan_equal_json_loads(
    values: list[Any], indent: int | None, chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the strings hold (quotes, escapes, brackets, commas, any character) and wherever the read
    chunks end, the items are the array's items."""
    monkeypatch.setattr(streams, "CHUNK", chunk)
    path = tmp_path / "values.json"
    path.write_text(
        json.dumps(values, indent=indent, ensure_ascii=False), encoding="utf-8", errors="surrogatepass"
    )
    got = list(readers.read_records(path, Limits(max_depth=256)))
    assert len(got) == len(values)
    for index, (item, value) in enumerate(zip(got, values, strict=True)):
        if isinstance(value, dict):
            assert item == (Source(str(path), f"item {index}"), value)
        else:
            assert isinstance(item, Quarantined) and item.reason.startswith("expected a JSON object")


def test_a_csv_line_or_field_over_the_limit_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    big = "y" * 3 * 2**20
    path.write_text(f'p,good,bad\np1,a,b\np2,{big},c\np3,"multi\n{big}",d\np4,e,f\n')
    got = list(readers.read_records(path, Limits(max_record_bytes=2**20)))
    assert [(i.source.row, i.reason.split(" (")[0]) for i in got if isinstance(i, Quarantined)] == [
        ("line 3", "record too large"),
        ("line 5", "record too large"),
    ]
    assert [(s.row, r["p"]) for s, r in (i for i in got if not isinstance(i, Quarantined))] == [
        ("line 2", "p1"),
        ("line 6", "p4"),
    ]


def test_a_top_level_object_file_over_a_limit_is_one_quarantined_record(tmp_path: Path) -> None:
    deep_object = tmp_path / "deep.json"
    deep_object.write_text('{"x": ' + deep(DEEP) + "}")
    big_object = tmp_path / "big.json"
    big_object.write_text('{"x": "' + "y" * 3000 + '"}')
    for path, limits, reason in [
        (deep_object, Limits(), "record too deep"),
        (big_object, Limits(max_record_bytes=1000), "record too large"),
    ]:
        (item,) = readers.read_records(path, limits)
        assert isinstance(item, Quarantined) and item.source.row == "object"
        assert item.reason.startswith(reason) and item.raw.startswith('{"x": ')
    (ok,) = readers.read_records(big_object)
    assert ok[1] == {"x": "y" * 3000}


def test_limit_settings_are_checked_and_reach_the_cli(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_depth: expected 1\.\.256"):
        ImportSettings(max_depth=10_000)  # json.loads and json.dumps could not recurse that deep
    with pytest.raises(ConfigError, match="max_record_bytes"):
        ImportSettings(max_record_bytes=0)
    source = tmp_path / "hh.jsonl"
    source.write_text(json.dumps(HH_ROW) + "\n" + json.dumps({**HH_ROW, "pad": [[[1]]]}) + "\n")
    out = tmp_path / "out"
    done = run_cli(
        "data", "import", str(source), "--out", str(out), "--max-depth", "2", "--max-record-mb", "0.5"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["settings"]["max_depth"], manifest["settings"]["max_record_bytes"]) == (2, 2**19)
    assert manifest["counts"]["by_reason"] == {"record too deep": 1}


def test_a_killed_import_leaves_nothing_a_rerun_trips_on(tmp_path: Path) -> None:
    source = tmp_path / "pairs.jsonl"
    with source.open("w") as handle:
        for i in range(200_000):
            handle.write(json.dumps({"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"}) + "\n")
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from rlhf.data.preferences import ImportSettings, import_preferences
        import_preferences([Path({str(source)!r})], Path({str(out)!r}), ImportSettings())
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "the import ended before it was killed"
        time.sleep(0.05)
    time.sleep(0.5)  # mid-write
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())  # what a kill leaves
    small = tmp_path / "small.jsonl"
    with source.open() as lines:
        small.write_text("".join(next(lines) for _ in range(100)))
    report = import_preferences([small], out, ImportSettings())
    assert report.kept == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pairs.jsonl", "small.jsonl"]


# --- 5. no single row aborts an import ---------------------------------------------------------------------


@pytest.mark.usefixtures("fake_format")
def test_a_lone_surrogate_in_any_written_string_is_quarantined_naming_the_field(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps(row("good one")),
                json.dumps(row("bad annotator", votes=[["\ud800", "a"]])),
                json.dumps(row("bad response", b="half \udc80")),
                json.dumps(row("bad prompt \ud800")),
                json.dumps(row("good two", votes=[["ann", "b"]])),
            ]
        )
        + "\n"
    )
    assert "\\ud800" in source.read_text()  # as JSON writes it: an escape, valid UTF-8 on disk
    report = import_preferences([source], tmp_path / "out", ImportSettings(test_fraction=0))
    assert (report.read, report.kept, report.quarantined) == (5, 2, 3) and accounted(report)
    assert [q["reason"] for q in quarantined(report)] == [
        "bad encoding: lone surrogate in annotator id",
        "bad encoding: lone surrogate in response b",
        "bad encoding: lone surrogate in prompt",
    ]


def test_a_file_name_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / os.fsdecode(b"caf\xe9.jsonl")
    source.write_text(json.dumps(HH_ROW) + "\n")
    with pytest.raises(
        DataError, match=r"caf\\xe9.jsonl: the file name is not valid UTF-8; rename the file$"
    ):
        import_preferences([tmp_path], tmp_path / "out", ImportSettings())


def test_a_lone_surrogate_in_a_message_role_is_quarantined(tmp_path: Path) -> None:
    def conversation(role: str) -> dict[str, Any]:
        prompt = [{"role": role, "content": "Hi there"}]
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }

    source = tmp_path / "trl.jsonl"
    source.write_text(json.dumps(conversation("user")) + "\n" + json.dumps(conversation("us\ud800er")) + "\n")
    report = import_preferences([source], tmp_path / "out", ImportSettings(test_fraction=0))
    assert (report.kept, report.quarantined) == (1, 1)
    assert quarantined(report)[0]["reason"] == "bad encoding: lone surrogate in prompt message 0 role"


# --- 7. compressed files -------------------------------------------------------------------------------------

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def compress(path: Path, data: bytes) -> Path:
    if path.suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        with OPENERS[path.suffix](path, "wb") as handle:
            handle.write(data)
    return path


@pytest.mark.parametrize("codec", [".gz", ".bz2", ".xz", ".zst"])
def test_compressed_hh_jsonl_and_json_arrays_stream(codec: str, tmp_path: Path) -> None:
    other = {**HH_ROW, "chosen": HH_ROW["chosen"].replace("weekly", "every week")}
    lines = [json.dumps(HH_ROW), "not json", json.dumps(other)]
    (tmp_path / "src").mkdir()
    hh = compress(
        tmp_path / "src" / f"test.jsonl{codec}", ("\n".join(lines) + "\n").encode()
    )  # as HH is shipped
    array = compress(
        tmp_path / "src" / f"items.json{codec}", json.dumps([HH_ROW, 7, other], indent=1).encode()
    )
    for source, bad_row in [(hh, "line 2"), (array, "item 1")]:
        report = import_preferences([source], tmp_path / "out", ImportSettings(test_fraction=0))
        manifest = json.loads(report.manifest_path.read_text())
        assert (report.read, report.kept, report.quarantined) == (3, 2, 1)
        assert manifest["sources"][0]["format"] == "hh"
        assert manifest["sources"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert [(q["source_file"], q["source_row"]) for q in quarantined(report)] == [(str(source), bad_row)]
    assert readers.data_files(tmp_path / "src") == [array, hh]  # a directory's compressed files are found too


def test_compressed_csv_and_damaged_or_unsupported_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = "question,good,bad\nname a fruit,apple,rock\nname a colour,red,seven\n"
    source = compress(tmp_path / "pairs.csv.gz", table.encode())
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    mapped = ImportSettings(format="mapped", options=ImportOptions(column_map=columns), test_fraction=0)
    report = import_preferences([source], tmp_path / "out", mapped)
    assert report.kept == 2
    damaged = tmp_path / "cut.jsonl.gz"
    damaged.write_bytes(
        compress(tmp_path / "whole.jsonl.gz", (json.dumps(HH_ROW) + "\n").encode() * 2000).read_bytes()[:3000]
    )
    with pytest.raises(DataError, match=rf"^{damaged}: cannot read \(EOFError"):
        import_preferences([damaged], tmp_path / "out2", ImportSettings())
    not_gzip = tmp_path / "plain.json.gz"
    not_gzip.write_text(json.dumps([HH_ROW]))
    with pytest.raises(DataError, match=rf"^{not_gzip}: cannot read \(BadGzipFile"):
        import_preferences([not_gzip], tmp_path / "out2", ImportSettings())
    with pytest.raises(DataError, match="unsupported file type"):
        readers.data_files(compress(tmp_path / "t.parquet.gz", b"x"))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if not installed
    zst = tmp_path / "x.jsonl.zst"
    zst.write_bytes(b"")
    with pytest.raises(
        DataError, match=r"x.jsonl.zst: reading .zst files needs zstandard: pip install zstandard$"
    ):
        list(readers.read_records(zst))


# --- 9. format detection looks past a bad first row ---------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        json.dumps({**HH_ROW, "chosen": None}).encode(),  # null chosen: no importer claims it
        '{"chosen": "caf\u00e9"}'.encode("latin-1"),  # not valid UTF-8
        json.dumps(HH_ROW)[:40].encode(),  # cut short: not valid JSON
    ],
    ids=["null-chosen", "latin-1", "truncated"],
)
@pytest.mark.parametrize("forced", [None, "hh"])
def test_a_bad_first_row_is_quarantined_like_any_other(
    first: bytes, forced: str | None, tmp_path: Path
) -> None:
    other = {**HH_ROW, "chosen": HH_ROW["chosen"].replace("weekly", "every week")}
    source = tmp_path / "test.jsonl"
    source.write_bytes(b"\n".join([first, json.dumps(HH_ROW).encode(), json.dumps(other).encode()]) + b"\n")
    report = import_preferences([source], tmp_path / "out", ImportSettings(format=forced, test_fraction=0))
    assert (report.read, report.kept, report.quarantined) == (3, 2, 1) and accounted(report)
    assert json.loads(report.manifest_path.read_text())["sources"][0]["format"] == "hh"
    assert quarantined(report)[0]["source_row"] == "line 1"


def test_detection_gives_up_after_the_first_records_and_a_wrong_format_still_fails(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(16)) + json.dumps(HH_ROW) + "\n")
    with pytest.raises(DataError, match=rf"^{unknown}:1: cannot tell the format"):
        import_preferences([unknown], tmp_path / "out", ImportSettings())
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"id": 0}) + "\n" + json.dumps(HH_ROW) + "\n")
    report = import_preferences([second], tmp_path / "out", ImportSettings())
    assert (report.kept, report.quarantined) == (1, 1)
    with pytest.raises(DataError, match=rf"^{second}:1: not in the 'ultrafeedback' format \("):
        import_preferences([second], tmp_path / "out", ImportSettings(format="ultrafeedback"))
