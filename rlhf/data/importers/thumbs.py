"""Unpaired judgements as annotation tools hold them: a thumbs label or a rating of one completion, and the
field that holds the completion. Both unpaired importers (Label Studio, Argilla) read them here.

A judgement becomes a vote with the pairwise votes' three values ("a" desirable, "b" undesirable, "tie"
neutral), so majority and agreement are computed by the same code as for comparisons:

- a rating (a number: Label Studio's `value.rating`, an Argilla rating question's answer) is desirable at
  `ImportOptions.desirable_rating` or above (default 4, of 1-5), undesirable at `undesirable_rating` or
  below (default 2), neutral between: a 3 of 5 says "neither", and a label from it would be noise;
- a thumbs label is looked up, casefolded and with '_' and '-' read as spaces, in
  `ImportOptions.thumbs_labels` when given, else in `THUMBS_LABELS` ("👍", "thumbs up", "good", ... vs
  "👎", "thumbs down", "bad", ...); an unknown label is a bad row naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhf.data.importers import THUMBS_LABELS, BadRow, ImportOptions
from rlhf.data.importers._common import as_number
from rlhf.data.importers.judgements import keys_of, prompt_key
from rlhf.data.records import Choice, excerpt

COMPLETION_KEYS = ("completion", "response", "answer", "output", "reply", "generation")


def normalized_label(label: str) -> str:
    return " ".join(label.casefold().replace("_", " ").replace("-", " ").split())


def thumbs_labels(options: ImportOptions) -> dict[str, bool]:
    """The label mapping in force, normalized."""
    given = options.thumbs_labels or THUMBS_LABELS
    return {normalized_label(label): desirable for label, desirable in given.items()}


def is_thumbs(label: Any, options: ImportOptions) -> bool:
    return isinstance(label, str) and normalized_label(label) in thumbs_labels(options)


def is_rating(value: Any) -> bool:
    return not isinstance(value, str) and as_number(value) is not None


def vote_of(value: Any, options: ImportOptions, where: str) -> Choice:
    """One annotator's judgement as a vote: a rating by the thresholds, a label by the thumbs mapping."""
    if is_rating(value):
        rating = float(value)
        return (
            "a"
            if rating >= options.desirable_rating
            else "b"
            if rating <= options.undesirable_rating
            else "tie"
        )
    if isinstance(value, str):
        mapping = thumbs_labels(options)
        if normalized_label(value) in mapping:
            return "a" if mapping[normalized_label(value)] else "b"
        raise BadRow(
            f"unknown thumbs label: {value!r} in {where} (known: {', '.join(sorted(mapping))}); "
            "set thumbs_labels to map it"
        )
    raise BadRow(f"not a rating nor a thumbs label: {excerpt(value, 60)} in {where}")


def completion_key(data: Mapping[str, Any], prompt_field: str | None = None) -> str:
    """The field holding the judged completion: one of `COMPLETION_KEYS`, else the one text field besides the
    prompt."""
    named = [key for key in COMPLETION_KEYS if isinstance(data.get(key), str)]
    if len(named) == 1:
        return named[0]
    shown = prompt_field or prompt_key(data)
    others = [key for key, value in data.items() if isinstance(value, str) and key != shown]
    if not named and len(others) == 1:
        return others[0]
    raise BadRow(
        f"cannot tell the judged completion in the data (keys: {keys_of(data)}); expected one of "
        f"{', '.join(COMPLETION_KEYS)}"
    )
