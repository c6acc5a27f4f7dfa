"""Judgements as the annotation tools hold them: prompts, choice labels ('Response A', 'Tie') and rankings.

Label Studio and Argilla projects show a prompt beside two or more responses and ask for a choice or an
order; these helpers read the prompt, name the response a label means, and turn every annotator's ranks
into one vote per pair, so both importers share one path from a judgement to votes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import combinations
from typing import Any

from rlhf.data.importers import BadRow
from rlhf.data.records import Choice, Message, Vote, excerpt, user

Ranks = dict[str, int]  # response key -> rank; 1 is best, equal ranks tie
Judgement = tuple[str | None, Ranks]  # (annotator, ranks)

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


def prompt_key(data: Mapping[str, Any], shown: str | None = None) -> str | None:
    """The key holding the prompt: a conversation list first, then `shown` (the field a labeling config shows
    as the prompt), else the first non-empty text of the usual names."""
    for key in CHAT_KEYS:
        if isinstance(data.get(key), list):
            return key
    if shown is not None and shown in data:
        return shown
    return next((key for key in PROMPT_KEYS if isinstance(data.get(key), str) and data[key].strip()), None)


def prompt_messages(
    data: Mapping[str, Any], shown: str | None = None, field: str | None = None
) -> list[Message]:
    """The prompt as chat messages. Which key holds it is a convention of the project's template, so every
    key tried is named in the error; `field`, the one the user named, is the only key tried when given."""
    key = field or prompt_key(data, shown)
    if key is None:
        raise BadRow(
            f"no prompt: expected one of {', '.join(CHAT_KEYS + PROMPT_KEYS)} (keys: {keys_of(data)})"
        )
    if key not in data:
        raise BadRow(f"no prompt: the prompt field '{key}' is not in the data (keys: {keys_of(data)})")
    value = data[key]
    if isinstance(value, list):
        return _chat_messages(value, key)
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"prompt '{key}' is not a text or a conversation: {excerpt(value, 80)}")
    return user(value)


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
