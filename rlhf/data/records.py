"""Canonical preference and unpaired data: what every importer yields and what the policy and reward stages read.

Importers turn an export into `Comparison`s (one pair of responses to one prompt, with every vote it got)
or `Quarantined` rows (with the reason and where they came from). Aggregation then turns comparisons into
`PreferenceRecord`s: chosen vs. rejected after the annotators' majority, in TRL's conversational
preference form (prompt as messages, chosen and rejected as one assistant message each). Unpaired importers
turn thumbs and ratings into `Judged` completions, aggregated into `UnpairedRecord`s (TRL's unpaired form:
prompt, completion, label).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, str]
Choice = Literal["a", "b", "tie"]


@dataclass(frozen=True)
class Source:
    """Where a row came from, precisely enough for a person to find it: file plus line, task id or row."""

    file: str
    row: str  # e.g. "line 12", "task 41", "row 7", "record 3/annotation 2"

    def __str__(self) -> str:
        return f"{self.file} ({self.row})"


@dataclass(frozen=True, slots=True)
class Vote:
    """One judgement of a pair. `annotator` is None where the dataset names no one (HH-RLHF, ...).
    Slotted: an import holds the votes of every comparison seen in more than one record."""

    annotator: str | None
    choice: Choice


@dataclass
class Comparison:
    """One pair of responses to one prompt and all the votes it received, before aggregation."""

    prompt: list[Message]
    response_a: str
    response_b: str
    votes: list[Vote]
    source: Source
    margin: float | None = None  # strength of the preference where the data carries one (rating gap)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judged:
    """One completion of one prompt and every unpaired judgement it received (thumbs, a rating), before
    aggregation. A judgement is a `Vote` whose choice reads "a" desirable, "b" undesirable and "tie" neither
    (a middle rating), so majority and agreement are the pairwise votes' code."""

    prompt: list[Message]
    completion: str
    votes: list[Vote]
    source: Source


@dataclass(frozen=True)
class Quarantined:
    """A row that could not become a comparison, kept with the reason so nothing is silently lost."""

    source: Source
    reason: str
    raw: str = ""  # an excerpt of the offending input (truncated)


@dataclass
class PreferenceRecord:
    """A training-ready preference pair (one row of the canonical parquet dataset)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None
    tie: bool
    annotators: list[str]
    votes: list[str]  # per annotator, in `annotators` order: "chosen" | "rejected" | "tie"
    source_file: str
    source_row: str

    @property
    def chosen_text(self) -> str:
        return self.chosen[-1]["content"]

    @property
    def rejected_text(self) -> str:
        return self.rejected[-1]["content"]


@dataclass
class UnpairedRecord:
    """A training-ready unpaired example (one row of the canonical unpaired dataset), TRL's KTO form."""

    prompt: list[Message]
    completion: list[Message]
    label: bool  # desirable
    annotators: list[str]
    votes: list[str]  # per annotator, in `annotators` order: "desirable" | "undesirable" | "neutral"
    source_file: str
    source_row: str


def assistant(text: str) -> list[Message]:
    """A response as TRL's conversational form wants it: one assistant message."""
    return [{"role": "assistant", "content": text}]


def user(text: str) -> list[Message]:
    """A single-turn prompt."""
    return [{"role": "user", "content": text}]


def excerpt(value: Any, limit: int = 200) -> str:
    """A short printable excerpt of an offending input, for quarantine files."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
