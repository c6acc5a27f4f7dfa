"""Any CSV/JSONL/parquet table of pairs, read through a column mapping given on the command line.

`options.column_map` maps the canonical fields to column names: `prompt`, `chosen`, `rejected` (required;
text, or messages in JSON files), and optionally `margin` (a number), `annotator` and `tie`
(true/false/1/0/yes/no). A map without the required fields is a configuration error raised once; a row
without a mapped column is a bad row. Never auto-detected: only chosen with `--format mapped`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import explicit_pair, number, obj
from rlhf.data.records import Comparison, Source, Vote
from rlhf.errors import DataError

REQUIRED = ("prompt", "chosen", "rejected")
OPTIONAL = ("margin", "annotator", "tie")
TRUTH = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


class MappedImporter:
    name = "mapped"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return False

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        values = _mapped_values(record, _checked_map(options.column_map))
        prompt, chosen, rejected = explicit_pair(values["prompt"], values["chosen"], values["rejected"])
        margin = None if values.get("margin") in (None, "") else number(values["margin"], "margin")
        vote = Vote(_annotator(values.get("annotator")), "tie" if _tie(values.get("tie")) else "a")
        yield Comparison(prompt, chosen, rejected, [vote], source, margin=margin)


def _checked_map(column_map: Mapping[str, str]) -> Mapping[str, str]:
    """The column map, if it names every required field and nothing unknown."""
    missing = [name for name in REQUIRED if not column_map.get(name)]
    unknown = sorted(set(column_map) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        problems = [f"no column for {', '.join(missing)}"] if missing else []
        problems += [f"unknown fields {', '.join(unknown)}"] if unknown else []
        raise DataError(
            f"--format mapped: column map has {'; '.join(problems)} "
            f"(fields: {', '.join(REQUIRED)}, optionally {', '.join(OPTIONAL)})"
        )
    return column_map


def _mapped_values(record: Any, column_map: Mapping[str, str]) -> dict[str, Any]:
    """Canonical field -> the row's value in the mapped column."""
    missing = [
        f"'{column}' ({name})" for name, column in column_map.items() if column not in obj(record, "record")
    ]
    if missing:
        raise BadRow(f"missing column {', '.join(missing)}")
    return {name: record[column] for name, column in column_map.items()}


def _annotator(value: Any) -> str | None:
    """An annotator id; integers (JSON ids) become text, blanks mean nobody named."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(f"annotator is not an id: {value!r}")
    return str(value)


def _tie(value: Any) -> bool:
    """A tie flag from CSV text, JSON booleans or 0/1."""
    if value is None or isinstance(value, bool):
        return bool(value)
    key = str(value).strip().lower() if isinstance(value, str | int) else None
    if key not in TRUTH:
        raise BadRow(f"tie is not true/false/1/0/yes/no: {value!r}")
    return TRUTH[key]


IMPORTER = MappedImporter()
