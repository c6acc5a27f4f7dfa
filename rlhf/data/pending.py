"""Comparisons set aside between the import's reading pass and its voting pass.

Same prompt and the same two responses, in either order and in any file of an import, are one comparison:
every record of it is a vote on it. So the reading pass cannot decide a comparison when it first sees it.
Each new comparison goes to a parquet file in the build directory, in first-seen order; the votes of later
records of the same comparison (oriented to the first record's order) are kept in memory, and only for
comparisons seen again, so what the import holds grows with repeated rows, never with text. The voting pass
reads the comparisons back in the same order with all their votes, so each dataset row stands where the
first record of its comparison was read.

A handle names a pending comparison for the duplicate index: its row number shifted left once, with the
low bit saying whether the first record's response a sorts before its response b (which orientation later
records are turned to).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from rlhf.data.aggregate import oriented
from rlhf.data.preference_dataset import MESSAGES, SplitWriter, read_rows
from rlhf.data.records import Comparison, Message, Source, Vote

SCHEMA = pa.schema(
    [
        ("prompt", MESSAGES),
        ("response_a", pa.string()),
        ("response_b", pa.string()),
        ("margin", pa.float64()),
        ("annotators", pa.list_(pa.string())),
        ("choices", pa.list_(pa.string())),
        ("source_file", pa.string()),
        ("source_row", pa.string()),
        ("test", pa.bool_()),
    ]
)


class _Row(NamedTuple):
    prompt: list[Message]
    response_a: str
    response_b: str
    margin: float | None
    annotators: list[str | None]
    choices: list[str]
    source_file: str
    source_row: str
    test: bool


class PendingComparisons:
    """New comparisons on disk, later records' votes in memory; read back once all records are in."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._writer = SplitWriter(directory, SCHEMA)
        self._later: dict[int, list[Vote]] = {}

    def handle(self, comparison: Comparison) -> int:
        """The handle `comparison` gets if `add` is called next."""
        return self._writer.rows << 1 | (comparison.response_a < comparison.response_b)

    def add(self, comparison: Comparison, test: bool) -> None:
        """A comparison seen for the first time, and the split its prompt draws."""
        votes = comparison.votes
        annotators, choices = [vote.annotator for vote in votes], [vote.choice for vote in votes]
        source = comparison.source
        self._writer.add(
            _Row(comparison.prompt, comparison.response_a, comparison.response_b, comparison.margin,
                 annotators, choices, source.file, source.row, test)
        )  # fmt: skip

    def join(self, handle: int, comparison: Comparison) -> None:
        """`comparison` is another record of the pending comparison `handle`: its votes count there."""
        swapped = (comparison.response_a < comparison.response_b) != bool(handle & 1)
        votes = [Vote(_intern(vote.annotator), vote.choice) for vote in oriented(comparison.votes, swapped)]
        self._later.setdefault(row_of(handle), []).extend(votes)

    def close(self) -> None:
        self._writer.close()

    def votes(self) -> Iterator[list[Vote]]:
        """Each comparison's votes, all records' together, in first-seen order."""
        for row, stored in enumerate(read_rows(self._file, ["annotators", "choices"])):
            yield self._votes(row, stored)

    def comparisons(self) -> Iterator[tuple[int, Comparison, bool, bool]]:
        """(row, comparison with all its records' votes, in the test split, seen in more than one record)."""
        for row, stored in enumerate(read_rows(self._file)):
            comparison = Comparison(
                stored["prompt"], stored["response_a"], stored["response_b"], self._votes(row, stored),
                Source(stored["source_file"], stored["source_row"]), stored["margin"],
            )  # fmt: skip
            yield row, comparison, stored["test"], row in self._later

    def remove(self) -> None:
        """Delete the file; the votes in memory go with it."""
        self.close()
        shutil.rmtree(self._directory)
        self._later.clear()

    @property
    def _file(self) -> Path:
        return self._directory / SplitWriter.NAME

    def _votes(self, row: int, stored: dict) -> list[Vote]:
        own = [
            Vote(annotator, choice)
            for annotator, choice in zip(stored["annotators"], stored["choices"], strict=True)
        ]
        return own + self._later.get(row, [])


def row_of(handle: int) -> int:
    """The pending row a handle names."""
    return handle >> 1


def _intern(annotator: str | None) -> str | None:
    """One string per annotator name, however many of their votes are held."""
    return None if annotator is None else sys.intern(annotator)
