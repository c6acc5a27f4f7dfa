"""Reward functions the tests name by import path (`tests.reward_fixtures:...`), as a user's own module would be."""

from __future__ import annotations

from collections.abc import Sequence

Messages = list[dict[str, str]]


def words(prompts: Sequence[Messages], completions: Sequence[str], **fields: object) -> list[float]:
    """The completion's word count."""
    return [float(len(text.split())) for text in completions]


def says_the_answer(
    prompts: Sequence[Messages], completions: Sequence[str], answer: Sequence[str], **_: object
) -> list[float]:
    """1 where the completion contains the row's `answer` field (0 for a row without one)."""
    return [
        float(expected is not None and expected in text)
        for expected, text in zip(answer, completions, strict=True)
    ]


def fails_on_five(prompts: Sequence[Messages], completions: Sequence[str], **fields: object) -> list[float]:
    """Raises on prompts that ask for five things: a bug in a user's reward function."""
    for prompt in prompts:
        if "five" in prompt[-1]["content"]:
            raise KeyError("five")
    return [0.0] * len(completions)


def returns_text(prompts: Sequence[Messages], completions: Sequence[str], **fields: object) -> list[object]:
    return ["good"] * len(completions)


def returns_too_few(prompts: Sequence[Messages], completions: Sequence[str], **fields: object) -> list[float]:
    return [1.0]


NOT_A_FUNCTION = 3
