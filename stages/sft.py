"""Stage 1: supervised fine-tuning on demonstrations, with TRL's SFTTrainer.

Data: conversational (`messages`) or prompt/completion rows from JSONL, parquet or a `datasets` directory.
Loss on completions only (prompt/completion data) or on assistant turns (messages data). After training,
the policy is sampled on held-out prompts and scored (gold reward where the task has one), so every SFT
run reports what the model actually does, not only its loss.

    python -m stages.sft --config configs/quickstart.yaml [stages.sft.max_steps=50 ...]
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from rlhf.config import SFTStageConfig
from rlhf.data.files import SFT_FORMS, load_rows
from rlhf.models import load_causal_lm, lora_config
from rlhf.stage import PUBLISHED_AS, StageContext, StageResult, stage_main
from rlhf.training import (
    LossWatch,
    held_out_samples,
    outcome_metrics,
    save_final,
    save_history,
    train_with_resume,
    trainer_arguments,
)

if TYPE_CHECKING:
    from trl import SFTTrainer

log = logging.getLogger("stages.sft")


def build_trainer(cfg: SFTStageConfig, ctx: StageContext, watch: LossWatch) -> SFTTrainer:
    """The configured SFTTrainer: model, data in its detected form, and our shared trainer arguments."""
    from trl import SFTConfig, SFTTrainer

    args = trainer_arguments(cfg, ctx)  # first: it sets the thread count the loads below use
    model, tokenizer = load_causal_lm(ctx.model)
    train, form = load_rows(ctx.data("sft_train", cfg.dataset), SFT_FORMS)
    has_eval = cfg.eval_dataset or "sft_eval" in ctx.inputs
    evaluation = load_rows(ctx.data("sft_eval", cfg.eval_dataset), SFT_FORMS)[0] if has_eval else None
    if evaluation is None:
        args["eval_strategy"] = "no"
    log.info("sft: %d training rows (%s form), %s eval rows", len(train), form, len(evaluation or []))
    return SFTTrainer(
        model=model,
        args=SFTConfig(
            **args,
            max_length=cfg.max_length,
            packing=cfg.packing,
            completion_only_loss=cfg.completion_only_loss if form == "prompt-completion" else None,
            assistant_only_loss=cfg.completion_only_loss and form == "messages",
        ),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        callbacks=[watch],
    )


def run(cfg: SFTStageConfig, ctx: StageContext) -> StageResult:
    watch = LossWatch()
    trainer = build_trainer(cfg, ctx, watch)
    resumed_from = train_with_resume(trainer)
    save_history(ctx, trainer.state.log_history)
    output = save_final(trainer, ctx)

    metrics = outcome_metrics(trainer, watch, resumed_from)
    metrics |= held_out_samples(trainer.model, trainer.processing_class, cfg.evaluation, ctx)
    return StageResult(stage=ctx.stage, output_dir=output, metrics=metrics, publish_as=PUBLISHED_AS["sft"])


def main(argv: list[str] | None = None) -> int:
    return stage_main("sft", run, argv)


if __name__ == "__main__":
    sys.exit(main())
