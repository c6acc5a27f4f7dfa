"""Stream the records of an export, each with where it came from, without loading the file.

A record is one JSON object (a JSONL line, a JSON array item) or one table row (parquet, CSV, a `datasets`
directory). Text formats may be compressed (`.jsonl.gz`, `.json.xz`, `.csv.bz2`, `.ndjson.zst`, ...) and
are decompressed as they stream. A record that cannot be read, or is over a limit (`streams.Limits`:
nesting depth, bytes), becomes a `Quarantined` item and the stream goes on; a file that cannot be read at
all (not JSON, not parquet, a JSON array whose items cannot be told apart) is one `DataError` naming the
file and line. Locations: lines count from 1 (as editors do), JSON array items and table rows from 0 (as
`data[41]` and `dataset[7]` do).

Records are parsed with orjson where it reads them as `json.loads` would (several times faster); anything
else orjson refuses or reads differently (NaN, an integer over 64 bits, a lone surrogate escape, bad
UTF-8) is parsed by `json.loads`, so results and error messages are the standard library's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from rlhf.data import streams
from rlhf.data.records import Quarantined, Source, excerpt
from rlhf.data.streams import BOM, DEFAULT_LIMITS, Limits
from rlhf.errors import DataError

Record = dict[str, Any]
Item = tuple[Source, Record] | Quarantined

TEXT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")
# orjson reads an integer literal outside 64 bits as a float; json.loads keeps it exact. Any run of 19
# digits (with every digit mapped to "0") sends the record to json.loads.
_LONG_NUMBER = b"0" * 19
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_SLOW = object()  # `_fast_loads`: leave this record to json.loads
SUFFIXES = (*TEXT_SUFFIXES, ".parquet")


def data_files(path: Path) -> list[Path]:
    """The units to read under `path`: the file itself, each split of a `datasets` directory, or each data
    file of a plain directory (recursively, in name order). Their names go into every row and the report,
    so a name that is not valid UTF-8 is refused here rather than failing the writers at the end."""
    files = _find_data_files(path)
    for file in files:
        try:
            str(file).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(file).decode("utf-8", "backslashreplace")
            raise DataError(f"{shown}: the file name is not valid UTF-8; rename the file") from None
    return files


def _find_data_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        if not _is_data_file(path):
            raise DataError(
                f"{path}: unsupported file type; expected {', '.join(SUFFIXES)} (the text ones may end in "
                f"{', '.join(streams.CODECS)}) or a directory"
            )
        return [path]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        return [path / split for split in splits]
    if (path / "state.json").is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and _is_data_file(p) and not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise DataError(f"{path}: no data files ({', '.join(SUFFIXES)}) and not a `datasets` directory")
    return files


def _is_data_file(path: Path) -> bool:
    return streams.data_suffix(path) in (TEXT_SUFFIXES if streams.codec(path) else SUFFIXES)


def over_limit(item: Quarantined) -> bool:
    """Whether a record was quarantined for a limit (`Limits`) rather than for being unreadable."""
    return item.reason.startswith(streams.OVER_LIMIT)


def location(source: Source) -> str:
    """`FILE:LINE` where the row is a line (the form editors jump to), else `FILE (row ...)`."""
    if source.row.startswith("line "):
        return f"{source.file}:{source.row.removeprefix('line ')}"
    return str(source)


def sha256_of(path: Path) -> str:
    """The content hash of a unit (a `datasets` directory: of its arrow files in order)."""
    digest = hashlib.sha256()
    for file in _arrow_files(path) if path.is_dir() else [path]:
        with file.open("rb") as handle:
            while chunk := handle.read(2**20):
                digest.update(chunk)
    return digest.hexdigest()


def read_records(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[Item]:
    """Every record of a unit from `data_files`: readable ones, and the others quarantined."""
    if path.is_dir():
        return _read_arrow(path)
    kind = streams.data_suffix(path)
    if kind == ".parquet":
        return _read_parquet(path)
    read = {".csv": _read_csv, ".json": _read_json}.get(kind, _read_jsonl)
    return _readable(path, lambda: read(path, limits))


def _readable(path: Path, items: Callable[[], Iterator[Item]]) -> Iterator[Item]:
    """`items()`, with a file that cannot be read or breaks off (a damaged archive) as one error naming it."""
    try:
        yield from items()
    except streams.decompression_errors() as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _fast_loads(data: bytes) -> Any:
    """What `json.loads(data.decode())` returns, by orjson; `_SLOW` where the two could differ or fail."""
    if _LONG_NUMBER in data.translate(_DIGITS_AS_ZERO):
        return _SLOW
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _SLOW


def _read_jsonl(path: Path, limits: Limits) -> Iterator[Item]:
    name, max_depth = str(path), limits.max_depth
    with streams.open_bytes(path) as handle:
        lines = streams.bounded_lines(handle, limits.max_record_bytes)
        for number, raw in enumerate(lines, start=1):
            source = Source(name, f"line {number}")
            if raw is None:
                yield Quarantined(source, limits.too_large())
                continue
            if number == 1:
                raw = raw.removeprefix(BOM)
            # The common case: a line too shallow to be too deep (a container opens with a bracket), an
            # object that orjson reads.
            if raw.count(b"[") + raw.count(b"{") <= max_depth:
                value = _fast_loads(raw)
                if type(value) is dict:
                    yield source, value
                    continue
            if item := _parse_line(source, raw, limits):
                yield item


def _parse_line(source: Source, raw: bytes, limits: Limits) -> Item | None:
    """One JSON line as a record (None for a blank line); its depth is checked before it is parsed."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", "replace")
        return Quarantined(source, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", excerpt(text))
    if not line.strip():
        return None
    if raw.count(b"[") + raw.count(b"{") > limits.max_depth:  # else it cannot be too deep
        piece = next(streams.split_json(io.BytesIO(raw), limits, array=False))
        if piece.data is None:
            return Quarantined(source, piece.reason, excerpt(line))
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return Quarantined(source, f"not valid JSON ({exc.msg} at column {exc.colno})", excerpt(line))
    return _as_record(source, record, line)


def _read_json(path: Path, limits: Limits) -> Iterator[Item]:
    """A top-level array streamed item by item; JSON lines in a `.json` file; or one object, one record."""
    with streams.open_bytes(path) as handle:
        head = handle.read(4096).removeprefix(BOM).lstrip()
    if head.startswith(b"{"):
        with streams.open_bytes(path) as handle:
            first_line = next(streams.bounded_lines(handle, limits.max_record_bytes), None) or b""
        try:
            json.loads(first_line.removeprefix(BOM))
        except (ValueError, RecursionError):
            return _read_document(path, limits, array=False)
        return _read_jsonl(path, limits)  # one object per line: JSON lines under a .json name
    if head.startswith(b"["):
        return _read_document(path, limits, array=True)
    if not head:
        return iter(())
    raise DataError(f"{path}:1: not valid JSON (expected an array of records or an object)")


def _read_document(path: Path, limits: Limits, array: bool) -> Iterator[Item]:
    """Array items (`item N`) or a whole document (`object`), each split out and checked against `limits`
    before it is parsed. A syntax error is one error naming the line and column: the items around it
    cannot be told apart with certainty."""
    name = str(path)
    with streams.open_bytes(path) as handle:
        try:
            for piece in streams.split_json(handle, limits, array):
                source = Source(name, f"item {piece.index}" if array else "object")
                if piece.data is None:
                    yield Quarantined(source, piece.reason, excerpt(piece.head.decode("utf-8", "replace")))
                    continue
                if (value := _fast_loads(piece.data)) is not _SLOW:
                    yield _as_record(source, value, value)
                    continue
                # Invalid UTF-8 becomes U+FFFD: a bad byte spoils one record (the quality checks
                # quarantine it), not the file.
                text = piece.data.decode("utf-8", "replace")
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    line = piece.line + exc.lineno - 1
                    column = exc.colno + (piece.column - 1 if exc.lineno == 1 else 0)
                    raise DataError(f"{path}:{line}:{column}: not valid JSON ({exc.msg})") from None
                yield _as_record(source, value, value)
        except streams.StructureError as exc:
            raise DataError(f"{path}:{exc.line}: not valid JSON ({exc})") from None


def _read_csv(path: Path, limits: Limits) -> Iterator[Item]:
    """Rows as {header: value}; a row whose field count differs from the header's is quarantined, and so is
    a line or a field over the size limit (the line read past, never whole)."""
    csv.field_size_limit(limits.max_record_bytes)
    with io.TextIOWrapper(
        streams.open_bytes(path), encoding="utf-8-sig", errors="replace", newline=""
    ) as handle:
        lines = _CsvLines(streams.bounded_lines(handle, limits.max_record_bytes))
        reader = csv.reader(lines)
        header: list[str] | None = None
        end = 0
        while True:
            start = end + 1
            try:
                row = next(reader, None)
            except (csv.Error, _LineTooLarge) as exc:
                end = lines.number
                reason = limits.too_large() if isinstance(exc, _LineTooLarge) else f"not valid CSV ({exc})"
                yield Quarantined(Source(str(path), f"line {end}"), reason)
                continue
            end = lines.number
            if row is None:
                return
            if header is None:
                header = row
                continue
            if not row:
                continue  # a blank line
            source = Source(str(path), f"line {end}" if start >= end else f"lines {start}-{end}")
            if len(row) != len(header):
                reason = f"not valid CSV (row has {len(row)} fields, header has {len(header)})"
                yield Quarantined(source, reason, excerpt(row))
                continue
            yield source, dict(zip(header, row, strict=True))


class _LineTooLarge(Exception):
    pass


class _CsvLines:
    """Lines for `csv.reader`, counted; a line over the limit raises through the reader, which starts its
    next row afresh on the line after."""

    def __init__(self, lines: Iterator[str | None]) -> None:
        self.lines, self.number = lines, 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.number += 1
        if line is None:
            raise _LineTooLarge
        return line


def _read_parquet(path: Path) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a parquet file ({exc})") from None
    yield from _rows(str(path), batches)


def _read_arrow(path: Path) -> Iterator[Item]:
    """A split saved by `datasets.save_to_disk`: arrow stream files listed in its state.json."""
    import pyarrow as pa

    def batches() -> Iterator[pa.RecordBatch]:
        for file in _arrow_files(path):
            with pa.memory_map(str(file)) as source:
                yield from pa.ipc.open_stream(source)

    yield from _rows(str(path), batches())


def _arrow_files(path: Path) -> list[Path]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        return [path / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a `datasets` directory (state.json: {exc})") from None


def _rows(file: str, batches: Iterator[Any]) -> Iterator[Item]:
    offset = 0
    for batch in batches:
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:  # a bad string somewhere in the batch: find it row by row
            rows = None
        for index in range(batch.num_rows):
            source = Source(file, f"row {offset + index}")
            if rows is not None:
                yield source, rows[index]
                continue
            try:
                yield source, batch.slice(index, 1).to_pylist()[0]
            except UnicodeDecodeError as exc:
                yield Quarantined(source, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
        offset += batch.num_rows


def _as_record(source: Source, value: Any, raw: Any) -> Item:
    if isinstance(value, dict):
        return source, value
    return Quarantined(source, f"expected a JSON object, got {type(value).__name__}", excerpt(raw))
