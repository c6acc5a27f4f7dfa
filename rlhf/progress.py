"""One progress bar per training stage: steps (PPO: updates) done of all, the numbers that say whether it goes
well (loss; PPO: score and KL), and the time left.

The process that owns the console draws the bar. A stage in this process draws it itself; a stage launched on
several processes has its rank 0 print a marker line per step (`MARK` and JSON) into its output, which the
launching process reads (`rlhf.stage_logs.run_logged`) and draws from, so there is one bar however the stage
runs. There is no bar where the console is not a terminal (a CI log, a pipe) or with -v, where the trainer's
own bar is back.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from rlhf.quiet_console import launched, verbose

if TYPE_CHECKING:
    from rich.progress import Progress

MARK = "<rlhf-progress> "  # starts a launched rank's progress line
MARK_EVERY_SECONDS = 0.5  # a launched rank's marker lines are at most this frequent (and the last step's)


class Bar(Protocol):
    """Where a stage reports its steps: `done` of the total, and the numbers to show beside them."""

    def advance(self, done: int, numbers: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NoBar:
    """Where no bar is drawn (another rank, -v, a console that is not a terminal)."""

    def advance(self, done: int, numbers: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class RichBar:
    """A bar on `console_file` (a terminal), gone when the stage ends: its one-line summary follows."""

    def __init__(self, stage: str, unit: str, total: int, console_file: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self.progress: Progress = _progress(
            Console(file=console_file),
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
            TextColumn("{task.fields[numbers]}"), TextColumn("ETA"), TimeRemainingColumn(),
        )  # fmt: skip
        self.task = self.progress.add_task(stage, total=total, numbers="")
        self.progress.start()
        self.handlers = _print_above(self.progress, console_file)

    def advance(self, done: int, numbers: dict[str, float]) -> None:
        shown = "  ".join(f"{name} {value:.3g}" for name, value in numbers.items())
        self.progress.update(self.task, completed=done, numbers=shown)

    def close(self) -> None:
        self.progress.stop()
        for handler, stream in self.handlers:
            handler.setStream(stream)


def _progress(console: Any, *columns: Any) -> Progress:
    from rich.progress import Progress

    # Not redirected: what the libraries print stays where the stage sends it (its log), off the bar.
    return Progress(*columns, console=console, transient=True, redirect_stdout=False, redirect_stderr=False)


def _print_above(progress: Progress, console_file: IO[str]) -> list[tuple[logging.StreamHandler, IO[str]]]:
    """Point the log handlers that write to the console through the bar's console, so that our log lines print
    above the bar instead of through it; returns each handler with the stream to give back."""
    from rich.file_proxy import FileProxy

    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is console_file:
            moved.append((handler, handler.setStream(FileProxy(progress.console, console_file))))
    return moved


class _Marks:
    """A launched rank 0's bar: marker lines on stdout for the launching process to draw from."""

    def __init__(self, stage: str, unit: str, total: int) -> None:
        self.head = {"stage": stage, "unit": unit, "total": total}
        self.total, self.last = total, 0.0

    def advance(self, done: int, numbers: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= MARK_EVERY_SECONDS or done >= self.total:
            self.last = now
            print(MARK + json.dumps({**self.head, "done": done, "numbers": numbers}), flush=True)

    def close(self) -> None:
        pass


def stage_progress(stage: str, unit: str, total: int, is_main: bool) -> Bar:
    """The bar a stage reports its steps to: drawn here, marked for the launching process, or none."""
    if not is_main or verbose():
        return NoBar()
    return _Marks(stage, unit, total) if launched() else _terminal_bar(stage, unit, total)


def _terminal_bar(stage: str, unit: str, total: int) -> Bar:
    """A bar on the console where it is a terminal and not -v, else none."""
    console_file = console_stream()
    tty = console_file.isatty() and not verbose()
    return RichBar(stage, unit, total, console_file) if tty else NoBar()


def console_stream() -> IO[str]:
    """The console's stream, also while a stage points `sys.stderr` at its log."""
    return getattr(sys.stderr, "console", sys.stderr)


class MarkReader:
    """The launching process's side: draws a launched rank 0's marker lines as one bar (on a terminal)."""

    def __init__(self) -> None:
        self.bar: Bar | None = None

    def read(self, line: str) -> bool:
        """Draw a marker line; False for a line that only looks like one (it is output like any other)."""
        try:
            mark = json.loads(line.removeprefix(MARK))
            stage, unit, total, done, numbers = (
                mark[k] for k in ("stage", "unit", "total", "done", "numbers")
            )
        except (ValueError, KeyError, TypeError):
            return False
        if self.bar is None:
            self.bar = _terminal_bar(stage, unit, total)
        self.bar.advance(done, numbers)
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
