"""Nectar (berkeley-nest/Nectar): k-wise rankings of answers to one HH-style prompt.

`{"prompt": "\\n\\nHuman: ...\\n\\nAssistant:", "answers": [{"answer", "model", "rank"}], "turns", ...}`,
rank 1 the best. The prompt is an HH transcript ending in the open Assistant turn the answers fill; pairs
follow `options.rating_pairs` as for rated completions, with ranks as the scale (margin = rank gap, and
"all-above-margin" compares `options.rating_margin` in rank units).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import (
    array,
    get,
    hh_transcript,
    is_record,
    number,
    obj,
    preferred,
    rated_pairs,
    string,
)
from rlhf.data.records import Comparison, Message, Source


class NectarImporter:
    name = "nectar"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return is_record(record) and isinstance(record.get("answers"), list) and "prompt" in record

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        prompt = _prompt(get(record, "prompt"))
        answers = _answers(get(record, "answers"))
        scores = [-rank for _, rank in answers]  # rated_pairs wants higher = better
        for better, worse, gap in rated_pairs(scores, options, source):
            yield preferred(prompt, answers[better][0], answers[worse][0], source, margin=gap)


def _prompt(value: Any) -> list[Message]:
    """The dialogue before the open Assistant turn that the answers complete."""
    turns = hh_transcript(value, "prompt")
    if turns[-1]["role"] != "assistant" or turns[-1]["content"].strip():
        raise BadRow("prompt does not end with an open '\\n\\nAssistant:' turn")
    return turns[:-1]


def _answers(value: Any) -> list[tuple[str, float]]:
    """(text, rank) of each answer."""
    answers = []
    for index, item in enumerate(array(value, "answers")):
        answer = obj(item, f"answer {index}")
        text = string(answer.get("answer"), f"answer {index} text")
        answers.append((text, number(answer.get("rank"), f"answer {index} rank")))
    return answers


IMPORTER = NectarImporter()
