"""Row-level quality: the checks that quarantine a comparison, and the keys that find duplicates.

Each check returns the reason a comparison cannot be trained on, or None. Reasons read "what: detail"
(or "what (detail)"); the part before the detail is the category the report counts by.

Duplicates are found by 64-bit digests of the prompt and the unordered pair of responses, exactly as written
and normalized (casefolded, whitespace collapsed), kept in a compact table so that a million-row import
holds tens of megabytes of keys, never the texts.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Callable
from typing import Any, NamedTuple

from rlhf.data.records import Comparison, Message, Vote

CHOICES = ("a", "b", "tie")
# U+FFFD (a decoder gave up), a lone surrogate (bytes smuggled through), or mojibake: UTF-8 read as
# Latin-1/cp1252 ("Ã©" for "é", "Â " for a no-break space, "â€™" for "’").
SUSPECT = re.compile("[\ufffd\ud800-\udfff\u00c2\u00c3\u00e2]")  # one fast scan finds every candidate
MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]|â€")
SURROGATE = re.compile("[\ud800-\udfff]")  # UTF-8 cannot encode one: the parquet writer would fail


def category(reason: str) -> str:
    """The part of a reason the report counts by: "over length: 1043 tokens > 1024" -> "over length"."""
    return re.split(r": | \(", reason, maxsplit=1)[0]


def check(
    comparison: Comparison,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> str | None:
    """Why `comparison` cannot be trained on, or None. Over-length needs both a counter and a limit."""
    reason = admit(comparison, count_tokens, max_tokens)
    return reason if isinstance(reason, str) else None


def admit(
    comparison: Comparison,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> str | RowKeys:
    """`check`'s reason, or where there is none the comparison's `row_keys`: one call on the import's hot
    path, which normalizes each response once for both."""
    if not _well_formed(comparison) and (reason := malformed(comparison)):
        return reason
    prompt, a, b = comparison.prompt, comparison.response_a, comparison.response_b
    texts = {"response a": a, "response b": b}
    if reason := empty_text(prompt, texts):
        return reason
    normalized_a, normalized_b = normalize(a), normalize(b)
    # Texts whose words differ normalize apart (casefolding maps whitespace to itself and nothing else to
    # whitespace), so the split is needed only where the normalized texts are equal.
    if normalized_a == normalized_b and a.split() == b.split():
        return "chosen identical to rejected"
    if reason := text_problem(prompt, texts, _labels(comparison), count_tokens, max_tokens):
        return reason
    return _pair_keys(prompt, a, b, normalized_a, normalized_b)


def empty_text(prompt: list[Message], texts: dict[str, str]) -> str | None:
    """An empty prompt or response (named in `texts`), which nothing can be learned from."""
    if all(_blank(message["content"]) for message in prompt):  # the joined prompt text is blank
        return "empty prompt"
    for name, text in texts.items():
        if _blank(text):
            return f"empty response ({name})"
    return None


def text_problem(
    prompt: list[Message],
    texts: dict[str, str],
    labels: list[tuple[str, str]],
    count_tokens: Callable[[str], int] | None,
    max_tokens: int | None,
) -> str | None:
    """Bad encoding in the prompt, the responses (`texts`, by name) or the written labels (roles, annotator
    ids), or prompt + a response over `max_tokens`: what both kinds of data check alike."""
    prompt_string = prompt_text(prompt)
    for name, text in [("prompt", prompt_string), *texts.items()]:
        if reason := bad_encoding(text):
            return f"bad encoding: {reason} in {name}"
    for name, text in labels:
        if not text.isascii() and SURROGATE.search(text):
            return f"bad encoding: lone surrogate in {name}"
    if count_tokens is not None and max_tokens is not None:
        prompt_tokens = count_tokens(prompt_string)
        for name, text in texts.items():
            total = prompt_tokens + count_tokens(text)
            if total > max_tokens:
                return f"over length: prompt + {name} is {total} tokens > max_tokens {max_tokens}"
    return None


def malformed(comparison: Comparison) -> str | None:
    """A comparison an importer built wrongly: caught here so it is quarantined, not written half-typed."""
    problems: list[str] = []
    if not isinstance(comparison.prompt, list) or not comparison.prompt:
        problems.append("prompt is not a non-empty list of messages")
    elif not all(_is_message(message) for message in comparison.prompt):
        problems.append("a prompt message is not {role: str, content: str}")
    for name in ("response_a", "response_b"):
        if not isinstance(getattr(comparison, name), str):
            problems.append(f"{name} is {type(getattr(comparison, name)).__name__}, not str")
    if not isinstance(comparison.votes, list) or not all(
        getattr(vote, "choice", None) in CHOICES and isinstance(getattr(vote, "annotator", None), str | None)
        for vote in comparison.votes
    ):
        problems.append("votes are not a list of Vote(annotator str or None, 'a' | 'b' | 'tie')")
    if comparison.margin is not None and not isinstance(comparison.margin, int | float):
        problems.append(f"margin is {type(comparison.margin).__name__}, not a number")
    return f"malformed comparison: {'; '.join(problems)}" if problems else None


def _well_formed(comparison: Comparison) -> bool:
    """The common case of `malformed` finding nothing, told by exact types (False: let `malformed` look)."""
    prompt, votes, margin = comparison.prompt, comparison.votes, comparison.margin
    if not (type(prompt) is list and prompt and type(votes) is list):
        return False
    if type(comparison.response_a) is not str or type(comparison.response_b) is not str:
        return False
    for message in prompt:
        if type(message) is not dict or type(message.get("role")) is not str:
            return False
        if type(message.get("content")) is not str:
            return False
    for vote in votes:
        if type(vote) is not Vote or vote.choice not in CHOICES:
            return False
        if vote.annotator is not None and type(vote.annotator) is not str:
            return False
    return margin is None or type(margin) is float or type(margin) is int


def _blank(text: str) -> bool:
    """`not text.strip()`, without copying the text."""
    return not text or text.isspace()


def _labels(comparison: Comparison) -> list[tuple[str, str]]:
    return written_labels(comparison.prompt, comparison.votes)


def written_labels(prompt: list[Message], votes: list[Vote]) -> list[tuple[str, str]]:
    """The written strings besides the texts: message roles and annotator ids."""
    roles = [(f"prompt message {i} role", m["role"]) for i, m in enumerate(prompt)]
    names = [("annotator id", vote.annotator) for vote in votes if vote.annotator is not None]
    return roles + names


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
    )


def bad_encoding(text: str) -> str | None:
    """Signs of a decoding gone wrong upstream (the first one in the text)."""
    if text.isascii():  # every sign is a non-ASCII character
        return None
    for suspect in SUSPECT.finditer(text):
        char = suspect.group()
        if char == "\ufffd":
            return "replacement character U+FFFD"
        if "\ud800" <= char <= "\udfff":
            return "lone surrogate"
        if mojibake := MOJIBAKE.match(text, suspect.start()):
            return f"mojibake {mojibake.group()!r}"
    return None


def prompt_text(prompt: list[Message]) -> str:
    """The prompt's text, for token counts and encoding checks (the chat template's tokens not counted)."""
    return "\n".join(message["content"] for message in prompt)


def normalize(text: str) -> str:
    """The form normalized duplicates compare equal in: casefolded, whitespace collapsed and stripped."""
    if collapsed(text):  # ASCII casefolding leaves whitespace as it is: nothing to collapse
        return text.casefold()
    return " ".join(text.casefold().split())


def collapsed(text: str) -> bool:
    """True for ASCII text whose only whitespace is single spaces between words, so that
    `" ".join(text.split()) == text` (False: not known). Printable ASCII holds no whitespace but the space,
    and these scans run in C, several times faster than splitting the text."""
    return (
        text.isascii()
        and text.isprintable()
        and "  " not in text
        and not text.startswith(" ")
        and not text.endswith(" ")
    )


class RowKeys(NamedTuple):
    """A comparison's duplicate keys (64-bit digests) and its normalized prompt (which the split hashes).
    A named tuple: one is built for every row."""

    exact: int
    normalized: int
    prompt: str


def row_keys(prompt: list[Message], a: str, b: str) -> RowKeys:
    """Keys of (prompt, {a, b}): the order of the two responses does not matter."""
    return _pair_keys(prompt, a, b, normalize(a), normalize(b))


def _pair_keys(prompt: list[Message], a: str, b: str, normalized_a: str, normalized_b: str) -> RowKeys:
    texts = [a, b] if a <= b else [b, a]
    normalized = (
        [normalized_a, normalized_b] if normalized_a <= normalized_b else [normalized_b, normalized_a]
    )
    return _keys(prompt, texts, normalized)


def completion_keys(prompt: list[Message], completion: str) -> RowKeys:
    """Keys of (prompt, completion): an unpaired judgement's row."""
    return _keys(prompt, [completion], [normalize(completion)])


def _keys(prompt: list[Message], texts: list[str], normalized_texts: list[str]) -> RowKeys:
    roles = [m["role"] for m in prompt]
    contents = [m["content"] for m in prompt]
    exact = _digest(roles, contents, texts)
    roles = [normalize(role) for role in roles]
    contents = [normalize(content) for content in contents]
    normalized_prompt = "\x1e".join(
        [f"{role}\x1f{content}" for role, content in zip(roles, contents, strict=True)]
    )
    normalized = _digest(roles, contents, normalized_texts)
    return RowKeys(exact, normalized, normalized_prompt)


def _digest(first: list[str], second: list[str], third: list[str]) -> int:
    """64 bits of BLAKE2b over the parts, unambiguously separated; never 0 (the table's empty mark)."""
    text = "\x1e".join(first) + "\x1d" + "\x1e".join(second) + "\x1d" + "\x1e".join(third)
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest())
    return value or 1


class DuplicateIndex:
    """Normalized key -> (exact key, where the first row went), in an open-addressing table of two
    `array('Q')`s.

    Cost: 16 bytes a slot, at most half the slots used, so 32-64 bytes per unique row (32 MiB for a million
    unique rows; 48 MiB while the table doubles, old and new side by side). A dict of int to int takes about
    110 bytes a row. Two different rows share a 64-bit digest with probability about n²/2⁶⁵ (3e-8 for a
    million rows); the exact key is kept to 32 bits, which only labels a duplicate exact or normalized.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._keys = array("Q", [0]) * capacity
        self._values = array("Q", [0]) * capacity
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def first(self, keys: RowKeys, where: int) -> tuple[str, int] | None:
        """None for a new row (remembered with `where`, < 2³²); for a duplicate, ("exact" | "normalized",
        the `where` of the row it repeats)."""
        mask = len(self._keys) - 1
        slot = keys.normalized & mask
        while (key := self._keys[slot]) != 0:
            if key == keys.normalized:
                value = self._values[slot]
                kind = "exact" if value >> 32 == keys.exact >> 32 else "normalized"
                return kind, value & 0xFFFFFFFF
            slot = (slot + 1) & mask
        self._keys[slot] = keys.normalized
        self._values[slot] = (keys.exact >> 32) << 32 | where
        self._used += 1
        if 2 * self._used > len(self._keys):
            self._grow()
        return None

    def _grow(self) -> None:
        keys, values = self._keys, self._values
        self._keys = array("Q", [0]) * (2 * len(keys))
        self._values = array("Q", [0]) * (2 * len(keys))
        mask = len(self._keys) - 1
        for key, value in zip(keys, values, strict=True):
            if key:
                slot = key & mask
                while self._keys[slot]:
                    slot = (slot + 1) & mask
                self._keys[slot] = key
                self._values[slot] = value
