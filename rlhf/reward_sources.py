"""What an online algorithm optimizes: a weighted sum of terms, each a reward model's score or a Python reward
function's value (a verifiable reward: a unit test passed, valid JSON, the task's gold answer).

A reward function is named by import path (`mypkg.rewards:is_valid_json`) and called as TRL calls its reward
functions, so one written for TRL works here: keyword lists `prompts` (messages), `completions` (text) and
every other field of the prompts' rows, one entry per completion; it returns one number per completion.

Each reward model's score is normalized (mean 0, std 1, with the statistics stored with it, else those of the
first rollout) before weighting, so weights compare like with like; a function's values are taken as they
are. Hand-written, not TRL's: TRL's GRPOTrainer sums its reward functions the same way, but it is not
callable apart from its trainer.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlhf.errors import ConfigError, StageError
from rlhf.eval import PromptRow, Sample
from rlhf.ppo_models import RewardModel
from rlhf.rewards import score, score_ids

if TYPE_CHECKING:
    from rlhf.settings import RewardSource

RewardFunction = Callable[..., Sequence[float]]


def load_reward_function(path: str, key: str) -> RewardFunction:
    """The function at `package.module:function`; one line naming the config key when it cannot be had."""
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure of the user's module is a config error
        raise ConfigError(f"{key}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{key}: {module_name!r} has no function {name!r}")
    return function


@dataclass
class RewardTerm:
    """One weighted term of the reward: a function (`function`), else a reward model (`model`, set once the
    models are loaded: `with_models`)."""

    label: str  # in metrics: score_<label>_mean
    weight: float
    function: RewardFunction | None = None
    model: RewardModel | None = None
    path: str = ""  # the function's import path, for errors
    stats: tuple[float, float] | None = None  # a reward model's stored (mean, std), for normalization

    def raw(self, samples: Sequence[Sample], rows: Sequence[PromptRow]) -> Tensor:
        """[1][7] This term's raw value of each response (truncated at its first EOS): [B]."""
        values = (
            self._model_scores(samples) if self.function is None else self._function_values(samples, rows)
        )
        raw = torch.tensor(values, dtype=torch.float32)
        if not_finite := int((~torch.isfinite(raw)).sum()):
            raise StageError(f"reward {self.label}: {not_finite} non-finite scores")
        return raw

    def _model_scores(self, samples: Sequence[Sample]) -> list[float]:
        """Sharing the policy's tokenizer, the reward model reads the exact token ids sampled; otherwise the
        response text is decoded and re-encoded in the reward model's own format."""
        rm = self.model
        if rm.shared_tokenizer:
            sequences = [s.prompt_ids + s.response_ids for s in samples]
            return score_ids(rm.model, sequences, rm.tokenizer.pad_token_id)
        return score(rm.model, rm.tokenizer, [s.prompt for s in samples], [s.response for s in samples])

    def _function_values(self, samples: Sequence[Sample], rows: Sequence[PromptRow]) -> list[float]:
        """The function on the whole batch; when it fails, again sample by sample to name the one it fails on."""
        try:
            values = list(self._call(samples, rows))
        except Exception:  # the user's code: find the sample, then report it
            for index in range(len(samples)):
                self._call_one(samples, rows, index)
            raise  # it failed on the batch but on no sample alone: its own error stands
        if len(values) != len(samples):
            raise StageError(
                f"reward function {self.path} returned {len(values)} values for {len(samples)} completions"
            )
        for index, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise StageError(f"reward function {self.path} returned {value!r} for {describe(samples[index], index)}: "
                                 "expected a finite number")  # fmt: skip
        return [float(v) for v in values]

    def _call(self, samples: Sequence[Sample], rows: Sequence[PromptRow]) -> Sequence[float]:
        keys = sorted({key for row in rows for key in row.fields})
        fields = {key: [row.fields.get(key) for row in rows] for key in keys}
        return self.function(
            prompts=[s.prompt for s in samples], completions=[s.response for s in samples], **fields
        )

    def _call_one(self, samples: Sequence[Sample], rows: Sequence[PromptRow], index: int) -> None:
        try:
            self._call(samples[index : index + 1], rows[index : index + 1])
        except Exception as exc:  # named with its sample
            raise StageError(f"reward function {self.path} raised {type(exc).__name__}: {exc} on "
                             f"{describe(samples[index], index)}") from exc  # fmt: skip


def describe(sample: Sample, index: int) -> str:
    """A sample as an error names it: its index in the rollout and the start of its prompt and completion."""
    prompt = sample.prompt[-1]["content"] if sample.prompt else ""
    return f"sample {index} (prompt {prompt[:80]!r}, completion {sample.response[:80]!r})"


def reward_terms(
    sources: Sequence[RewardSource], stats: Sequence[tuple[float, float] | None], key: str
) -> list[RewardTerm]:
    """The terms of `sources`, in order, before any model loads: functions imported (an error names
    `key`.rewards[i]), reward models with their stored `stats` (one per model source, in order)."""
    terms, model_stats = [], iter(stats)
    for index, source in enumerate(sources):
        if source.function is not None:
            function = load_reward_function(source.function, f"{key}.rewards[{index}].function")
            terms.append(
                RewardTerm(source.function.rpartition(":")[2], source.weight, function, path=source.function)
            )
        else:
            label = "reward_model" if index == 0 else f"reward_model_{index}"
            terms.append(RewardTerm(label, source.weight, stats=next(model_stats)))
    return terms


def with_models(terms: Sequence[RewardTerm], models: Sequence[RewardModel]) -> list[RewardTerm]:
    """The terms with the loaded reward models in the places of the model terms, in order."""
    loaded = iter(models)
    return [
        term if term.function is not None else dataclasses.replace(term, model=next(loaded)) for term in terms
    ]


def raw_matrix(terms: Sequence[RewardTerm], samples: Sequence[Sample], rows: Sequence[PromptRow]) -> Tensor:
    """Every term's raw value of every response: [B, K] (K terms)."""
    return torch.stack([term.raw(samples, rows) for term in terms], dim=1)


def combined(raw: Tensor, terms: Sequence[RewardTerm], stats: Sequence[tuple[float, float] | None]) -> Tensor:
    """[6] The weighted sum of the terms, a column normalized by its (mean, std) in `stats` first where it
    has them (reward models; None: as it is). raw: [B, K] -> [B]."""
    columns = []
    for column, term, column_stats in zip(raw.unbind(1), terms, stats, strict=True):
        if column_stats is not None:
            mean, std = column_stats
            column = (column - mean) / max(std, 1e-8)
        columns.append(term.weight * column)
    return torch.stack(columns, dim=1).sum(1)


def metrics_of(raw: Tensor, terms: Sequence[RewardTerm]) -> dict[str, Tensor]:
    """The weighted raw sum's mean and std (`score_raw_mean`, `score_raw_std`: with one reward model of weight
    1, its raw score), and each term's mean (`score_<label>_mean`) when there are several. raw: [B, K]."""
    weights = torch.tensor([term.weight for term in terms], dtype=raw.dtype, device=raw.device)
    total = raw @ weights
    metrics = {
        "score_raw_mean": total.mean(),
        "score_raw_std": total.std() if len(total) > 1 else torch.zeros((), device=raw.device),
    }
    if len(terms) > 1:
        metrics |= {
            f"score_{t.label}_mean": column.mean() for t, column in zip(terms, raw.unbind(1), strict=True)
        }
    return metrics
