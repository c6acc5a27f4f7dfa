"""Raw UltraFeedback (openbmb/UltraFeedback): one instruction, several rated completions.

`{"instruction", "completions": [{"model", "response", "overall_score", "fine-grained_score",
"annotations": {aspect: {"Rating": "4" | "N/A", "Rationale", ...}}, ...}]}` with the aspects helpfulness,
honesty, instruction_following and truthfulness. `options.rating_key` picks the rating:

- "overall": `overall_score` (GPT-4's overall judgement, 1-10);
- "mean": the mean of the completion's usable aspect ratings (what `fine-grained_score` holds, recomputed
  so that an "N/A" aspect is left out rather than spoiling the mean);
- an aspect name: that aspect's "Rating".

A completion without a usable rating ("N/A", missing, NaN) is skipped; pairs follow `options.rating_pairs`
and carry the rating gap as margin. The binarized form (`prompt`, `chosen`/`rejected` messages,
`score_chosen`/`score_rejected`) is TRL's explicit-prompt form and is read by the `trl` importer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import (
    array,
    as_number,
    get,
    is_record,
    obj,
    preferred,
    prompt_messages,
    rated_pairs,
    string,
)
from rlhf.data.records import Comparison, Message, Source
from rlhf.errors import DataError

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


class UltraFeedbackImporter:
    name = "ultrafeedback"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return (
            is_record(record)
            and isinstance(record.get("completions"), list)
            and ("instruction" in record or "prompt" in record)
        )

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        if options.rating_key not in ("overall", "mean", *ASPECTS):
            raise DataError(
                f"unknown UltraFeedback rating_key '{options.rating_key}'; "
                f"expected overall, mean or one of: {', '.join(ASPECTS)}"
            )
        prompt = _prompt(record)
        rated = _rated(get(record, "completions"), options.rating_key)
        scores = [score for _, score in rated]
        for better, worse, gap in rated_pairs(scores, options, source):
            yield preferred(prompt, rated[better][0], rated[worse][0], source, margin=gap)


def _prompt(record: Mapping[str, Any]) -> list[Message]:
    """Raw UltraFeedback calls the prompt "instruction"; some re-exports call it "prompt"."""
    renamed = isinstance(record, Mapping) and "instruction" not in record and "prompt" in record
    key = "prompt" if renamed else "instruction"
    return prompt_messages(get(record, key), key)


def _rated(completions: Any, rating_key: str) -> list[tuple[str, float]]:
    """(response, rating) of each completion whose rating is usable."""
    rated = []
    for index, item in enumerate(array(completions, "completions")):
        completion = obj(item, f"completion {index}")
        rating = _rating(completion, rating_key)
        if rating is not None:
            rated.append((string(completion.get("response"), f"completion {index} response"), rating))
    if len(rated) < 2:
        raise BadRow(f"fewer than two completions with a usable '{rating_key}' rating ({len(rated)})")
    return rated


def _rating(completion: Mapping[str, Any], rating_key: str) -> float | None:
    if rating_key == "overall":
        return as_number(completion.get("overall_score"))
    annotations = completion.get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    if rating_key != "mean":
        return _aspect_rating(annotations.get(rating_key))
    ratings = [rating for rating in map(_aspect_rating, annotations.values()) if rating is not None]
    return sum(ratings) / len(ratings) if ratings else None


def _aspect_rating(annotation: Any) -> float | None:
    return as_number(annotation.get("Rating")) if isinstance(annotation, Mapping) else None


IMPORTER = UltraFeedbackImporter()
