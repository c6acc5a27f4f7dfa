"""Stream the records of an export, each with where it came from, without loading the file.

A record is one JSON object (a JSONL line, a JSON array item) or one table row (parquet, CSV, a `datasets`
directory). A record that cannot be read becomes a `Quarantined` item and the stream goes on; a file that
cannot be read at all (not JSON, not parquet, its first record already unreadable) is one `DataError`
naming the file and line. Locations: lines count from 1 (as editors do), JSON array items and table rows
from 0 (as `data[41]` and `dataset[7]` do).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import ijson

from rlhf.data.records import Quarantined, Source, excerpt
from rlhf.errors import DataError

Record = dict[str, Any]
Item = tuple[Source, Record] | Quarantined

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
# A top-level JSON object is read whole, as one record; no single record is this big, a wrapper may be.
MAX_OBJECT_BYTES = 64 * 2**20
BOM = b"\xef\xbb\xbf"


def data_files(path: Path) -> list[Path]:
    """The units to read under `path`: the file itself, each split of a `datasets` directory, or each data
    file of a plain directory (recursively, in name order)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path}: unsupported file type; expected {', '.join(SUFFIXES)} or a directory")
        return [path]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        return [path / split for split in splits]
    if (path / "state.json").is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise DataError(f"{path}: no data files ({', '.join(SUFFIXES)}) and not a `datasets` directory")
    return files


def read_records(path: Path) -> Iterator[Item]:
    """Every record of a unit from `data_files`; its first record must be readable."""
    items = _read(path)
    for item in items:
        if isinstance(item, Quarantined):
            raise DataError(f"{location(item.source)}: {item.reason}")
        yield item
        break
    yield from items


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


def _read(path: Path) -> Iterator[Item]:
    if path.is_dir():
        return _read_arrow(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix == ".json":
        return _read_json(path)
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> Iterator[Item]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            source = Source(str(path), f"line {number}")
            if number == 1:
                raw = raw.removeprefix(BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", "replace")
                yield Quarantined(
                    source, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", excerpt(text)
                )
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Quarantined(source, f"not valid JSON ({exc.msg} at column {exc.colno})", excerpt(line))
                continue
            yield _as_record(source, record, line)


def _read_json(path: Path) -> Iterator[Item]:
    """A top-level array streamed item by item; JSON lines in a `.json` file; or one object, one record."""
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(BOM).lstrip()
    if head.startswith(b"["):
        return _read_array(path)
    if head.startswith(b"{"):
        with path.open("rb") as handle:
            first_line = handle.readline().removeprefix(BOM)
        try:
            json.loads(first_line)
        except ValueError:
            return _read_object(path)
        return _read_jsonl(path)  # one object per line: JSON lines under a .json name
    if not head:
        return iter(())
    raise DataError(f"{path}:1: not valid JSON (expected an array of records or an object)")


def _read_object(path: Path) -> Iterator[Item]:
    size = path.stat().st_size
    if size > MAX_OBJECT_BYTES:
        raise DataError(
            f"{path}: one JSON object of {size / 2**20:.0f} MiB is not a record; "
            "expected an array of records or JSON lines"
        )
    try:
        record = json.loads(path.read_bytes().removeprefix(BOM))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    yield Source(str(path), "object"), record


def _read_array(path: Path) -> Iterator[Item]:
    with path.open("rb") as handle:
        feed = _Feed(handle)
        try:
            for index, value in enumerate(ijson.items(feed, "item", use_float=True)):
                yield _as_record(Source(str(path), f"item {index}"), value, value)
        except ijson.JSONError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{_locate_error(path, feed.chunk_start)}: not valid JSON ({reason})") from None


def _locate_error(path: Path, chunk_start: int) -> str:
    """`FILE:LINE:COLUMN` of a syntax error the fast parser reported without a position.

    The error lies in the chunk the parser read last; a second pass parses up to that chunk at full speed
    and then feeds the parser one byte at a time, so the last byte it took is where it failed.
    """
    with path.open("rb") as handle:
        feed = _Feed(handle, slow_from=chunk_start)
        try:
            for _ in ijson.basic_parse(feed, use_float=True):
                pass
        except ijson.JSONError:
            return f"{path}:{feed.newlines + 1}:{feed.served - feed.line_start}"
    return f"{path} (near byte {chunk_start})"


class _Feed:
    """The bytes ijson reads: invalid UTF-8 replaced by U+FFFD (so a bad byte spoils one record, which the
    quality checks quarantine, not the file), counted so that a syntax error can be placed."""

    def __init__(self, handle: IO[bytes], slow_from: int | None = None) -> None:
        self.handle = handle
        self.slow_from = slow_from
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.served = self.chunk_start = self.newlines = self.line_start = 0
        if handle.read(len(BOM)) != BOM:
            handle.seek(0)

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self.slow_from is not None:
            size = 1 if self.served >= self.slow_from else min(size, self.slow_from - self.served)
        while True:
            chunk = self.handle.read(size)
            data = self.decoder.decode(chunk, final=not chunk).encode("utf-8")
            if data or not chunk:
                break  # a lone byte of a multi-byte character decodes to nothing yet: read on
        self.chunk_start = self.served
        self.served += len(data)
        if (newlines := data.count(b"\n")) > 0:
            self.newlines += newlines
            self.line_start = self.chunk_start + data.rindex(b"\n") + 1
        return data


def _read_csv(path: Path) -> Iterator[Item]:
    """Rows as {header: value}; a row whose field count differs from the header's is quarantined."""
    csv.field_size_limit(2**31 - 1)  # responses can exceed the default 128 KiB per field
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        end = reader.line_num
        while True:
            start = end + 1
            try:
                row = next(reader, None)
            except csv.Error as exc:
                end = reader.line_num
                yield Quarantined(Source(str(path), f"line {end}"), f"not valid CSV ({exc})")
                continue
            if row is None or header is None:
                return
            end = reader.line_num
            if not row:
                continue  # a blank line
            source = Source(str(path), f"line {end}" if start >= end else f"lines {start}-{end}")
            if len(row) != len(header):
                reason = f"not valid CSV (row has {len(row)} fields, header has {len(header)})"
                yield Quarantined(source, reason, excerpt(row))
                continue
            yield source, dict(zip(header, row, strict=True))


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
