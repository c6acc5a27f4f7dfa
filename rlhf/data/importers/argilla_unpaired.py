"""Argilla exports of unpaired judgements: a record shows a prompt and one completion field, and a label
question (thumbs: "good" / "bad", "👍" / "👎", ...) or a rating question (1-5) judges it; `thumbs` says how
each answer becomes a vote. Every Argilla export shape the preference importer reads (v1 columns, 2.x
records, 2.x flattened) is read here through it; only submitted answers are votes.

The question read is `ImportOptions.argilla_question`, else the one question whose submitted answers are all
ratings or thumbs labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers.argilla import IMPORTER as PAIRWISE
from rlhf.data.importers.argilla import _Answer, _parse, _submitted
from rlhf.data.importers.judgements import prompt_messages
from rlhf.data.importers.thumbs import completion_key, is_rating, is_thumbs, vote_of
from rlhf.data.records import Judged, Source, Vote


class ArgillaUnpaired:
    """Records of an Argilla export judged one completion at a time."""

    name = "argilla"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        """An Argilla record with one completion field and a rating or thumbs question."""
        if not PAIRWISE.sniff(record):
            return False
        try:
            fields, questions = _parse(record)
            completion_key(fields)
            return _question(questions, None, ImportOptions()) is not None
        except BadRow:
            return False

    def judgements(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Judged]:
        """The record's completion with a vote from every submitted answer."""
        fields, questions = _parse(record)
        completion = completion_key(fields, options.prompt_field)
        question = _question(questions, options.argilla_question, options)
        answers = _submitted(questions[question], question)
        votes = [Vote(answer.user, vote_of(answer.value, options, f"'{question}'")) for answer in answers]
        yield Judged(prompt_messages(fields, None, options.prompt_field), fields[completion], votes, source)


def _question(questions: dict[str, list[_Answer]], chosen: str | None, options: ImportOptions) -> str:
    """The question holding the judgement: the one asked for, else the one answered with ratings or thumbs."""
    names = ", ".join(questions) or "none"
    if chosen is not None:
        if chosen not in questions:
            raise BadRow(f"no question '{chosen}' in the record (questions: {names})")
        return chosen

    def judges(answers: list[_Answer]) -> bool:
        values = [answer.value for answer in answers if answer.value is not None]
        return bool(values) and all(is_rating(value) or is_thumbs(value, options) for value in values)

    candidates = [name for name, answers in questions.items() if judges(answers)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise BadRow(
            f"several questions could hold the judgement ({', '.join(candidates)}); set argilla_question"
        )
    raise BadRow(f"no rating or thumbs question (questions: {names}); set argilla_question")


IMPORTER = ArgillaUnpaired()
