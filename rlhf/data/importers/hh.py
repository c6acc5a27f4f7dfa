"""Anthropic HH-RLHF: `{"chosen": transcript, "rejected": transcript}`, whole dialogues in one string each.

Both transcripts repeat the same dialogue and differ only in the last Assistant turn: that shared dialogue
becomes a multi-turn prompt, and the two last turns are the responses. Odd transcripts (no leading Human
turn, speakers that do not alternate, no final Assistant turn, an empty one, prefixes that differ) are
bad rows with the reason, since real HH files hold a few of each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import (
    get,
    hh_transcript,
    is_hh_transcript,
    is_record,
    preferred,
    shared_context,
)
from rlhf.data.records import Comparison, Message, Source


class HHImporter:
    name = "hh"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return (
            is_record(record)
            and "prompt" not in record
            and is_hh_transcript(record.get("chosen"))
            and is_hh_transcript(record.get("rejected"))
        )

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        chosen_context, chosen = _dialogue(get(record, "chosen"), "chosen")
        rejected_context, rejected = _dialogue(get(record, "rejected"), "rejected")
        yield preferred(
            shared_context(chosen_context, rejected_context, "chosen", "rejected"), chosen, rejected, source
        )


def _dialogue(value: Any, what: str) -> tuple[list[Message], str]:
    """A transcript split into the dialogue before its last Assistant turn and that turn's text."""
    turns = hh_transcript(value, what)
    if turns[-1]["role"] != "assistant":
        raise BadRow(f"{what} does not end with an Assistant turn")
    if not turns[-1]["content"].strip():
        raise BadRow(f"{what} has an empty last Assistant turn")
    return turns[:-1], turns[-1]["content"]


IMPORTER = HHImporter()
