"""TRL's standard preference forms: explicit prompt (`prompt`, `chosen`, `rejected`) or implicit prompt
(`chosen`, `rejected` only), each as plain text or as conversational messages.

Implicit conversational: the messages before the last (assistant) one must be the same in both, and are
the prompt. Implicit text: like TRL's `extract_prompt`, the prompt is the longest common prefix, but cut
back to a whitespace boundary (TRL cuts mid-word, "The sky is b" + "lue."), and the whitespace at the cut
is dropped since a chat template separates prompt and reply itself. A `margin`, else `score_chosen` −
`score_rejected` (UltraFeedback binarized), becomes the margin.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import (
    explicit_pair,
    get,
    is_hh_transcript,
    is_record,
    number,
    preferred,
    reply,
    shared_context,
)
from rlhf.data.records import Comparison, Message, Source, user


class TRLImporter:
    name = "trl"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        if not is_record(record) or not all(
            isinstance(record.get(key), str | list) for key in ("chosen", "rejected")
        ):
            return False
        hh = (
            "prompt" not in record
            and is_hh_transcript(record["chosen"])
            and is_hh_transcript(record["rejected"])
        )
        return not hh

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        chosen, rejected = get(record, "chosen"), get(record, "rejected")
        if record.get("prompt") is not None:
            prompt, chosen_text, rejected_text = explicit_pair(record["prompt"], chosen, rejected)
        else:
            prompt, chosen_text, rejected_text = _implicit_pair(chosen, rejected)
        yield preferred(prompt, chosen_text, rejected_text, source, margin=_margin(record))


def _implicit_pair(chosen: Any, rejected: Any) -> tuple[list[Message], str, str]:
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_text(chosen, rejected)
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise BadRow("chosen and rejected must both be text or both be messages")
    chosen_context, chosen_text = reply(chosen, "chosen")
    rejected_context, rejected_text = reply(rejected, "rejected")
    prompt = shared_context(chosen_context, rejected_context, "chosen", "rejected")
    if not prompt:
        raise BadRow("no prompt: chosen holds only the reply and there is no 'prompt' column")
    return prompt, chosen_text, rejected_text


def _split_text(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Prompt and replies of two texts that share their beginning, split at a whitespace boundary."""
    shared = next(
        (i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
        min(len(chosen), len(rejected)),
    )
    cut = max((i for i in range(shared) if chosen[i].isspace()), default=-1)
    prompt = chosen[:cut].rstrip()
    if cut < 0 or not prompt:
        raise BadRow("chosen and rejected share no prompt (no common prefix up to a whitespace)")
    return user(prompt), chosen[cut:].lstrip(), rejected[cut:].lstrip()


def _margin(record: Mapping[str, Any]) -> float | None:
    """The strength of the preference, where the row carries one."""
    if record.get("margin") is not None:
        return number(record["margin"], "margin")
    if record.get("score_chosen") is None or record.get("score_rejected") is None:
        return None
    return number(record["score_chosen"], "score_chosen") - number(record["score_rejected"], "score_rejected")


IMPORTER = TRLImporter()
