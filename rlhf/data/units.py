"""One file's records to units of the import's identity (`rlhf.data.preferences`): the file's format, told
from its first readable records, and each record's comparisons, or the one reason it yields none.

A bad record among the first ones is quarantined like any later one; only a file none of whose first
readable records any importer (or the forced format) accepts is refused, in one line.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf.data import readers
from rlhf.data.importers import PREFERENCES, BadRow, Importer, ImportOptions, Kind, detect, get_importer
from rlhf.data.records import Quarantined, Source, excerpt
from rlhf.data.streams import Limits
from rlhf.errors import DataError, RlhfError

# A file's format is told from its first readable records: up to this many, among at most this many items.
DETECT_RECORDS, DETECT_ITEMS = 16, 256


def file_units(
    path: Path,
    fmt: str | None,
    options: ImportOptions,
    limits: Limits,
    entry: dict[str, Any],
    kind: Kind = PREFERENCES,
) -> Iterator[Any]:
    """The units of `kind` (comparisons, judgements) of one file's records; a record that yields none (or
    fails) is one quarantined unit.

    The format is told from the first few readable records (`_importer_for`), held until it is known; bad
    ones among them are quarantined like any later row."""
    records = readers.read_records(path, limits)
    head = _head(records)
    importer = _importer_for(head, fmt, options, kind)
    entry["format"] = importer.name if importer else None
    unit_type, units = kind.unit, kind.units
    for item in itertools.chain(head, records):
        entry["records"] += 1
        if isinstance(item, Quarantined):
            yield item
            continue
        assert importer is not None  # a readable record in the head chose one
        for out in record_units(importer, *item, options, kind):
            entry[units] += isinstance(out, unit_type)
            yield out


def _head(records: Iterator[readers.Item]) -> list[readers.Item]:
    """The items up to the `DETECT_RECORDS`-th readable record (at most `DETECT_ITEMS` items)."""
    head: list[readers.Item] = []
    readable = 0
    for item in records:
        head.append(item)
        readable += not isinstance(item, Quarantined)
        if readable == DETECT_RECORDS or len(head) == DETECT_ITEMS:
            break
    return head


def _importer_for(
    head: list[readers.Item], fmt: str | None, options: ImportOptions, kind: Kind
) -> Importer | None:
    """The importer for a file whose first items are `head`: `fmt` if some readable record fits
    it, else the format of the first record an importer claims. Refused (one line): a file that opens with
    an unreadable record and has no record that fits, or a file with no readable record at all (unless
    every item was over a limit: then there is nothing to choose for, and None)."""
    readable = [item for item in head if not isinstance(item, Quarantined)]
    if fmt:
        importer = get_importer(fmt, kind)
        if any(importer.sniff(record) for _, record in readable) or any(
            isinstance(out, kind.unit)
            for source, record in readable
            for out in record_units(importer, source, record, options, kind)
        ):
            return importer
    else:
        for source, record in readable:
            if any(get_importer(name, kind).sniff(record) for name in kind.formats):
                return detect(record, readers.location(source), kind)
    unreadable = [item for item in head if isinstance(item, Quarantined) and not readers.over_limit(item)]
    if unreadable and (not readable or head[0] is unreadable[0]):
        raise DataError(f"{readers.location(unreadable[0].source)}: {unreadable[0].reason}")
    if not readable:
        return None
    source, record = readable[0]
    if fmt:
        why = record_units(importer, source, record, options, kind)[0]  # no units: a Quarantined
        reason = why.reason if isinstance(why, Quarantined) else ""
        raise DataError(f"{readers.location(source)}: not in the '{fmt}' format ({reason})")
    keys = ", ".join(sorted(record))
    raise DataError(
        f"{readers.location(source)}: cannot tell the format from the first {len(readable)} readable "
        f"record(s) (keys of the first: {keys}); pass --format"
    )


def record_units(
    importer: Importer,
    source: Source,
    record: readers.Record,
    options: ImportOptions,
    kind: Kind = PREFERENCES,
) -> list[Any]:
    """One record's units of the identity: its comparisons (or judgements), or the one reason it yields none."""
    try:
        produced = list(getattr(importer, kind.method)(record, source, options))
    except BadRow as exc:
        return [Quarantined(source, str(exc) or "bad row", raw_excerpt(record))]
    except RlhfError:
        raise
    except Exception as exc:  # an importer bug must cost a row, not the import
        return [Quarantined(source, f"importer error: {type(exc).__name__}: {exc}", raw_excerpt(record))]
    if not produced:
        what = "no pair to compare" if kind is PREFERENCES else "no judged completion"
        return [Quarantined(source, f"no {kind.units}: the record holds {what}", raw_excerpt(record))]
    if all(type(out) is kind.unit for out in produced):  # the common case, told by exact types
        return produced
    return [
        out
        if isinstance(out, kind.unit | Quarantined)
        else Quarantined(source, f"importer error: yielded a {type(out).__name__}", raw_excerpt(record))
        for out in produced
    ]


def raw_excerpt(record: Any) -> str:
    """A record as JSON, cut short, for the quarantine file."""
    return excerpt(json.dumps(record, ensure_ascii=False, default=str))
