"""Label Studio JSON exports of unpaired judgements: a task shows a prompt and one completion, and each
submitted annotation judges it with a Rating control (`{"type": "rating", "value": {"rating": 4}}`) or a
thumbs Choices control (`{"type": "choices", "value": {"choices": ["👍"]}}`); `thumbs` says how each becomes
a vote.

An annotation gives at most one judgement: a Rating result wins over Choices; several Rating results, or
several chosen values, are a bad row (the project asks something else too: import it with
`--format` and a project of its own). A cancelled annotation, or one without a judging result, casts no vote.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import obj
from rlhf.data.importers.judgements import prompt_messages
from rlhf.data.importers.labelstudio import IMPORTER as PAIRWISE
from rlhf.data.importers.labelstudio import _annotator, _results, _submitted, _value
from rlhf.data.importers.thumbs import completion_key, is_thumbs, vote_of
from rlhf.data.records import Choice, Judged, Source, Vote

_COMPARISON_TYPES = ("pairwise", "ranker")


class LabelStudioUnpaired:
    """Tasks of a Label Studio JSON export judged one completion at a time."""

    name = "labelstudio"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        """A task whose annotations hold a rating, or thumbs choices, and no comparison."""
        if not PAIRWISE.sniff(record) or not isinstance(record.get("annotations"), list):
            return False
        results = [
            item
            for annotation in record["annotations"]
            if isinstance(annotation, Mapping) and isinstance(annotation.get("result"), list)
            for item in annotation["result"]
            if isinstance(item, Mapping)
        ]
        if any(item.get("type") in _COMPARISON_TYPES for item in results):
            return False
        options = ImportOptions()
        return any(
            item.get("type") == "rating"
            or any(is_thumbs(choice, options) for choice in _value(item).get("choices") or [])
            for item in results
        )

    def judgements(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Judged]:
        """The task's completion with a vote from every submitted annotation that judged it."""
        data = obj(record.get("data"), "task 'data'")
        submitted = _submitted(record.get("annotations"))
        votes = [
            Vote(_annotator(annotation), choice)
            for annotation in submitted
            if (choice := _choice(annotation, options)) is not None
        ]
        if not votes:
            raise BadRow(
                f"no submitted judgement: no rating or thumbs result in {len(submitted)} annotations"
            )
        prompt = prompt_messages(data, None, options.prompt_field)
        yield Judged(prompt, data[completion_key(data, options.prompt_field)], votes, source)


def _choice(annotation: Mapping[str, Any], options: ImportOptions) -> Choice | None:
    """One annotation's vote: its rating, else its one chosen thumbs value; None without either."""
    where = f"annotation {annotation.get('id')}"
    results = _results(annotation)
    ratings = [_value(item).get("rating") for item in results if item.get("type") == "rating"]
    if len(ratings) > 1:
        raise BadRow(f"several ratings: {', '.join(map(repr, ratings))} in {where}")
    if ratings:
        if isinstance(ratings[0], str) or ratings[0] is None:
            raise BadRow(f"rating not a number: {ratings[0]!r} in {where}")
        return vote_of(ratings[0], options, where)
    chosen = [
        value
        for item in results
        if item.get("type") == "choices"
        for value in (_value(item).get("choices") or [])
    ]
    if len(chosen) > 1:
        raise BadRow(f"several choices: {', '.join(map(repr, chosen))} in {where}; expected one thumbs value")
    return vote_of(chosen[0], options, where) if chosen else None


IMPORTER = LabelStudioUnpaired()
