"""Stage 2: a reward model on the canonical preference data, with TRL's RewardTrainer.

The model is a sequence classifier with one output: a causal LM (a base or the SFT policy from the
registry) with a fresh score head, or an encoder (BERT family) with its own tokenizer. The loss is
Bradley-Terry (optionally with the pairs' margin, and a centring term). Ties carry no preference and are
skipped (counted). Pairs are tokenized and fitted to `max_length` here, never by TRL, which silently drops
over-long pairs: the prompt is cut from the left with both responses whole, or the pair is quarantined with
its reason in `quarantine.jsonl`; the stage checks that TRL kept every pair it was given.

After training it reports held-out accuracy against the annotators' majority and (where the task has one)
against the gold reward, and the reward's mean and standard deviation on the training responses, which the
registry manifest keeps so that PPO can normalize rewards.

    python -m stages.reward --config configs/quickstart.yaml [stages.reward.max_steps=50 ...]
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from rlhf import atomic
from rlhf.data.preference_dataset import load_preferences
from rlhf.errors import DataError, StageError
from rlhf.eval import GOLD_REWARDS, last_user_text
from rlhf.launch import stage_main
from rlhf.models import is_adapter, load_reward_model, load_tokenizer, lora_config
from rlhf.rewards import Framing, fit_length, framing, reward_stats, score_ids
from rlhf.settings import RewardStageConfig
from rlhf.stage import StageContext, StageResult
from rlhf.training import stage_dtypes, train_and_save, trainer_arguments

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import RewardTrainer

log = logging.getLogger(__spec__.name)  # not __name__: that is "__main__" under `python -m`

QUARANTINE = "quarantine.jsonl"


@dataclass
class FittedSplit:
    """One split as the trainer gets it (token ids), with the rows it came from and what was left out."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # the source rows of the kept pairs
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    truncated: int = 0
    ties: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)

    def dataset(self, use_margin: bool) -> Dataset:
        """TRL's pre-tokenized preference form: it tokenizes nothing, so it cannot cut or add anything."""
        from datasets import Dataset

        columns: dict[str, list[Any]] = {"chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}
        if use_margin:
            columns["margin"] = self.margins
        return Dataset.from_dict(columns)


def fit_split(
    name: str, data: Dataset, tokenizer: PreTrainedTokenizerBase, cfg: RewardStageConfig, frame: Framing
) -> FittedSplit:
    """Every row of a split ends in one place: kept (whole or prompt-truncated), tie skipped, or quarantined."""
    split = FittedSplit(name)
    for row in data:
        if row["tie"]:
            split.ties += 1
            continue
        fitted = fit_length(tokenizer, row["prompt"], row["chosen"], row["rejected"], cfg.max_length,
                            cfg.length_policy, frame)  # fmt: skip
        if fitted.reason:
            split.quarantined.append(
                {
                    "source_file": row["source_file"],
                    "source_row": row["source_row"],
                    "split": name,
                    "reason": fitted.reason,
                    "prompt": row["prompt"],
                }
            )
            continue
        split.rows.append(row)
        split.chosen_ids.append(fitted.chosen_ids)
        split.rejected_ids.append(fitted.rejected_ids)
        split.margins.append(row["margin"] or 0.0)
        split.truncated += fitted.prompt_tokens_cut > 0
    return split


def write_quarantine(splits: list[FittedSplit], path: Path) -> None:
    """The pairs left out for length, with their reasons and source locations (written aside, then renamed)."""
    lines = [json.dumps(entry, ensure_ascii=False) + "\n" for split in splits for entry in split.quarantined]
    atomic.write_text(path, "".join(lines))


def pair_counts(splits: dict[str, FittedSplit]) -> dict[str, int]:
    """Where the pairs went: pairs read = train + test + quarantined + ties skipped; truncated are among the used."""
    return {
        "pairs_train": len(splits["train"].chosen_ids),
        "pairs_test": len(splits["test"].chosen_ids),
        "pairs_truncated": sum(s.truncated for s in splits.values()),
        "pairs_quarantined": sum(len(s.quarantined) for s in splits.values()),
        "ties_skipped": sum(s.ties for s in splits.values()),
    }


def fit_preferences(
    cfg: RewardStageConfig, ctx: StageContext, tokenizer: PreTrainedTokenizerBase
) -> dict[str, FittedSplit]:
    """Both splits of the preference data fitted for the model, what was left out written and accounted for."""
    source = ctx.data("preferences", cfg.dataset)
    data = load_preferences(Path(source))
    frame = framing(tokenizer)
    splits = {name: fit_split(name, data[name], tokenizer, cfg, frame) for name in ("train", "test")}
    quarantine = ctx.work_dir / QUARANTINE
    if ctx.rank.is_main:
        write_quarantine(list(splits.values()), quarantine)
    n = pair_counts(splits)
    log.info("reward: pairs read = train + test + quarantined + ties skipped: %d = %d + %d + %d + %d (prompt cut "
             "in %d; quarantine: %s)", len(data["train"]) + len(data["test"]), n["pairs_train"], n["pairs_test"],
             n["pairs_quarantined"], n["ties_skipped"], n["pairs_truncated"], quarantine)  # fmt: skip
    if not splits["train"].chosen_ids:
        raise DataError(f"{source}: no usable training pair (ties and over-length pairs are left out; see "
                        f"{quarantine})")  # fmt: skip
    return splits


def build_trainer(cfg: RewardStageConfig, ctx: StageContext) -> tuple[RewardTrainer, dict[str, FittedSplit]]:
    """The configured RewardTrainer on pairs fitted here, and the fitted splits (for counts and evaluation)."""
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    splits = fit_preferences(cfg, ctx, load_tokenizer(ctx.model))
    evaluation = splits["test"].dataset(cfg.use_margin) if splits["test"].chosen_ids else None
    args = (
        RewardConfig(  # before the model: under ZeRO-3 its DeepSpeed config makes the model load partitioned
            **trainer_arguments(cfg, ctx, evaluates=evaluation is not None),
            max_length=cfg.max_length,
            center_rewards_coefficient=cfg.center_rewards_coefficient,
            disable_dropout=True,
        )
    )
    set_seed(ctx.seed)  # the fresh score head of a causal LM is drawn at load time
    adapter = cfg.lora is not None or is_adapter(ctx.model.name)
    model, tokenizer = load_reward_model(ctx.model, stage_dtypes(cfg, ctx).of_trained(adapter))
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"].dataset(cfg.use_margin),
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora, task_type="SEQ_CLS"),
    )
    for name, prepared in (("train", trainer.train_dataset), ("test", trainer.eval_dataset)):
        if prepared is not None and len(prepared) != len(splits[name].chosen_ids):
            raise StageError(f"reward: the trainer kept {len(prepared)} of {len(splits[name].chosen_ids)} "
                             f"{name} pairs; every pair must be fitted before training")  # fmt: skip
    return trainer, splits


def pair_scores(
    model: PreTrainedModel, split: FittedSplit, pad_token_id: int, batch_size: int
) -> tuple[list[float], list[float]]:
    """The reward of each kept pair's chosen and rejected response, as the model saw them in training."""
    scores = score_ids(model, split.chosen_ids + split.rejected_ids, pad_token_id, batch_size)
    return scores[: len(split.chosen_ids)], scores[len(split.chosen_ids) :]


def gold_agreement(
    task: str, rows: list[dict[str, Any]], chosen: list[float], rejected: list[float]
) -> tuple[float, int] | None:
    """Share of pairs the model orders as the gold reward does, over pairs whose gold rewards differ (and
    whose prompts the task knows); with how many pairs that was. None when no pair qualifies."""
    gold = GOLD_REWARDS[task]
    agree = []
    for row, ours_chosen, ours_rejected in zip(rows, chosen, rejected, strict=True):
        prompt = last_user_text(row["prompt"])
        try:
            gap = gold(prompt, row["chosen"][-1]["content"]) - gold(prompt, row["rejected"][-1]["content"])
        except DataError:  # a pair from another source than the task's
            continue
        if gap:
            agree.append((ours_chosen > ours_rejected) == (gap > 0))
    return (fmean(agree), len(agree)) if agree else None


def evaluate(
    trainer: RewardTrainer, splits: dict[str, FittedSplit], task: str | None, batch_size: int
) -> dict[str, float]:
    """Held-out accuracy (majority, gold) and the reward's statistics over the training responses."""
    pad = trainer.processing_class.pad_token_id
    metrics: dict[str, float] = {}
    train_chosen, train_rejected = pair_scores(trainer.model, splits["train"], pad, batch_size)
    metrics["reward_mean"], metrics["reward_std"] = reward_stats(train_chosen + train_rejected)
    metrics["train_accuracy"] = fmean(c > r for c, r in zip(train_chosen, train_rejected, strict=True))
    test = splits["test"]
    if test.chosen_ids:
        chosen, rejected = pair_scores(trainer.model, test, pad, batch_size)
        metrics["accuracy"] = fmean(c > r for c, r in zip(chosen, rejected, strict=True))
        gold = gold_agreement(task, test.rows, chosen, rejected) if task in GOLD_REWARDS else None
        if gold:
            metrics["accuracy_gold"], metrics["pairs_gold"] = gold
    return metrics


def run(cfg: RewardStageConfig, ctx: StageContext) -> StageResult:
    # 1. The model with a fresh score head, and the preference pairs fitted to its length
    trainer, splits = build_trainer(cfg, ctx)

    # 2. Train (resuming where a previous try stopped) and save the reward model
    output, metrics = train_and_save(trainer, ctx)
    metrics |= pair_counts(splits)

    # 3. Held-out accuracy and the reward's statistics, on every rank: under ZeRO-3 each forward gathers the
    #    shards from all of them (rank 0 reports)
    metrics |= evaluate(trainer, splits, ctx.task, cfg.per_device_eval_batch_size)
    return StageResult(stage=ctx.stage, output_dir=output, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
