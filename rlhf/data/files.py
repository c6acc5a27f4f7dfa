"""Reading the datasets that stages train on: JSONL, parquet, or a `datasets` directory.

`datasets` does the loading; this module checks the rows first, because `datasets`' own errors on a
malformed line are Arrow tracebacks that name neither the file nor the line. Every row must have the same
shape, one of the forms the stage accepts (e.g. TRL's conversational `messages` or `prompt`/`completion`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

# The row shapes a supervised fine-tuning dataset may take (TRL's standard and conversational forms).
SFT_FORMS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "text": ("text",),
}


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line; a malformed line is a DataError naming it."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def load_rows(path: str | Path, forms: Mapping[str, Sequence[str]]) -> tuple[Dataset, str]:
    """Load a dataset file or directory, check every row has one of `forms`, and return it with its form."""
    from datasets import Dataset, load_from_disk

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        try:
            dataset = load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{path}: not a `datasets` directory ({exc})") from None
        if not isinstance(dataset, Dataset):
            raise DataError(
                f"{path}: holds several splits ({', '.join(dataset)}); point at one split's directory"
            )
        return dataset, _form_of_columns(path, dataset.column_names, forms)
    if path.suffix == ".parquet":
        dataset = Dataset.from_parquet(str(path))
        return dataset, _form_of_columns(path, dataset.column_names, forms)
    if path.suffix in (".jsonl", ".json"):
        form = _check_jsonl(path, forms)
        return Dataset.from_json(str(path)), form
    raise DataError(f"{path}: unsupported data file; expected .jsonl, .parquet or a `datasets` directory")


def _check_jsonl(path: Path, forms: Mapping[str, Sequence[str]]) -> str:
    """Stream the file once: every line parses, and all rows share the first row's form."""
    form: str | None = None
    for number, row in iter_jsonl(path):
        row_form = _form_of_columns(f"{path}:{number}", list(row), forms)
        if form is None:
            form = row_form
        elif row_form != form:
            raise DataError(f"{path}:{number}: row is in '{row_form}' form but earlier rows are '{form}'")
        _check_row(f"{path}:{number}", row, forms[row_form])
    if form is None:
        raise DataError(f"{path}: no rows")
    return form


def _form_of_columns(where: object, columns: Sequence[str], forms: Mapping[str, Sequence[str]]) -> str:
    for name, required in forms.items():
        if all(column in columns for column in required):
            return name
    wanted = " or ".join("/".join(required) for required in forms.values())
    raise DataError(f"{where}: expected keys {wanted}, got {', '.join(columns) or 'none'}")


def _check_row(where: str, row: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Each key holds text or a non-empty list of {role, content} messages."""
    for key in keys:
        value = row[key]
        if isinstance(value, str):
            continue
        if not isinstance(value, list) or not value:
            raise DataError(f"{where}: key '{key}' must be a string or a non-empty list of messages")
        for index, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):  # fmt: skip
                raise DataError(f'{where}: {key}[{index}] must be a message {{"role": ..., "content": ...}}')


def fingerprint(path: str | Path) -> str:
    """sha256 of a data file, or of every file under a directory (names and bytes), streamed."""
    import hashlib

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
