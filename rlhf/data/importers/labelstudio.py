"""Label Studio JSON export: one task per record, one vote per submitted annotation.

A project holds a preference in one of three controls: the Pairwise tag (`selected: left | right`), a
Choices tag whose values name a side ("Response A", "answer2", "Tie", ...), or the Ranker tag (an ordered
list, or buckets), whose k-wise order becomes every pair. Cancelled (skipped) annotations cast no vote. A
submitted annotation without a result is an annotator who saw no winner (in Pairwise, choosing neither side
deletes the result), so it counts as a tie. Predictions are model pre-annotations, never votes.

The helpers for prompts, choice labels and rankings at the top are shared with the Argilla importer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import combinations
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.records import Choice, Comparison, Message, Source, Vote, excerpt, user

Ranks = dict[str, int]  # response key -> rank; 1 is best, equal ranks tie
Judgement = tuple[str | None, Ranks]  # (annotator, ranks)

# --- shared with the Argilla importer -----------------------------------------------------------------

CHAT_KEYS = ("messages", "dialogue", "conversation", "chat")
PROMPT_KEYS = ("prompt", "question", "instruction", "query", "input", "text")
_ROLES = {
    **dict.fromkeys(("user", "human", "customer", "client", "prompter"), "user"),
    **dict.fromkeys(("assistant", "bot", "chatbot", "ai", "model", "gpt", "agent"), "assistant"),
    "system": "system",
}
_TIES = frozenset(
    (
        "tie", "draw", "equal", "both equal", "equally good", "equally bad", "same", "about the same",
        "both", "both good", "both bad", "tie both bad", "neither", "none", "no preference",
    )
)  # fmt: skip
_SIDES = {"left": 0, "first": 0, "right": 1, "second": 1}
_LABEL_PREFIX = re.compile(
    r"^(?:response|answer|reply|completion|output|generation|model|option|candidate|text)\s*"
)
_LABEL_SUFFIX = re.compile(
    r"\s*(?:is\s+)?(?:(?:slightly|much|clearly|somewhat|significantly)\s+)?(?:better|preferred|wins)$"
)
# keys that differ only by a trailing number (answer1, response-2) or a separated letter (response_a, "a")
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?:[-_ ]?(?P<digit>\d+)|(?:^|[-_ ])(?P<letter>[a-z]))$", re.IGNORECASE)


def prompt_key(data: Mapping[str, Any]) -> str | None:
    """The key holding the prompt: a conversation list first, else the first non-empty text of the usual names."""
    for key in CHAT_KEYS:
        if isinstance(data.get(key), list):
            return key
    return next((key for key in PROMPT_KEYS if isinstance(data.get(key), str) and data[key].strip()), None)


def prompt_messages(data: Mapping[str, Any]) -> list[Message]:
    """The prompt as chat messages. Which key holds it is a convention of the project's template, so every
    key tried is named in the error."""
    key = prompt_key(data)
    if key is None:
        raise BadRow(
            f"no prompt: expected one of {', '.join(CHAT_KEYS + PROMPT_KEYS)} (keys: {keys_of(data)})"
        )
    return _chat_messages(data[key], key) if key in CHAT_KEYS else user(data[key])


def _chat_messages(turns: list[Any], key: str) -> list[Message]:
    """A conversation as {role, content} messages; Label Studio's Paragraphs write {author, text}."""
    if not turns:
        raise BadRow(f"'{key}' is an empty conversation")
    return [_message(turn, f"'{key}' turn {index}") for index, turn in enumerate(turns)]


def _message(turn: Any, where: str) -> Message:
    speaker = turn.get("role", turn.get("author")) if isinstance(turn, Mapping) else None
    text = turn.get("content", turn.get("text")) if isinstance(turn, Mapping) else None
    role = _ROLES.get(str(speaker).strip().lower())
    if role is None or not isinstance(text, str):
        raise BadRow(
            f"{where}: expected {{role, content}} or {{author, text}} with a known role, got {excerpt(turn, 80)}"
        )
    return {"role": role, "content": text}


def _normalize(label: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", label.lower()).split())


def ordinal(label: str) -> int | None:
    """Which response a label names, from 0: 'Response B' → 1, 'answer1' → 0, 'left' → 0, 'A is better' → 0."""
    core = _LABEL_PREFIX.sub("", _LABEL_SUFFIX.sub("", _normalize(label)))
    if core in _SIDES:
        return _SIDES[core]
    if core.isdigit():
        return int(core) - 1 if int(core) >= 1 else None
    if len(core) == 1 and core.isalpha():
        return ord(core) - ord("a")
    return None


def choice_of(label: str) -> Choice | None:
    """A two-sided judgement from a label ('Response A', 'answer2', 'Tie', 'Both equal'); None if it is neither."""
    if _normalize(label) in _TIES:
        return "tie"
    side = ordinal(label)
    return "a" if side == 0 else "b" if side == 1 else None


def ranks_for(choice: Choice, first: str, second: str) -> Ranks:
    """A two-sided judgement as ranks, so pairs and k-wise rankings share one path to votes."""
    return {first: 1 if choice != "b" else 2, second: 1 if choice != "a" else 2}


def numbered_groups(keys: Iterable[str]) -> list[list[str]]:
    """Keys that differ only by a trailing number or letter (answer1/answer2, response-a/response-b), each
    group in its numbering order: the usual way to name responses shown side by side."""
    groups: dict[tuple[str, bool], dict[int, str]] = {}
    for key in keys:
        match = _NUMBERED.match(key)
        if match:
            digit, letter = match["digit"], match["letter"]
            index = int(digit) if digit else ord(letter.lower()) - ord("a")
            groups.setdefault((match["stem"].lower(), bool(digit)), {})[index] = key
    return [[group[index] for index in sorted(group)] for group in groups.values() if len(group) >= 2]


def pair_votes(
    order: Sequence[str], judgements: Sequence[Judgement]
) -> Iterator[tuple[str, str, list[Vote]]]:
    """Every pair of responses, in display order, with the vote of each annotator who ranked both: k-wise
    rankings become pairs and equal ranks become ties. Pairs nobody judged are left out, and a record where
    no pair was judged is unusable rather than silently empty."""
    judged = False
    for first, second in combinations(order, 2):
        votes = [
            Vote(annotator, _compare(ranks[first], ranks[second]))
            for annotator, ranks in judgements
            if first in ranks and second in ranks
        ]
        if votes:
            judged = True
            yield first, second, votes
    if not judged:
        raise BadRow(f"no pair of responses was judged (responses: {', '.join(order) or 'none'})")


def _compare(first: int, second: int) -> Choice:
    return "a" if first < second else "b" if first > second else "tie"


def keys_of(data: Mapping[str, Any]) -> str:
    """The keys of a record for an error message."""
    return ", ".join(sorted(map(str, data))) or "none"


# --- Label Studio ---------------------------------------------------------------------------------------

Control = tuple[str, str, str]  # (result type, from_name, to_name) of the control that holds the preference


class LabelStudioImporter:
    """Tasks of a Label Studio JSON export (the list the "JSON" export writes, one task per record)."""

    name = "labelstudio"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        """A task: a `data` object with an `annotations` (or `predictions`) list."""
        return (
            isinstance(record, Mapping)
            and isinstance(record.get("data"), Mapping)
            and (isinstance(record.get("annotations"), list) or isinstance(record.get("predictions"), list))
        )

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        """One comparison per pair of responses, with a vote from every submitted annotation."""
        data = record.get("data")
        if not isinstance(data, Mapping):
            raise BadRow("task has no 'data' object")
        submitted = _submitted(record.get("annotations"))
        control = _control(submitted)
        texts = (
            _ranked_items(data, submitted, control)
            if control and control[0] == "ranker"
            else _pair(data, control)
        )
        judgements = [
            (_annotator(annotation), _ranks(annotation, control, texts)) for annotation in submitted
        ]
        prompt = prompt_messages(data)
        for first, second, votes in pair_votes(list(texts), judgements):
            yield Comparison(prompt, texts[first], texts[second], votes, source)


def _submitted(annotations: Any) -> list[Mapping[str, Any]]:
    """The annotations that count: cancelled ones are skips, and a task left with none is unusable."""
    annotations = [] if annotations is None else annotations
    if not isinstance(annotations, list) or not all(isinstance(a, Mapping) for a in annotations):
        raise BadRow(f"'annotations' is not a list of objects: {excerpt(annotations, 80)}")
    submitted = [annotation for annotation in annotations if not annotation.get("was_cancelled")]
    if not submitted:
        count = len(annotations)
        state = f"{count} annotation{'s' if count != 1 else ''}, all cancelled" if count else "no annotations"
        raise BadRow(f"no submitted judgement: {state}")
    return submitted


def _results(annotation: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    results = annotation.get("result") or []
    if not isinstance(results, list) or not all(isinstance(item, Mapping) for item in results):
        raise BadRow(f"annotation {annotation.get('id')}: 'result' is not a list of objects")
    return results


def _control(submitted: list[Mapping[str, Any]]) -> Control | None:
    """The control whose results are the preference; None when no annotator left any result (all no-preference)."""
    seen = {
        (str(item.get("type")), str(item.get("from_name")), str(item.get("to_name")))
        for annotation in submitted
        for item in _results(annotation)
    }
    direct = sorted(control for control in seen if control[0] in ("pairwise", "ranker"))
    if len({tag for _, tag, _ in direct}) > 1:
        raise BadRow(
            f"several comparison controls in one task: {', '.join(sorted({tag for _, tag, _ in direct}))}"
        )
    if direct:
        return direct[0]
    choices = _choices_control(submitted, sorted({tag for kind, tag, _ in seen if kind == "choices"}))
    if choices is None and seen:
        kinds = ", ".join(sorted({kind for kind, _, _ in seen}))
        raise BadRow(
            f"no comparison in the annotations: results of type {kinds} (expected pairwise, choices or ranker)"
        )
    return choices


def _choices_control(submitted: list[Mapping[str, Any]], names: list[str]) -> Control | None:
    """The one Choices control whose values name a side or a tie; other Choices (quality, safety) are ignored."""
    values = {
        name: [value for annotation in submitted for value in _choices(annotation, name)] for name in names
    }
    candidates = [name for name in names if any(choice_of(value) for value in values[name])]
    if len(candidates) > 1:
        raise BadRow(f"several Choices controls could hold the comparison: {', '.join(candidates)}")
    if candidates:
        return ("choices", candidates[0], "")
    if names:
        seen = "; ".join(f"{name}: {', '.join(map(repr, values[name]))}" for name in names)
        raise BadRow(
            f"no Choices value names a side or a tie ({seen}); expected e.g. 'Response A', 'Response B', 'Tie'"
        )
    return None


def _choices(annotation: Mapping[str, Any], name: str) -> list[str]:
    values = [_value(item).get("choices") for item in _results(annotation) if item.get("from_name") == name]
    return [str(value) for chosen in values if isinstance(chosen, list) for value in chosen]


def _pair(data: Mapping[str, Any], control: Control | None) -> dict[str, str]:
    """The two responses, left first: the Pairwise toName when it names two data keys, else the one pair of
    keys numbered alike (answer1/answer2, response_a/response_b) or left/right."""
    named = [name.strip() for name in (control[2] if control else "").split(",")]
    if len(named) == 2 and all(name in data for name in named):
        return _texts(data, named)
    pairs = [group for group in numbered_groups(map(str, data)) if len(group) == 2]
    pairs += [["left", "right"]] if "left" in data and "right" in data else []
    if len(pairs) == 1:
        return _texts(data, pairs[0])
    if pairs:
        found = ", ".join("/".join(pair) for pair in pairs)
        raise BadRow(f"ambiguous responses in the task data: {found} (keys: {keys_of(data)})")
    raise BadRow(
        f"cannot find the two responses in the task data (keys: {keys_of(data)}); expected e.g. answer1/answer2"
    )


def _texts(data: Mapping[str, Any], keys: list[str]) -> dict[str, str]:
    for key in keys:
        if not isinstance(data[key], str):
            raise BadRow(f"response '{key}' is not text: {excerpt(data[key], 80)}")
    return {key: data[key] for key in keys}


def _ranked_items(
    data: Mapping[str, Any], submitted: list[Mapping[str, Any]], control: Control
) -> dict[str, str]:
    """The texts of the List the Ranker ordered: the list in the task data whose item ids cover every ranked id."""
    ranked = {item for annotation in submitted for item in _ranker_ranks(annotation, control[1]) or {}}
    for value in data.values():
        if (
            isinstance(value, list)
            and value
            and all(isinstance(item, Mapping) and "id" in item for item in value)
        ):
            items = {str(item["id"]): item for item in value}
            if ranked <= items.keys():
                return {item_id: _item_text(item_id, item) for item_id, item in items.items()}
    raise BadRow(
        f"ranked items {', '.join(sorted(ranked))} are not the ids of a list in the task data (keys: {keys_of(data)})"
    )


def _item_text(item_id: str, item: Mapping[str, Any]) -> str:
    """A List item shows its `body` (the `title` is a caption such as the model's name)."""
    for key in ("body", "text", "content"):
        if isinstance(item.get(key), str):
            return item[key]
    raise BadRow(f"list item '{item_id}' has no text body: {excerpt(item, 80)}")


def _ranker_ranks(annotation: Mapping[str, Any], tag: str) -> Ranks | None:
    """Item ranks from a Ranker result: `{tag: [ids]}` (or a bare list) is an order; otherwise the keys are
    buckets, best first, whose items tie, and the '_' column holds items left unsorted, so they get no rank."""
    values = [_value(item) for item in _results(annotation) if item.get("from_name") == tag]
    if not values:
        return None
    ranker = values[0].get("ranker")
    if isinstance(ranker, Mapping) and set(ranker) == {tag}:
        ranker = ranker[tag]
    if isinstance(ranker, list):
        return {str(item): rank for rank, item in enumerate(ranker, 1)}
    if isinstance(ranker, Mapping) and all(isinstance(ids, list) for ids in ranker.values()):
        buckets = [ids for name, ids in ranker.items() if name != "_" and ids]
        return {str(item): tier for tier, ids in enumerate(buckets, 1) for item in ids}
    raise BadRow(f"annotation {annotation.get('id')}: unreadable Ranker value {excerpt(values[0], 80)}")


def _ranks(annotation: Mapping[str, Any], control: Control | None, texts: dict[str, str]) -> Ranks:
    """One annotator's judgement as ranks over the responses; no result for the control means no preference."""
    if control is None:
        return dict.fromkeys(texts, 1)
    kind, tag, _ = control
    if kind == "ranker":
        ranks = _ranker_ranks(annotation, tag)
        return dict.fromkeys(texts, 1) if ranks is None else ranks
    first, second = texts
    choice = _pairwise_choice(annotation, tag) if kind == "pairwise" else _choices_choice(annotation, tag)
    return ranks_for(choice or "tie", first, second)


def _pairwise_choice(annotation: Mapping[str, Any], tag: str) -> Choice | None:
    selected = [_value(item).get("selected") for item in _results(annotation) if item.get("from_name") == tag]
    if not selected:
        return None
    if selected[0] not in ("left", "right"):
        raise BadRow(f"annotation {annotation.get('id')}: unknown Pairwise selection {selected[0]!r}")
    return "a" if selected[0] == "left" else "b"


def _choices_choice(annotation: Mapping[str, Any], tag: str) -> Choice | None:
    values = _choices(annotation, tag)
    if len(values) > 1:
        raise BadRow(
            f"annotation {annotation.get('id')}: several choices in '{tag}': {', '.join(map(repr, values))}"
        )
    if not values:
        return None
    choice = choice_of(values[0])
    if choice is None:
        raise BadRow(f"annotation {annotation.get('id')}: unknown choice {values[0]!r} in '{tag}'")
    return choice


def _value(item: Mapping[str, Any]) -> Mapping[str, Any]:
    value = item.get("value")
    return value if isinstance(value, Mapping) else {}


def _annotator(annotation: Mapping[str, Any]) -> str | None:
    """`completed_by` is a user id or a user object depending on version and export path."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id") if who.get("id") is not None else who.get("email")
    return None if who is None else str(who)


IMPORTER = LabelStudioImporter()
