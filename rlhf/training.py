"""What every TRL-based stage shares: trainer arguments from our config, precision, and how a stage ends
(`train_and_save`: the loss watch, resume from the last complete checkpoint, the training history for the run
report, the atomic hand-over of the final model, the outcome metrics); the held-out sampling every stage
reports.

One helper for all stages, so SFT, reward and DPO cannot drift apart in how they checkpoint or log.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainingArguments

from rlhf import atomic
from rlhf.checkpoints import last_complete_checkpoint, step_of, write_aside_then_rename
from rlhf.distributed import (
    deepspeed_config,
    has_gpu,
    on_cpu_under_launcher,
    start_cpu_deepspeed,
    uses_deepspeed,
)
from rlhf.errors import StageError
from rlhf.eval import generate, load_prompts, summarize
from rlhf.precision import LoadDtypes, load_dtypes, precision_flags
from rlhf.progress import Bar, NoBar, stage_progress
from rlhf.quiet_console import verbose
from rlhf.settings import GenerationSpec, TrainStageConfig
from rlhf.sharding import log_held_shares
from rlhf.stage import HISTORY_FILE, StageContext

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        Trainer,
        TrainerControl,
        TrainerState,
    )

log = logging.getLogger(__name__)

TRACKED = {"loss": "train_loss"}  # trainer log key -> our metric name (first and last values reported)
TRAINER_WRITES_LAST = "trainer_state.json"
# transformers renamed `gradient_checkpointing` during 5.x and warns at every stage when given the old name
CHECKPOINTING_ARGUMENT = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in TrainingArguments.__dataclass_fields__
)  # of a checkpoint: one without it was cut short


def stage_dtypes(cfg: TrainStageConfig, ctx: StageContext) -> LoadDtypes:
    """What this stage's models load in: its precision, and whether DeepSpeed holds the fp32 master weights."""
    dtypes = load_dtypes(cfg.precision, uses_deepspeed(ctx.distributed))
    log.info("%s: models load in %s (trained) / %s (frozen)", ctx.stage, dtypes.trained, dtypes.frozen)
    return dtypes


def trainer_arguments(cfg: TrainStageConfig, ctx: StageContext, evaluates: bool) -> dict[str, Any]:
    """Keyword arguments shared by every TRL config class (SFTConfig, RewardConfig, DPOConfig); `evaluates`:
    the stage has held-out data for the trainer's own evaluation."""
    args = dict(
        output_dir=str(ctx.checkpoint_dir),
        run_name=f"{ctx.run_dir.name}-{ctx.stage}",
        seed=ctx.seed,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if evaluates else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        **{CHECKPOINTING_ARGUMENT: cfg.gradient_checkpointing},
        use_cpu=not has_gpu(),
        report_to=ctx.tracker.report_to if ctx.tracker else "none",
        disable_tqdm=not (ctx.rank.is_main and verbose()),  # else the stage's own bar (`TrainerProgress`)
        dataloader_num_workers=0,
        **precision_flags(cfg.precision),
    )
    return args | deepspeed_arguments(ctx)


def deepspeed_arguments(ctx: StageContext) -> dict[str, Any]:
    """The trainer's DeepSpeed settings from the stage's `distributed` settings (nothing without a ZeRO
    stage or config). On CPUs under a launcher the DeepSpeed state is started here, gloo underneath, and the
    trainer told to reuse it; a single CPU process has nothing to shard and trains without DeepSpeed."""
    config = deepspeed_config(ctx.distributed)
    if config is None:
        return {}
    if has_gpu():
        return {"deepspeed": config}
    if not on_cpu_under_launcher():
        log.info("%s: one CPU process: training without DeepSpeed (ZeRO shards across processes)", ctx.stage)
        return {}
    start_cpu_deepspeed()
    return {"deepspeed": config, "use_cpu": False, "accelerator_config": {"use_configured_state": True}}


class TrainerProgress(TrainerCallback):
    """A TRL trainer's steps, with its last logged loss, on the stage's bar."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.bar: Bar = NoBar()
        self.numbers: dict[str, float] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.bar = stage_progress(self.stage, "steps", state.max_steps, state.is_world_process_zero)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs and "loss" in logs:
            self.numbers["loss"] = float(logs["loss"])

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.bar.advance(state.global_step, self.numbers)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.bar.close()


class LossWatch(TrainerCallback):
    """Keeps the logged history and stops the stage on a NaN or infinite loss.

    The checkpoint directory still holds the last good checkpoint, since we raise before the next save.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **_: Any,
    ) -> None:
        logs = logs or {}
        self.history.append({"step": state.global_step, **{k: v for k, v in logs.items() if _is_number(v)}})
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise StageError(
                f"training loss became {loss} at step {state.global_step}; last good checkpoint kept in "
                f"{args.output_dir} (lower the learning rate or check the data)"
            )

    def values(self, key: str) -> list[float]:
        return [entry[key] for entry in self.history if key in entry]

    def first_and_last(self, names: Mapping[str, str]) -> dict[str, float]:
        """Each logged metric's first and last value under our name: did the loss fall, the margin widen."""
        metrics: dict[str, float] = {}
        for key, name in names.items():
            if values := self.values(key):
                metrics |= {f"{name}_first": values[0], f"{name}_last": values[-1]}
        return metrics


def outcome_metrics(
    trainer: Trainer, watch: LossWatch, resumed_from: int, tracked: Mapping[str, str] = TRACKED
) -> dict[str, float]:
    """What every stage reports of its training: steps, where it resumed, and first/last of tracked metrics."""
    metrics = {"steps": trainer.state.global_step, "resumed_from_step": resumed_from}
    metrics |= watch.first_and_last(tracked)
    if eval_loss := watch.values("eval_loss"):
        metrics["eval_loss"] = eval_loss[-1]
    return metrics


def held_out_samples(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: GenerationSpec | None, ctx: StageContext
) -> dict[str, float]:
    """The trained policy sampled on the held-out prompts and scored (nothing when not configured).

    Every rank draws the same samples, so that under ZeRO-3 the sharded forward passes (and the collectives
    in them) stay in step across ranks; rank 0 reports.
    """
    if spec is None or "eval_prompts" not in ctx.inputs:
        return {}
    samples = generate(model, tokenizer, load_prompts(ctx.inputs["eval_prompts"]), spec, ctx.seed)
    return summarize(samples, ctx.task) if ctx.rank.is_main else {}


def save_history(
    ctx: StageContext, history: Sequence[Mapping[str, Any]], step_key: str = "step"
) -> Path | None:
    """The stage's logged training history, `[{"step": n, metric: value, ...}, ...]`, as `history.json` in its
    work directory: the run report draws its training curves from it. Rank 0 writes it aside and renames it
    into place, so a reader never sees half a file; other ranks write nothing (None).

    A TRL stage passes `trainer.state.log_history`, which a resume restores from the checkpoint (a LossWatch
    only sees the steps since); PPO passes its per-update rows, numbered by `step_key="update"`.
    """
    if not ctx.rank.is_main:
        return None
    rows = [
        {"step": row[step_key], **{k: v for k, v in row.items() if k != step_key and _is_number(v)}}
        for row in history
    ]
    path = ctx.work_dir / HISTORY_FILE
    atomic.write_text(path, json.dumps(rows, indent=1))
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def train_with_resume(trainer: Trainer) -> int:
    """Train, continuing from the newest checkpoint a previous try left; returns the step resumed from (0: fresh)."""
    checkpoint = last_complete_checkpoint(Path(trainer.args.output_dir), written_last=TRAINER_WRITES_LAST)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return step_of(checkpoint) if checkpoint else 0


def train_and_save(
    trainer: Trainer,
    ctx: StageContext,
    tracked: Mapping[str, str] = TRACKED,
    before_save: Callable[[PreTrainedModel], None] | None = None,
) -> tuple[Path, dict[str, float]]:
    """How every TRL stage ends: train under a loss watch (resuming from the last complete checkpoint), keep
    the logged history for the run report, save the model to the stage's output directory (`before_save`
    first, e.g. to leave a reference adapter out), and report steps, resume and the tracked metrics' first
    and last values. Returns (output directory, metrics)."""
    log_held_shares(
        ctx.stage, {"trained model": trainer.model, "reference": getattr(trainer, "ref_model", None)}
    )
    watch = LossWatch()
    trainer.add_callback(watch)
    trainer.add_callback(TrainerProgress(ctx.stage))
    resumed_from = train_with_resume(trainer)
    save_history(ctx, trainer.state.log_history)
    if before_save is not None:
        before_save(trainer.model)
    output = save_final(trainer, ctx)
    return output, outcome_metrics(trainer, watch, resumed_from, tracked)


def save_final(trainer: Trainer, ctx: StageContext) -> Path:
    """Save a TRL trainer's model and tokenizer to the stage's output directory, atomically."""
    return save_output(ctx, trainer.accelerator, lambda staging: trainer.save_model(str(staging)),
                       trainer.processing_class)  # fmt: skip


def save_output(
    ctx: StageContext,
    accelerator: Accelerator,
    save: Callable[[Path], None],
    tokenizer: PreTrainedTokenizerBase,
) -> Path:
    """The stage's final model (`save` writes it into a folder) and tokenizer, moved into the stage's output
    directory in one rename, so a crash never leaves half a model there. Every rank calls this (ZeRO-3
    gathers shards for the save)."""
    return write_aside_then_rename(
        ctx.output_dir, save, accelerator, finish_on_main=tokenizer.save_pretrained
    )
