"""Reward sources of the online algorithms: Python reward functions by import path (called as TRL calls its own,
with the prompt rows' extra fields), the built-in gold reward, a weighted sum with reward models normalized, and
the one-line errors a broken reward function gets (naming the function and the sample)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.data.synthetic import gold_reward
from rlhf.errors import ConfigError, StageError
from rlhf.eval import PromptRow, Sample, load_prompt_rows
from rlhf.reward_sources import combined, load_reward_function, metrics_of, raw_matrix, reward_terms
from rlhf.rewards import gold
from rlhf.settings import RewardSource


def _samples(*pairs: tuple[str, str]) -> tuple[list[Sample], list[PromptRow]]:
    samples = [Sample([{"role": "user", "content": p}], r, True, len(r.split())) for p, r in pairs]
    return samples, [PromptRow(s.prompt, {"answer": "cat"}) for s in samples]


def _terms(*paths: str, weights: tuple[float, ...] = ()) -> list:
    sources = [
        RewardSource(function=p, weight=w) for p, w in zip(paths, weights or (1.0,) * len(paths), strict=True)
    ]
    return reward_terms(sources, [], "stages.policy")


def test_functions_get_completions_and_row_fields_and_are_weighted() -> None:
    samples, rows = _samples(("name two animals", "cat dog"), ("name two colors", "red"))
    terms = _terms("tests.reward_fixtures:words", "tests.reward_fixtures:says_the_answer", weights=(0.5, 2.0))
    raw = raw_matrix(terms, samples, rows)
    assert raw.tolist() == [[2.0, 1.0], [1.0, 0.0]]
    assert combined(raw, terms, [None, None]).tolist() == [3.0, 0.5]  # functions are not normalized
    metrics = metrics_of(raw, terms)
    assert float(metrics["score_raw_mean"]) == pytest.approx(1.75)
    assert float(metrics["score_words_mean"]) == 1.5 and float(metrics["score_says_the_answer_mean"]) == 0.5


def test_a_reward_models_column_is_normalized_by_its_stats() -> None:
    terms = _terms("tests.reward_fixtures:words", "tests.reward_fixtures:words", weights=(1.0, 3.0))
    raw = torch.tensor([[1.0, 5.0], [2.0, 9.0]])
    assert combined(raw, terms, [None, (1.0, 4.0)]).tolist() == [1.0 + 3.0, 2.0 + 6.0]


def test_the_builtin_gold_reward_is_the_tasks() -> None:
    prompts = [[{"role": "user", "content": "name two animals"}]] * 3
    completions = ["cat dog", "cat", "red blue"]
    expected = [gold_reward("name two animals", c) for c in completions]
    assert gold(prompts, completions) == expected
    assert expected[0] > expected[1] and expected[0] > expected[2]
    assert load_reward_function("rlhf.rewards:gold", "key") is gold


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_here:f", "stages.policy.rewards[0].function: cannot import 'no_such_module_here'"),
        ("tests.reward_fixtures:missing", "has no function 'missing'"),
        ("tests.reward_fixtures:NOT_A_FUNCTION", "has no function 'NOT_A_FUNCTION'"),
    ],
)
def test_a_function_that_cannot_be_had_is_a_config_error(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        _terms(path)


def test_errors_inside_a_function_name_it_and_the_sample() -> None:
    samples, rows = _samples(
        ("name two animals", "cat dog"), ("name five colors", "red"), ("name one fruit", "x")
    )
    with pytest.raises(StageError) as raised:
        raw_matrix(_terms("tests.reward_fixtures:fails_on_five"), samples, rows)
    message = str(raised.value)
    assert "reward function tests.reward_fixtures:fails_on_five raised KeyError" in message
    assert "sample 1 (prompt 'name five colors', completion 'red')" in message and "\n" not in message
    with pytest.raises(StageError, match=r"returned 'good' for sample 0 .*expected a finite number"):
        raw_matrix(_terms("tests.reward_fixtures:returns_text"), samples, rows)
    with pytest.raises(StageError, match="returned 1 values for 3 completions"):
        raw_matrix(_terms("tests.reward_fixtures:returns_too_few"), samples, rows)


def test_prompt_rows_keep_their_other_fields_for_the_functions(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "name two animals", "answer": "cat"}\n{"prompt": [{"role": "user", "content": "x"}]}\n'
    )
    rows = load_prompt_rows(path)
    assert rows[0] == PromptRow([{"role": "user", "content": "name two animals"}], {"answer": "cat"})
    assert rows[1].fields == {}
    samples = [Sample(row.messages, "a cat", True, 2) for row in rows]
    values = raw_matrix(_terms("tests.reward_fixtures:says_the_answer"), samples, rows)
    assert values[:, 0].tolist() == [1.0, 0.0]  # the second row has no answer: the function got None for it
