"""Preference pairs against the policy stage's `max_length`: what TRL drops or cuts, counted, and the one
setting that leaves nothing to train on, refused before TRL's reference pass."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rlhf.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase
    from trl import DPOTrainer

log = logging.getLogger(__name__)


def length_counts(trainer: DPOTrainer, given: dict[str, int], max_length: int) -> dict[str, float]:
    """Pairs TRL dropped (prompt alone fills `max_length`) or will truncate (a response cut short), per split.

    TRL filters the first without a word and cuts the second in its collator; both are counted and logged here.
    """
    counts: dict[str, float] = {}
    for split, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        if dataset is None:
            continue
        counts[f"pairs_overlength_dropped_{split}"] = given[split] - len(dataset)
        counts[f"pairs_truncated_{split}"] = truncated(dataset, max_length)
        if counts[f"pairs_overlength_dropped_{split}"] or counts[f"pairs_truncated_{split}"]:
            log.warning(
                "policy: %s split: %d pairs dropped (prompt alone reaches max_length=%d), %d truncated "
                "(a response cut short); raise stages.policy.max_length to keep them whole",
                split, counts[f"pairs_overlength_dropped_{split}"], max_length, counts[f"pairs_truncated_{split}"],
            )  # fmt: skip
    return counts


def check_a_prompt_fits(train: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """One line when every training prompt alone fills `max_length`: TRL would drop every pair, and its
    reference pass fail on the empty split. Scans until the first prompt that fits (usually the first)."""
    for batch in train.select_columns(["prompt"]).iter(batch_size=256):
        for prompt in batch["prompt"]:
            text = prompt if isinstance(prompt, str) else tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True
            )  # fmt: skip
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) < max_length:
                return
    raise DataError(
        f"stages.policy.max_length={max_length}: every training prompt fills it, no pair is left; raise it"
    )


def truncated(dataset: Dataset, max_length: int) -> int:
    """Tokenized pairs whose prompt + longer response exceeds `max_length` (batched: bounded memory)."""
    count = 0
    for batch in dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).iter(batch_size=4096):
        for prompt, chosen, rejected in zip(*batch.values(), strict=True):
            count += len(prompt) + max(len(chosen), len(rejected)) > max_length
    return count
