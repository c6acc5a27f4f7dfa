"""Importers: one module per export format, each turning one record of the file into comparisons.

The import machinery (`rlhf.data.preferences`) reads files as streams of records (JSON array items, JSONL
lines, parquet or CSV rows) and hands each record to the format's `Importer.comparisons`. An importer
raises `BadRow` for a record it cannot use; the machinery quarantines that record with the message and its
source location, so a format module holds only the knowledge of its format.

Formats are looked up by name and their modules imported on demand, so adding a format is adding a module
and a line in `FORMATS`. Unpaired judgements (thumbs, ratings of one completion) are a data kind of their own:
their importers (`UNPAIRED_FORMATS`) yield `Judged` completions from `judgements` instead of comparisons.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rlhf.data.records import Comparison, Judged, Source
from rlhf.errors import ConfigError, DataError

# name -> module defining `IMPORTER`; the order is the auto-detection order (most specific first).
FORMATS: dict[str, str] = {
    "labelstudio": "rlhf.data.importers.labelstudio",
    "argilla": "rlhf.data.importers.argilla",
    "openai": "rlhf.data.importers.openai",
    "arena": "rlhf.data.importers.arena",
    "ultrafeedback": "rlhf.data.importers.ultrafeedback",
    "nectar": "rlhf.data.importers.nectar",
    "hh": "rlhf.data.importers.hh",
    "trl": "rlhf.data.importers.trl",
    "mapped": "rlhf.data.importers.mapped",
}

UNPAIRED_FORMATS: dict[str, str] = {
    "labelstudio": "rlhf.data.importers.labelstudio_unpaired",
    "argilla": "rlhf.data.importers.argilla_unpaired",
}
# Thumbs labels (normalized: casefolded, '_' and '-' as spaces) -> desirable; `ImportOptions.thumbs_labels`
# replaces this mapping.
THUMBS_LABELS: dict[str, bool] = {
    **dict.fromkeys(("👍", "👍🏻", "thumbs up", "thumbsup", "up", "good", "desirable", "positive", "yes",
                     "acceptable", "helpful"), True),
    **dict.fromkeys(("👎", "👎🏻", "thumbs down", "thumbsdown", "down", "bad", "undesirable", "negative", "no",
                     "unacceptable", "unhelpful"), False),
}  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """A kind of imported data: its formats, the importer method that yields its units, and the unit type."""

    name: str
    table: str  # the name of this module's format table, looked up when used (so it can be extended)
    method: str
    unit: type
    units: str  # what its units are called in counts and messages

    @property
    def formats(self) -> Mapping[str, str]:
        """Format name -> module, in auto-detection order."""
        return globals()[self.table]


PREFERENCES = Kind("preferences", "FORMATS", "comparisons", Comparison, "comparisons")
UNPAIRED = Kind("unpaired", "UNPAIRED_FORMATS", "judgements", Judged, "judgements")
KINDS = {kind.name: kind for kind in (PREFERENCES, UNPAIRED)}


class BadRow(Exception):
    """Raised by an importer for a record it cannot use; the message becomes the quarantine reason."""


@dataclass(frozen=True)
class ImportOptions:
    """Format-specific choices, all with sound defaults."""

    # mapped CSV/JSONL: canonical field -> column name, e.g. {"prompt": "question", "chosen": "good", "rejected": "bad"}
    column_map: Mapping[str, str] = field(default_factory=dict)
    # ratings of several completions (UltraFeedback): which pairs to make
    rating_pairs: Literal["best-vs-random", "best-vs-worst", "all-above-margin"] = "best-vs-random"
    rating_margin: float = 1.0  # minimum rating gap for a pair ("all-above-margin"; ties below are skipped)
    rating_key: str = (
        "overall"  # UltraFeedback: "overall" (overall_score) or an aspect name ("helpfulness", ...)
    )
    argilla_question: str | None = None  # Argilla: the ranking/label question to read (default: auto)
    prompt_field: str | None = None  # Label Studio: the task data field holding the prompt (default: auto)
    label_config: str | None = None  # Label Studio: the project's labeling config XML file
    # Label Studio Ranker buckets, best first: buckets are often categories, so they rank only when named here
    bucket_order: tuple[str, ...] = ()
    seed: int = 0  # for choices that need randomness (best-vs-random)
    # unpaired ratings: at least `desirable_rating` is desirable, at most `undesirable_rating` undesirable,
    # between them neither (that annotator's judgement is neutral)
    desirable_rating: float = 4.0
    undesirable_rating: float = 2.0
    # unpaired thumbs: label -> desirable, replacing `THUMBS_LABELS` when given
    thumbs_labels: Mapping[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A bad bucket order, rating threshold or labeling config is one line before any record is read."""
        if self.undesirable_rating >= self.desirable_rating:
            raise ConfigError(
                f"undesirable_rating: expected below desirable_rating ({self.desirable_rating}), "
                f"got {self.undesirable_rating}"
            )
        if len(set(self.bucket_order)) != len(self.bucket_order) or not all(self.bucket_order):
            raise ConfigError(f"bucket_order: expected distinct bucket names, got {list(self.bucket_order)}")
        if self.label_config is None:
            return
        from rlhf.data.importers.labelstudio_config import load_label_config

        buckets = load_label_config(self.label_config).buckets
        unknown = [name for name in self.bucket_order if name not in buckets]
        if unknown and buckets:
            raise ConfigError(
                f"bucket_order: {', '.join(unknown)} not among the Ranker buckets of {self.label_config} "
                f"({', '.join(buckets)})"
            )


class Importer(Protocol):
    """What each format module exposes as `IMPORTER`."""

    name: str

    def sniff(self, record: Mapping[str, Any]) -> bool:
        """True when a file's first record is unmistakably in this format (for auto-detection)."""
        ...

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        """The comparisons in one record; raise BadRow for a record that cannot be used."""
        ...


def get_importer(name: str, kind: Kind = PREFERENCES) -> Importer:
    """The importer of a format by name; an unknown name is a one-line error listing the known ones."""
    if name not in kind.formats:
        known = f"known {kind.name} formats" if kind is not PREFERENCES else "known formats"
        raise DataError(f"unknown format '{name}'; {known}: {', '.join(kind.formats)}")
    return importlib.import_module(kind.formats[name]).IMPORTER


def detect(record: Mapping[str, Any], where: str, kind: Kind = PREFERENCES) -> Importer:
    """The one format whose `sniff` accepts the first record; none or several is a clear error."""
    matches = [get_importer(name, kind) for name in kind.formats if get_importer(name, kind).sniff(record)]
    if len(matches) == 1:
        return matches[0]
    keys = ", ".join(sorted(record)) if isinstance(record, Mapping) else type(record).__name__
    if not matches:
        raise DataError(
            f"{where}: cannot tell the format from the first record (keys: {keys}); pass --format"
        )
    names = ", ".join(m.name for m in matches)
    raise DataError(f"{where}: the first record fits several formats ({names}); pass --format")
