"""The tasks annotators see: pairwise (two responses) or ranking (three or more) Label Studio tasks, each keyed.

Stdlib only. Every task carries `meta.rlhf.key`, the hash of what it shows and where it came from, because
Label Studio does not deduplicate: a push compares keys to upload each task once, however often it runs.
The field names are those of Label Studio's "Human Preference collection for RLHF" template (`prompt`,
`answer1`, `answer2`), so `rlhf data import` reads the export like any other Label Studio export.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

Messages = list[dict[str, str]]

PAIRWISE_CONFIG = """<View>
  <Style>.prompt { white-space: pre-wrap; }</Style>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt" className="prompt"/>
  <Header value="Which answer is better? Choose none if neither is."/>
  <Pairwise name="comparison" toName="answer1,answer2" selectionStyle="background-color: #27ae60;"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
</View>
"""

# A Ranker without buckets: every response gets a place, best first (the stock "LLM Ranker" template's
# relevant / biased buckets would need `--bucket-order` at import).
RANKING_CONFIG = """<View>
  <Style>.prompt { white-space: pre-wrap; }</Style>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt" className="prompt"/>
  <Header value="Drag the answers into order, best first."/>
  <List name="answers" value="$items" title="Answers"/>
  <Ranker name="rank" toName="answers"/>
</View>
"""


def label_config(responses_per_task: int) -> str:
    """The labeling config for tasks of `responses_per_task` responses."""
    if responses_per_task < 2:
        raise ValueError(f"responses_per_task: expected at least 2, got {responses_per_task}")
    return PAIRWISE_CONFIG if responses_per_task == 2 else RANKING_CONFIG


def is_comparison_config(xml: str) -> bool:
    """Whether a labeling config asks for a comparison (a Pairwise or a Ranker control)."""
    return "<Pairwise" in xml or "<Ranker" in xml


def prompt_text(prompt: Messages) -> str:
    """A prompt as annotators read it: one turn as is, several with their roles."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{turn['role']}: {turn['content']}" for turn in prompt)


def build_tasks(
    prompts: list[Messages], responses: list[list[str]], meta: dict[str, Any], seed: int
) -> tuple[list[dict[str, Any]], int]:
    """One task per prompt from its responses; returns (tasks, prompts skipped).

    Identical and empty responses carry no preference an annotator could give, so they are dropped, and a
    prompt left with fewer than two is skipped (counted), as is a task identical to an earlier one (the same
    prompt drawn twice with the same answers: one task, its key the same). The display order is shuffled by a seeded rng:
    annotators favour the left answer, and the policy's first sample must not always sit there.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    rng = random.Random(f"{seed}:annotation-order")
    tasks, keys, skipped = [], set(), 0
    for prompt, group in zip(prompts, responses, strict=True):
        distinct = list(dict.fromkeys(r for r in group if r.strip()))
        if len(distinct) < 2:
            skipped += 1
            continue
        key = _key(prompt, sorted(distinct), meta)
        if key in keys:
            skipped += 1
            continue
        keys.add(key)
        rng.shuffle(distinct)
        data: dict[str, Any] = {"prompt": prompt_text(prompt)}
        if len(distinct) == 2:
            data |= {"answer1": distinct[0], "answer2": distinct[1]}
        else:
            data["items"] = [
                {"id": f"r{i}", "title": f"Response {i}", "body": text} for i, text in enumerate(distinct, 1)
            ]
        if len(prompt) > 1:
            data["messages"] = prompt
        tasks.append({"data": data, "meta": {"rlhf": {**meta, "key": key}}})
    return tasks, skipped


def responses_of(task: dict[str, Any]) -> list[str]:
    """A task's responses in display order."""
    data = task["data"]
    if "items" in data:
        return [item["body"] for item in data["items"]]
    return [data["answer1"], data["answer2"]]


def task_key(task: dict[str, Any]) -> str | None:
    """The key a task was pushed with (None: a task that did not come from us)."""
    meta = task.get("meta") or {}
    rlhf = meta.get("rlhf") if isinstance(meta, dict) else None
    return rlhf.get("key") if isinstance(rlhf, dict) else None


def _key(prompt: Messages, responses: list[str], meta: dict[str, Any]) -> str:
    """The prompt, its responses in any order, and where they came from, hashed: the same answers of the same
    policy in the same round are the same task, whichever side each is shown on."""
    payload = json.dumps(
        {"prompt": prompt, "responses": responses, "meta": meta}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()
