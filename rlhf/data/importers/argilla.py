"""Argilla exports: v1 FeedbackDataset rows and 2.x records, nested or flattened.

Three shapes carry the same content, fields (the prompt and two or more responses) and per-user answers
to questions:

- v1 (`to_datasets()` / `push_to_huggingface`): a column per field and a column per question holding
  `[{user_id, value, status}]`, or the same as lists per key after an Arrow round trip; a ranking value is
  `[{rank, value}]`, or `{rank: [...], value: [...]}` after Arrow; `<q>-suggestion*`, `external_id` and
  `metadata` columns are not votes.
- 2.x records (`Record.to_dict()`): `fields`, `metadata`, `suggestions`, `responses: {q: [{value, user_id,
  status?}]}`; a ranking value is the list of response names, best first.
- 2.x flattened (`to_datasets()` / `to_hub`): fields and metadata as columns, `<q>.responses`,
  `<q>.responses.users`, `<q>.responses.status` as parallel lists.

Only submitted answers are votes (drafts and discarded ones are skipped; an answer without a status, as
`Record.to_dict()` writes them, counts as submitted). Suggestions are model outputs, never votes. The
question read is `ImportOptions.argilla_question`, else the one ranking or label question whose answers
name the responses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers.judgements import (
    Judgement,
    Ranks,
    choice_of,
    keys_of,
    numbered_groups,
    ordinal,
    pair_votes,
    prompt_key,
    prompt_messages,
    ranks_for,
)
from rlhf.data.records import Comparison, Source, excerpt

_V1_ANSWER_KEYS = frozenset(("user_id", "value", "status"))
_STATUSES = frozenset(("submitted", "draft", "discarded"))
_NOT_FIELDS = frozenset(("id", "_server_id", "external_id", "metadata", "vectors", "score"))


@dataclass(frozen=True)
class _Answer:
    """One user's answer to one question."""

    user: str | None
    value: Any
    status: str


class ArgillaImporter:
    """Records of an Argilla dataset export, one record (row) at a time."""

    name = "argilla"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        """Only shapes no other tool writes: v2 `fields` + `responses`, v2 `<q>.responses.users` columns, or v1
        question columns of `{user_id, value, status}` answers (or their `-suggestion-metadata` columns)."""
        if not isinstance(record, Mapping):
            return False
        if isinstance(record.get("fields"), Mapping) and isinstance(record.get("responses"), Mapping):
            return True
        keys = [key for key in record if isinstance(key, str)]
        if any(key.endswith((".responses.users", "-suggestion-metadata")) for key in keys):
            return True
        return any(value and _is_v1_column(value) for value in record.values())

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        """One comparison per pair of ranked responses, with a vote from every submitted answer."""
        fields, questions = _parse(record)
        responses = _response_fields(fields)
        question = _question(questions, fields, responses, options.argilla_question)
        answers = _submitted(questions[question], question)
        judgements: list[Judgement] = [
            (answer.user, _ranks(answer.value, question, fields, responses)) for answer in answers
        ]
        prompt = prompt_messages(fields)
        ranked = {name for _, ranks in judgements for name in ranks}
        order = [name for name in fields if name in ranked]
        for first, second, votes in pair_votes(order, judgements):
            yield Comparison(prompt, _text(fields, first), _text(fields, second), votes, source)


def _parse(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[_Answer]]]:
    """Fields and answers per question, whichever of the three export shapes the record is in."""
    if isinstance(record.get("fields"), Mapping) and "responses" in record:
        return dict(record["fields"]), _nested_answers(record.get("responses"))
    if any(isinstance(key, str) and key.endswith(".responses") for key in record):
        return _flat_fields(record), _flat_answers(record)
    questions = {key: _v1_answers(value) for key, value in record.items() if _is_v1_column(value)}
    fields = {
        key: value
        for key, value in record.items()
        if key not in questions
        and key not in _NOT_FIELDS
        and not str(key).endswith(("-suggestion", "-suggestion-metadata"))
    }
    return fields, questions


def _is_v1_column(value: Any) -> bool:
    """A v1 question column: `[{user_id, value, status}]`, or `{user_id: [...], value: [...], status: [...]}`
    after an Arrow round trip; anything else is a field."""
    if isinstance(value, Mapping):
        return value.keys() >= _V1_ANSWER_KEYS
    return isinstance(value, list) and all(
        isinstance(item, Mapping) and item.keys() >= _V1_ANSWER_KEYS for item in value
    )


def _v1_answers(column: Any) -> list[_Answer]:
    if isinstance(column, list):
        return [_answer(item["user_id"], item["value"], item["status"]) for item in column]
    lists = [column[key] for key in ("user_id", "value", "status")]
    if not all(isinstance(values, list) and len(values) == len(lists[0]) for values in lists):
        raise BadRow(f"question column with unequal user_id/value/status lists: {excerpt(column, 80)}")
    return [_answer(user, value, status) for user, value, status in zip(*lists, strict=True)]


def _nested_answers(responses: Any) -> dict[str, list[_Answer]]:
    """v2 `responses: {question: [{value, user_id, status?}]}`."""
    if responses is None:
        return {}
    if not isinstance(responses, Mapping) or not all(
        isinstance(answers, list) and all(isinstance(answer, Mapping) for answer in answers)
        for answers in responses.values()
    ):
        raise BadRow(
            f"'responses' is not a mapping of question to a list of answers: {excerpt(responses, 80)}"
        )
    return {
        question: [
            _answer(answer.get("user_id"), answer.get("value"), answer.get("status")) for answer in answers
        ]
        for question, answers in responses.items()
    }


def _flat_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a flattened v2 record that are not answers, suggestions or record ids (metadata columns
    stay in, but they are only read where their names make them a prompt or a response)."""
    return {
        key: value
        for key, value in record.items()
        if key not in _NOT_FIELDS and ".responses" not in key and ".suggestion" not in key
    }


def _flat_answers(record: Mapping[str, Any]) -> dict[str, list[_Answer]]:
    """v2 `<q>.responses`, `<q>.responses.users`, `<q>.responses.status`: parallel lists per question."""
    questions = {}
    for key in record:
        if isinstance(key, str) and key.endswith(".responses"):
            values = record[key] or []
            users = record.get(f"{key}.users") or [None] * len(values)
            statuses = record.get(f"{key}.status") or [None] * len(values)
            if not all(isinstance(column, list) for column in (values, users, statuses)):
                raise BadRow(f"'{key}' and its users and status columns must be lists")
            if not len(values) == len(users) == len(statuses):
                raise BadRow(
                    f"'{key}' holds {len(values)} answers but {len(users)} users and {len(statuses)} statuses"
                )
            question = key.removesuffix(".responses")
            questions[question] = [_answer(*row) for row in zip(users, values, statuses, strict=True)]
    return questions


def _answer(user: Any, value: Any, status: Any) -> _Answer:
    """An answer with its user id as a string; a missing status (v2 `to_dict`) means submitted."""
    status = "submitted" if status is None else str(status)
    if status not in _STATUSES:
        raise BadRow(f"unknown response status {status!r} (expected submitted, draft or discarded)")
    return _Answer(None if user is None else str(user), value, status)


def _response_fields(fields: Mapping[str, Any]) -> list[str]:
    """The responses a label or an ordinal names: the text fields numbered alike (response-1, response-2,
    ...), else the two text fields besides the prompt; empty when neither tells."""
    texts = [key for key, value in fields.items() if isinstance(value, str)]
    groups = numbered_groups(texts)
    if len(groups) == 1:
        return groups[0]
    others = [key for key in texts if key != prompt_key(fields)]
    return others if not groups and len(others) == 2 else []


def _question(
    questions: dict[str, list[_Answer]], fields: Mapping[str, Any], responses: list[str], chosen: str | None
) -> str:
    """The question holding the preference: the one asked for, else the one whose answers name responses."""
    names = ", ".join(questions) or "none"
    if chosen is not None:
        if chosen not in questions:
            raise BadRow(f"no question '{chosen}' in the record (questions: {names})")
        return chosen
    candidates = [
        name
        for name, answers in questions.items()
        if any(_names_responses(answer.value, fields, responses) for answer in answers)
    ]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise BadRow(
            f"several questions could hold the preference ({', '.join(candidates)}); set argilla_question"
        )
    if not any(questions.values()):
        raise BadRow("no submitted judgement: no responses")
    raise BadRow(
        f"no ranking or label question names the responses (questions: {names}); set argilla_question"
    )


def _names_responses(value: Any, fields: Mapping[str, Any], responses: list[str]) -> bool:
    """Whether an answer refers to the responses: a label naming one (or a tie), or a ranking of them."""
    if isinstance(value, str):
        return value in fields or choice_of(value) is not None
    ranking = _ranking(value)
    return bool(ranking) and all(_field_of(name, fields, responses) is not None for name, _ in ranking)


def _submitted(answers: list[_Answer], question: str) -> list[_Answer]:
    """The answers that are votes; a question with none of them makes the record unusable."""
    submitted = [answer for answer in answers if answer.status == "submitted" and answer.value is not None]
    if submitted:
        return submitted
    counts = Counter(answer.status for answer in answers)
    detail = ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "none"
    raise BadRow(f"no submitted judgement: answers to '{question}': {detail}")


def _ranking(value: Any) -> list[tuple[str, int]] | None:
    """(name, rank) pairs from a ranking answer in any of its shapes; None if the value is not a ranking."""
    if isinstance(value, Mapping) and value.keys() >= {"rank", "value"}:
        ranks, names = value["rank"], value["value"]
        if not (isinstance(ranks, list) and isinstance(names, list) and len(ranks) == len(names)):
            return None
        pairs = list(zip(map(str, names), ranks, strict=True))
    elif isinstance(value, list) and all(isinstance(item, Mapping) and "value" in item for item in value):
        pairs = [(str(item["value"]), item.get("rank")) for item in value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        pairs = [(name, rank) for rank, name in enumerate(value, 1)]
    else:
        return None
    ranked = [(name, rank) for name, rank in pairs if rank is not None]  # v1 may leave an item unranked
    return ranked if all(isinstance(rank, int) for _, rank in ranked) else None


def _field_of(name: str, fields: Mapping[str, Any], responses: list[str]) -> str | None:
    """The field a ranked or chosen name refers to: the field itself, or the n-th numbered response
    (a ranking question's values need not be the field names: 'reply-2' for field 'response-2')."""
    if name in fields:
        return name
    index = ordinal(name)
    return responses[index] if index is not None and index < len(responses) else None


def _ranks(value: Any, question: str, fields: Mapping[str, Any], responses: list[str]) -> Ranks:
    """One answer as ranks over response fields: a ranking as given (equal ranks tie), a label as a pair."""
    if isinstance(value, str):
        return _label_ranks(value, question, fields, responses)
    ranking = _ranking(value)
    if ranking is None:
        raise BadRow(
            f"question '{question}' holds {excerpt(value, 60)}: not a ranking, nor a label naming a response"
        )
    ranks: Ranks = {}
    for name, rank in ranking:
        field = _field_of(name, fields, responses)
        if field is None:
            raise BadRow(f"ranking value {name!r} of '{question}' names no field (fields: {keys_of(fields)})")
        ranks[field] = rank
    return ranks


def _label_ranks(label: str, question: str, fields: Mapping[str, Any], responses: list[str]) -> Ranks:
    """A label picks one of two responses, by field name or as 'response-2' / 'B', or calls a tie."""
    if len(responses) != 2:
        raise BadRow(
            f"label question '{question}' needs exactly two response fields, found "
            f"{', '.join(responses) or 'none'} (fields: {keys_of(fields)}); rank more than two with a ranking question"
        )
    first, second = responses
    choice = "a" if label == first else "b" if label == second else choice_of(label)
    if choice is None:
        raise BadRow(f"label {label!r} of '{question}' names no response (responses: {first}, {second})")
    return ranks_for(choice, first, second)


def _text(fields: Mapping[str, Any], name: str) -> str:
    if not isinstance(fields[name], str):
        raise BadRow(f"response field '{name}' is not text: {excerpt(fields[name], 80)}")
    return fields[name]


IMPORTER = ArgillaImporter()
