"""OpenAI preference fine-tuning JSONL (the DPO method's training file).

`{"input": {"messages": [...], "tools"?, "parallel_tool_calls"?}, "preferred_output": [assistant message],
"non_preferred_output": [assistant message]}`. Content is a string or a list of text parts (joined by
newlines); other parts (images) and outputs that are tool calls rather than text are bad rows. Tool
definitions are not carried: the canonical prompt is chat messages only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers._common import get, is_record, last_reply, messages, obj, preferred
from rlhf.data.records import Comparison, Source


class OpenAIImporter:
    name = "openai"

    def sniff(self, record: Mapping[str, Any]) -> bool:
        return is_record(record) and isinstance(record.get("input"), Mapping) and "preferred_output" in record

    def comparisons(
        self, record: Mapping[str, Any], source: Source, options: ImportOptions
    ) -> Iterator[Comparison]:
        inputs = obj(get(record, "input"), "input")
        prompt = messages(get(inputs, "messages"), "input.messages")
        chosen = _output(get(record, "preferred_output"), "preferred_output")
        rejected = _output(get(record, "non_preferred_output"), "non_preferred_output")
        yield preferred(prompt, chosen, rejected, source)


def _output(value: Any, what: str) -> str:
    """The text of an output: exactly one assistant message."""
    if isinstance(value, list) and len(value) != 1:
        raise BadRow(f"{what} holds {len(value)} messages; expected one assistant message")
    return last_reply(messages(value, what), what)[1]


IMPORTER = OpenAIImporter()
