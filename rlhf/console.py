"""Where the CLI's tables go: a rich Console that fits a terminal, and never cuts a cell anywhere else.

rich draws 80 columns wide when its stream is not a terminal, so `rlhf registry ls | grep sft-policy` found
`sft-poli…`. Piped or redirected, tables are drawn as wide as their cells need (rich only pads a table to the
console's width when it is asked to expand, which ours are not).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

PIPE_WIDTH = 100_000  # wider than any cell: piped tables keep their natural width


def output_console(stderr: bool = False) -> Console:
    """The console a command prints its tables to: the terminal's width on a terminal, else unbounded."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(file=stream)
    return Console(file=stream, width=PIPE_WIDTH, soft_wrap=True)


def print_json(document: Any) -> None:
    """A `--json` answer: one JSON document on stdout (non-JSON values such as paths as strings)."""
    print(json.dumps(document, indent=2, default=str))
