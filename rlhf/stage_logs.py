"""Every stage of a pipeline run keeps its own log file beside its console output, so a failure can name the
file that holds the whole story (the trainer's progress, warnings, the traceback's last words).

Written by hand: the output must still reach the console as it happens (a tee), from this process's streams
and loggers or from a launcher's child processes, which no logging library does for both.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO


class _Tee:
    """A text stream that writes to the console stream and to the log file."""

    def __init__(self, console: TextIO, log: IO[str]) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.console.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def __getattr__(self, name: str) -> object:  # isatty, fileno, encoding...: the console's
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
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            root.removeHandler(handler)


def run_logged(command: list[str], env: dict[str, str], path: Path) -> int:
    """Run `command`, its stdout and stderr passed through to ours and both appended to `path`; its exit code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", buffering=1) as log:
        lock = threading.Lock()

        def pump(source: IO[str], console: TextIO) -> None:
            for line in source:
                with lock:
                    log.write(line)
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
            return process.wait()
