"""Checkpoints on disk, for every trainer: which checkpoint a resume starts from, and the one way a folder
that others read (a checkpoint, a stage's final model) is written: aside, then renamed into place.

TRL's trainers and our PPO both name checkpoints `checkpoint-<step>`; both resume from the newest complete one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


def step_of(checkpoint: Path) -> int:
    """The step a `checkpoint-<step>` folder was saved at."""
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def numbered_checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-<step>` folders in `folder`, oldest first. A name that is not a step is not a
    checkpoint (`checkpoint-final`, or `checkpoint-5.partial`: an interrupted staged save)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted((p for p in found if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()), key=step_of)


def last_complete_checkpoint(folder: Path, written_last: str | None = None) -> Path | None:
    """The newest checkpoint finished writing. A trainer that writes a checkpoint in place names the file it
    writes last (`written_last`, e.g. TRL's trainer_state.json): a checkpoint without it was cut short (a kill
    mid-save) and is passed over for the one before. Without `written_last` every numbered checkpoint is
    complete, as one written by `write_aside_then_rename` is."""
    for checkpoint in reversed(numbered_checkpoints(folder)):
        if written_last is None or (checkpoint / written_last).is_file():
            return checkpoint
        log.warning("passing over %s: not completely written", checkpoint)
    return None


def prune_checkpoints(folder: Path, keep: int | None) -> None:
    """Remove all but the newest `keep` checkpoints (None: keep all)."""
    if keep is not None:
        for old in numbered_checkpoints(folder)[:-keep]:
            shutil.rmtree(old)


def write_aside_then_rename(
    final: Path,
    write: Callable[[Path], None],
    accelerator: Accelerator,
    finish_on_main: Callable[[Path], None] | None = None,
) -> Path:
    """Write a folder so that no reader (nor a resume after a kill) ever sees half of it.

    Every process calls this: `write(staging)` runs on all of them (under ZeRO-3 saving gathers shards from
    every rank), then the main process runs `finish_on_main(staging)` if given (e.g. the tokenizer) and
    renames the staging folder to `final` in one step, replacing an older `final`.
    """
    staging = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    write(staging)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if finish_on_main is not None:
            finish_on_main(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    accelerator.wait_for_everyone()
    return final
