"""Helpers the public-format importers share: field access, message checks, HH transcripts, rated pairs.

Every helper turns odd input (wrong type, missing key, empty text) into `BadRow` with a reason a person can
act on, so the format modules stay a few lines of format knowledge each.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.records import Comparison, Message, Source, Vote, user
from rlhf.errors import DataError

HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
RATING_PAIRS = ("best-vs-random", "best-vs-worst", "all-above-margin")


def is_record(record: Any) -> bool:
    """A record a sniffer may look at: an object that no annotation tool wrote.

    Label Studio (`data` with `annotations`/`completions`; JSON_MIN and CSV rows with `annotator` and
    `annotation_id` columns) and Argilla (`fields` + `responses`, flattened
    `<q>.responses` columns, v1 question columns `[{user_id, value, status}]` or, after an Arrow round
    trip, `{user_id: [...], value: [...], status: [...]}`) have importers of their own, and
    their rows can carry `prompt`/`chosen`/`rejected` fields that would otherwise look like ours.
    """
    if not isinstance(record, Mapping):
        return False
    keys = {key for key in record if isinstance(key, str)}
    if "data" in keys and keys & {"annotations", "completions", "predictions"}:
        return False
    if {"annotator", "annotation_id"} <= keys:
        return False
    if {"fields", "responses"} <= keys or any(".responses" in key for key in keys):
        return False
    return not any(_argilla_responses(value) for value in record.values())


def _argilla_responses(value: Any) -> bool:
    first = value[0] if isinstance(value, list) and value else value
    return isinstance(first, Mapping) and {"user_id", "value"} <= first.keys()


def obj(value: Any, what: str) -> Mapping[str, Any]:
    """A JSON object (a dict), such as the record itself."""
    if not isinstance(value, Mapping):
        raise BadRow(f"{what} should be an object, got {type(value).__name__}")
    return value


def array(value: Any, what: str) -> list[Any]:
    """A JSON array."""
    if not isinstance(value, list):
        raise BadRow(f"{what} should be a list, got {type(value).__name__}")
    return value


def get(record: Any, key: str) -> Any:
    """A required field of a record."""
    if type(record) is not dict:  # a dict is an object: skip the abstract type check
        obj(record, "record")
    if key not in record or record[key] is None:
        raise BadRow(f"missing '{key}'")
    return record[key]


def string(value: Any, what: str) -> str:
    """A string, possibly empty (responses: the shared machinery judges empty ones)."""
    if not isinstance(value, str):
        raise BadRow(f"{what} should be text, got {type(value).__name__}")
    return value


def text(value: Any, what: str) -> str:
    """A non-empty string (prompts, transcripts)."""
    if not string(value, what).strip():
        raise BadRow(f"{what} is empty")
    return value


def number(value: Any, what: str) -> float:
    """A finite number, also from a CSV string; anything else is a bad row."""
    parsed = as_number(value)
    if parsed is None:
        raise BadRow(f"{what} is not a number: {value!r}")
    return parsed


def as_number(value: Any) -> float | None:
    """A finite number, or None where the value is not one ("N/A", NaN, a bool, a word)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        parsed = float(value)
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


def content_text(content: Any, what: str) -> str:
    """Message content as text: a string, or OpenAI-style text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise BadRow(f"{what} has no text content")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise BadRow(f"{what} has a non-text part ({kind})")
        texts.append(part["text"])
    return "\n".join(texts)


def messages(value: Any, what: str) -> list[Message]:
    """A non-empty list of chat messages, reduced to role and text content."""
    if not isinstance(value, list) or not value:
        raise BadRow(f"{what} is not a non-empty list of messages")
    result = []
    for index, message in enumerate(value):
        where = f"{what} message {index}"
        role = obj(message, where).get("role")
        if not isinstance(role, str) or not role:
            raise BadRow(f"{where} has no role")
        result.append({"role": role, "content": content_text(message.get("content"), where)})
    return result


def prompt_messages(value: Any, what: str = "prompt") -> list[Message]:
    """A prompt given as text (one user turn) or as messages."""
    return user(text(value, what)) if isinstance(value, str) else messages(value, what)


def last_reply(conversation: list[Message], what: str) -> tuple[list[Message], str]:
    """A conversation split into its context and the final assistant reply."""
    if conversation[-1]["role"] != "assistant":
        raise BadRow(f"{what} does not end with an assistant message")
    return conversation[:-1], conversation[-1]["content"]


def reply(value: Any, what: str) -> tuple[list[Message], str]:
    """A response as plain text (no context) or as messages ending in the assistant's reply."""
    if isinstance(value, str):
        return [], value
    return last_reply(messages(value, what), what)


def shared_context(a: list[Message], b: list[Message], what_a: str, what_b: str) -> list[Message]:
    """The context both responses answer; they must answer the same one to be comparable."""
    if a != b:
        raise BadRow(f"{what_a} and {what_b} differ before their last reply")
    return a


def explicit_pair(prompt: Any, chosen: Any, rejected: Any) -> tuple[list[Message], str, str]:
    """Prompt and the two reply texts from prompt/chosen/rejected values (TRL's explicit-prompt form).

    Where chosen and rejected carry the whole conversation (UltraFeedback binarized does), that shared
    conversation is the prompt: it is what the replies answer.
    """
    if isinstance(chosen, str) and isinstance(rejected, str):  # plain replies: no context to share
        return prompt_messages(prompt), chosen, rejected
    chosen_context, chosen_text = reply(chosen, "chosen")
    rejected_context, rejected_text = reply(rejected, "rejected")
    context = shared_context(chosen_context, rejected_context, "chosen", "rejected")
    return context or prompt_messages(prompt), chosen_text, rejected_text


def preferred(
    prompt: list[Message], chosen: str, rejected: str, source: Source, margin: float | None = None
) -> Comparison:
    """A comparison from a dataset that names no annotator: chosen is response a, with one vote for it."""
    return Comparison(prompt, chosen, rejected, [Vote(None, "a")], source, margin=margin)


def hh_transcript(value: Any, what: str) -> list[Message]:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as alternating user/assistant turns.

    Content is kept as written (less the one space after the speaker's colon); a transcript that does not
    start with a Human turn or whose speakers do not alternate is a bad row, not a guess.
    """
    transcript = text(value, what)
    parts = HH_MARKER.split(transcript)
    if parts[0] or len(parts) < 3 or parts[1] != "Human":
        raise BadRow(f"{what} does not start with '\\n\\nHuman:'")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = HH_ROLES[speaker]
        if turns and turns[-1]["role"] == role:
            raise BadRow(f"{what} has two {speaker} turns in a row (turn {len(turns) + 1})")
        turns.append({"role": role, "content": content.removeprefix(" ")})
    return turns


def is_hh_transcript(value: Any) -> bool:
    """True for text in HH-RLHF's transcript form (for sniffing)."""
    return isinstance(value, str) and value.startswith("\n\nHuman:")


def rated_pairs(
    scores: Sequence[float], options: ImportOptions, source: Source
) -> list[tuple[int, int, float]]:
    """Pairs (better, worse, gap) of indices into `scores` (higher is better), chosen by `options.rating_pairs`.

    best-vs-random draws the worse one from a generator seeded by `options.seed` and the row's position,
    so the same file and seed always give the same pairs. The best is the first of equally rated bests.
    """
    if options.rating_pairs not in RATING_PAIRS:
        raise DataError(
            f"unknown rating_pairs '{options.rating_pairs}'; expected one of: {', '.join(RATING_PAIRS)}"
        )
    if len(scores) < 2:
        raise BadRow(f"fewer than two rated responses ({len(scores)})")
    best, worst = max(scores), min(scores)
    if best == worst:
        raise BadRow("no response rated above another")
    top = scores.index(best)
    if options.rating_pairs == "best-vs-worst":
        return [(top, scores.index(worst), best - worst)]
    if options.rating_pairs == "best-vs-random":
        worse = [index for index, score in enumerate(scores) if score < best]
        pick = random.Random(f"{options.seed}:{source.row}").choice(worse)
        return [(top, pick, best - scores[pick])]
    pairs = [
        (i, j, scores[i] - scores[j])
        for i in range(len(scores))
        for j in range(len(scores))
        if scores[i] > scores[j] and scores[i] - scores[j] >= options.rating_margin
    ]
    if not pairs:
        raise BadRow(f"no two responses differ by at least {options.rating_margin}")
    return pairs
