"""A console worth reading: our own lines, one progress bar per stage and errors on the console; the libraries'
chatter (the trainer's per-step dicts, FutureWarnings, DeepSpeed's accelerator notice, accelerate's checkpoint
lines, load reports) only in the stage's `stage.log`. `-v` (RLHF_VERBOSE=1) puts it all back on the console.

How each kind of output is sorted:
- log records: the console handler passes our loggers' (`rlhf.*`, `stages.*`) and anyone's errors; the stage
  log's handler takes every record. transformers and DeepSpeed log through handlers of their own that do not
  propagate, so their records are sent through the root logger's handlers instead (`quiet_libraries`).
- Python warnings become log records (`logging.captureWarnings`), sorted the same way.
- what the libraries print (the trainer's dicts, wandb's notices) goes to `sys.stdout` / `sys.stderr`, which a
  stage in this process points at its log alone (`rlhf.stage_logs.logged_to`); a stage launched on several
  processes prints into a pipe, and the launching process passes on to the console only its ranks' log lines
  of our loggers and their one-line errors (`is_console_line`).
"""

from __future__ import annotations

import logging
import os
import re

VERBOSE_ENV = "RLHF_VERBOSE"  # "1": everything on the console; inherited by a launched stage's processes
LAUNCHED_BY_RLHF = "RLHF_LAUNCHED"  # set for the processes `rlhf.launch.launch_stage` starts
OWN_LOGGERS = ("rlhf", "stages", "__main__")
LIBRARY_LOGGERS = ("DeepSpeed",)  # log straight to their own stream handler, with propagation off
# A line of ours in a launched rank's output: `configure_logging`'s format from one of our loggers, or the
# one-line error a stage program prints when it stops.
_OWN_LINE = re.compile(r"\d\d:\d\d:\d\d \[(?:rank|node) \d+\] (?:rlhf|stages|__main__)[.:]|error: ")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def make_verbose() -> None:
    """Make this process, and every process it launches, show the libraries' output (-v)."""
    os.environ[VERBOSE_ENV] = "1"


def launched() -> bool:
    """This process is one rank of a stage that a pipeline process launched (which sorts our output)."""
    return LAUNCHED_BY_RLHF in os.environ


def is_console_line(line: str) -> bool:
    """Whether a line of a launched rank's output belongs on a quiet console."""
    return _OWN_LINE.match(line) is not None


class ConsoleFilter(logging.Filter):
    """Passes our loggers' records and anyone's errors; the rest stays in the stage log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.partition(".")[0] in OWN_LOGGERS


class _ThroughRoot(logging.Filter):
    """On a library logger with its own handler: hands each record to the root logger's handlers (the console's
    filter and the stage log) and stops it from reaching the library's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


def quiet_console() -> None:
    """Set up this process's logging for the mode it runs in (after `logging.basicConfig`): libraries' records
    through our handlers, warnings as records, and on a quiet console (not -v, not a launched rank, whose
    output the launching process sorts) the console handlers filtered."""
    logging.captureWarnings(True)
    if verbose():
        return
    quiet_libraries()
    if launched():
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, ConsoleFilter) for f in handler.filters
        ):
            handler.addFilter(ConsoleFilter())


def quiet_libraries() -> None:
    """No per-map and per-load bars ("Tokenizing train dataset", "Loading weights": the stage's bar says
    enough); transformers' and DeepSpeed's records through the root logger's handlers, not their own."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    for name in LIBRARY_LOGGERS:  # a filter, not a handler change: DeepSpeed adds its handler when imported
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ThroughRoot) for f in logger.filters):
            logger.addFilter(_ThroughRoot())
