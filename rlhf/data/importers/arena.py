"""Chatbot Arena battles (lmsys/chatbot_arena_conversations, lmsys/mt_bench_human_judgments).

`{"model_a", "model_b", "winner": "model_a" | "model_b" | "tie" | "tie (bothbad)", "judge", "turn",
"conversation_a": [messages], "conversation_b": [messages], ...}`. Both conversations are cut after turn
`turn` (MT-Bench rows carry the whole two-turn dialogue even when the vote is on turn 1); the prompt is
what precedes the last assistant reply and must be the same on both sides, so multi-turn battles in which
each model answered earlier turns differently are bad rows. The judge is the annotator; "tie (bothbad)"
is a tie with meta `both_bad`. Battle logs without conversation text are bad rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import get, is_record, last_reply, messages, shared_context
from rlhf.data.records import Choice, Comparison, Message, Source, Vote

# winner -> (vote, meta); "tie (inconsistent)" is MT-Bench's GPT-4 judge disagreeing with itself on a swap.
WINNERS: dict[str, tuple[Choice, dict[str, Any]]] = {
    "model_a": ("a", {}),
    "model_b": ("b", {}),
    "tie": ("tie", {}),
    "tie (bothbad)": ("tie", {"both_bad": True}),
    "tie (inconsistent)": ("tie", {}),
}


class ArenaImporter:
    name = "arena"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return is_record(record) and "winner" in record and "model_a" in record

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        winner = get(record, "winner")
        if not isinstance(winner, str) or winner not in WINNERS:
            raise BadRow(f"unknown winner {winner!r}; expected one of: {', '.join(WINNERS)}")
        if not record.get("conversation_a") or not record.get("conversation_b"):
            raise BadRow("battle has no conversation text")
        turn = _turn(record.get("turn"))
        context_a, response_a = _side(record, "conversation_a", turn)
        context_b, response_b = _side(record, "conversation_b", turn)
        prompt = shared_context(context_a, context_b, "conversation_a", "conversation_b")
        choice, meta = WINNERS[winner]
        judge = record.get("judge")
        vote = Vote(judge if isinstance(judge, str) and judge else None, choice)
        yield Comparison(prompt, response_a, response_b, [vote], source, meta=dict(meta))


def _side(record: Mapping[str, Any], key: str, turn: int | None) -> tuple[list[Message], str]:
    """One model's conversation, cut after the judged turn, split into context and reply."""
    return last_reply(_upto(messages(record[key], key), turn), key)


def _turn(value: Any) -> int | None:
    """The judged turn (1-based), or None to judge the whole conversation."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRow(f"turn is not a positive integer: {value!r}")
    return value


def _upto(conversation: list[Message], turn: int | None) -> list[Message]:
    """The conversation up to and including the assistant's reply in turn `turn`."""
    if turn is None:
        return conversation
    replies = [index for index, message in enumerate(conversation) if message["role"] == "assistant"]
    if len(replies) < turn:
        raise BadRow(f"turn {turn} was judged but the conversation has {len(replies)} assistant replies")
    return conversation[: replies[turn - 1] + 1]


IMPORTER = ArenaImporter()
