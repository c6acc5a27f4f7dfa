"""The imported preference dataset on disk: its layout, row schema, split rule, writer, reader and fingerprint.

`rlhf.data.preferences` fills one; the reward and policy stages read it with `load_preferences`. The layout:

    train/data.parquet  test/data.parquet   PreferenceRecord rows; `datasets.load_dataset(out_dir)` reads them
    quarantine.jsonl  duplicates.jsonl      what was left out, and why
    manifest.json                           fingerprint, counts, sources, settings, annotators, agreement
    report.md                               the same for a person
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf.data.records import PreferenceRecord
from rlhf.errors import DataError

if TYPE_CHECKING:
    from datasets import DatasetDict

SPLITS = ("train", "test")
MANIFEST, REPORT, QUARANTINE, DUPLICATES = (
    "manifest.json",
    "report.md",
    "quarantine.jsonl",
    "duplicates.jsonl",
)
DATASET_FORMAT, DATASET_VERSION = "rlhf-preferences", 1
BATCH_ROWS = 4096

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema(
    [
        ("prompt", MESSAGES),
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("margin", pa.float64()),
        ("tie", pa.bool_()),
        ("annotators", pa.list_(pa.string())),
        ("votes", pa.list_(pa.string())),
        ("source_file", pa.string()),
        ("source_row", pa.string()),
    ]
)


def load_preferences(out_dir: Path) -> DatasetDict:
    """The train and test splits of an imported preference dataset, checked against its fingerprint."""
    return load_imported(out_dir, DATASET_FORMAT)


def load_imported(out_dir: Path, dataset_format: str) -> DatasetDict:
    """The train and test splits of an imported dataset of `dataset_format` (preference, unpaired), checked
    against the manifest's fingerprint."""
    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        files = {split: [out_dir / name for name in manifest["files"][split]] for split in SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{out_dir}: not an imported {dataset_format} dataset ({exc})") from None
    if manifest.get("format") != dataset_format:
        raise DataError(f"{out_dir}: an imported {manifest.get('format')} dataset, expected {dataset_format}")
    if fingerprint(out_dir, manifest["files"]) != manifest["fingerprint"]:
        raise DataError(f"{out_dir}: data files do not match the manifest's fingerprint; re-run the import")
    splits = {}
    for split, paths in files.items():
        if manifest["counts"][split]:
            splits[split] = Dataset.from_parquet([str(path) for path in paths], split=split)
        else:  # `datasets` refuses a parquet file without rows
            splits[split] = Dataset(pq.read_table(paths[0]))
    return DatasetDict(splits)


def split_of(normalized_prompt: str, seed: int, test_fraction: float) -> str:
    """The split ("train" or "test") a hash of the seed and the normalized prompt draws: one prompt, one side."""
    text = f"{seed}\x00{normalized_prompt}".encode("utf-8", "surrogatepass")
    draw = int.from_bytes(hashlib.sha256(text).digest()[:8]) / 2**64
    return "test" if draw < test_fraction else "train"


def fingerprint(out_dir: Path, files: dict[str, list[str]]) -> str:
    """sha256 over the data files' names and bytes, in split order."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for name in files[split]:
            digest.update(name.encode() + b"\x00")
            with (out_dir / name).open("rb") as handle:
                while chunk := handle.read(2**20):
                    digest.update(chunk)
    return digest.hexdigest()


class SplitWriter:
    """One split's parquet file, written a batch of rows at a time: records (`PreferenceRecord`, or another
    kind's) whose attributes are the schema's columns."""

    NAME = "data.parquet"

    def __init__(self, directory: Path, schema: pa.Schema = SCHEMA) -> None:
        directory.mkdir()
        self._schema = schema
        self._fields = operator.attrgetter(*schema.names)  # a record as a row in schema order
        self._writer = pq.ParquetWriter(directory / self.NAME, schema)
        self._pending: list[Any] = []
        self.rows = 0

    def add(self, record: PreferenceRecord | Any) -> None:
        self._pending.append(record)
        self.rows += 1
        if len(self._pending) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            columns = zip(*map(self._fields, self._pending), strict=True)
            schema = self._schema
            columns = [pa.array(values, type=f.type) for values, f in zip(columns, schema, strict=True)]
            self._writer.write_batch(pa.record_batch(columns, schema=schema))
            self._pending = []

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._writer.close()


@contextlib.contextmanager
def staged_dataset_dir(out_dir: Path, kind: str = "preference") -> Iterator[Path]:
    """A fresh directory beside `out_dir`, renamed to it on success and removed on failure.

    A previous import at `out_dir` is replaced; any other non-empty directory is refused, so that an import
    never deletes what it did not write.
    """
    if out_dir.exists() and not (
        out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / MANIFEST).is_file())
    ):
        raise DataError(f"{out_dir}: exists and is not an imported {kind} dataset; choose another output")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out_dir)
    build = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    build.mkdir()
    try:
        yield build
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    if out_dir.exists():
        old = build.with_suffix(".old")
        out_dir.rename(old)
        build.rename(out_dir)
        shutil.rmtree(old)
    else:
        build.rename(out_dir)


def _remove_stale_builds(out_dir: Path) -> None:
    """Remove the staging folders (`.partial`, `.old`) that an import killed mid-write left beside `out_dir`:
    those whose process is gone (a running import's are left alone)."""
    name = re.compile(rf"\.{re.escape(out_dir.name)}\.(\d+)\.[0-9a-f]{{8}}\.(?:partial|old)")
    for path in out_dir.parent.iterdir():
        if (match := name.fullmatch(path.name)) and path.is_dir() and not _alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or never a pid
        return False
    except PermissionError:  # another user's
        return True
    return True
