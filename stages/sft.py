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

from rlhf.data.files import SFT_FORMS, load_rows
from rlhf.launch import stage_main
from rlhf.models import is_adapter, load_causal_lm, lora_config
from rlhf.settings import SFTStageConfig
from rlhf.stage import StageContext, StageResult
from rlhf.training import held_out_samples, stage_dtypes, train_and_save, trainer_arguments

if TYPE_CHECKING:
    from trl import SFTTrainer

log = logging.getLogger(__spec__.name)  # not __name__: that is "__main__" under `python -m`


def build_trainer(cfg: SFTStageConfig, ctx: StageContext) -> SFTTrainer:
    """The configured SFTTrainer: data in its detected form, our shared trainer arguments, then the model
    (after the arguments: under ZeRO-3 their DeepSpeed config makes it load partitioned)."""
    from trl import SFTConfig, SFTTrainer

    train, form = load_rows(ctx.data("sft_train", cfg.dataset), SFT_FORMS)
    has_eval = cfg.eval_dataset or "sft_eval" in ctx.inputs
    evaluation = load_rows(ctx.data("sft_eval", cfg.eval_dataset), SFT_FORMS)[0] if has_eval else None
    log.info("sft: %d training rows (%s form), %s eval rows", len(train), form, len(evaluation or []))
    args = SFTConfig(
        **trainer_arguments(cfg, ctx, evaluates=evaluation is not None),
        max_length=cfg.max_length,
        packing=cfg.packing,
        completion_only_loss=cfg.completion_only_loss if form == "prompt-completion" else None,
        assistant_only_loss=cfg.completion_only_loss and form == "messages",
    )
    adapter = cfg.lora is not None or is_adapter(ctx.model.name)
    model, tokenizer = load_causal_lm(ctx.model, stage_dtypes(cfg, ctx).of_trained(adapter))
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    )


def run(cfg: SFTStageConfig, ctx: StageContext) -> StageResult:
    # 1. The trainer: the start model and the demonstrations
    trainer = build_trainer(cfg, ctx)

    # 2. Train (resuming where a previous try stopped) and save the policy
    output, metrics = train_and_save(trainer, ctx)

    # 3. What the policy does: sampled on held-out prompts and scored
    metrics |= held_out_samples(trainer.model, trainer.processing_class, cfg.evaluation, ctx)
    return StageResult(stage=ctx.stage, output_dir=output, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
