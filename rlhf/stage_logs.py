"""Every stage of a pipeline run keeps its own log file, so a failure can name the file that holds the whole
story (the trainer's progress, warnings, the traceback's last words); the console gets what
`rlhf.quiet_console` sorts onto it (everything, with -v).

Written by hand: the output must reach the log and the console as it happens, from this process's streams and
loggers or from a launcher's child processes, which no logging library does for both.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO

from rlhf.progress import MARK, MarkReader
from rlhf.quiet_console import is_console_line, verbose

STAGE_LOG = "stage.log"  # in the stage's folder of the run directory
TAIL_LINES = 30  # of a failed launch's output, shown on a quiet console


class _Tee:
    """A text stream that writes to the log file, and to the console stream unless the console is quiet."""

    def __init__(self, console: TextIO, log: IO[str], quiet: bool) -> None:
        self.console, self.log, self.quiet = console, log, quiet

    def write(self, text: str) -> int:
        written = self.log.write(text)
        return written if self.quiet else self.console.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def isatty(self) -> bool:  # a library that draws bars on a terminal must not draw them into the log
        return not self.quiet and self.console.isatty()

    def __getattr__(self, name: str) -> object:  # fileno, encoding...: the console's
        return getattr(self.console, name)


@contextlib.contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """Within the block, what this process prints and logs also goes to `path` (appended: a resumed stage
    keeps the earlier attempt's lines above its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", buffering=1) as log:
        handler = logging.StreamHandler(log)
        root = logging.getLogger()
        if root.handlers:
            handler.setFormatter(root.handlers[0].formatter)
        root.addHandler(handler)
        stdout, stderr = sys.stdout, sys.stderr
        quiet = not verbose()
        sys.stdout, sys.stderr = _Tee(stdout, log, quiet), _Tee(stderr, log, quiet)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            root.removeHandler(handler)


def run_logged(command: list[str], env: dict[str, str], path: Path) -> int:
    """Run `command` with its stdout and stderr appended to `path` and passed on to ours: all of it with -v,
    else our ranks' own lines, their progress as one bar and, when it fails, the last lines of its output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet, marks, tail = not verbose(), MarkReader(), collections.deque(maxlen=TAIL_LINES)
    with path.open("a", encoding="utf-8", buffering=1) as log:
        lock = threading.Lock()

        def pump(source: IO[str], console: TextIO) -> None:
            for line in source:
                with lock:
                    if line.startswith(MARK) and marks.read(line):
                        continue
                    log.write(line)
                    if quiet and not is_console_line(line):
                        tail.append(line)
                        continue
                console.write(line)
                console.flush()

        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
        ) as process:
            pumps = [
                threading.Thread(target=pump, args=(process.stdout, sys.stdout), daemon=True),
                threading.Thread(target=pump, args=(process.stderr, sys.stderr), daemon=True),
            ]
            for thread in pumps:
                thread.start()
            for thread in pumps:
                thread.join()
            marks.close()
            if (code := process.wait()) != 0 and tail:
                sys.stderr.write(f"last lines of {path}:\n" + "".join(tail))
            return code
