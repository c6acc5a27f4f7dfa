"""Files other processes read (run records, results, summaries, reports) are written aside and renamed into
place, so a reader, or the next run after a crash, never sees half a file."""

from __future__ import annotations

from pathlib import Path


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
