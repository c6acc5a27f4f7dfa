"""Comparisons set aside between the import's reading pass and its voting pass.

Same prompt and the same two responses, in either order and in any file of an import, are one comparison:
every record of it is a vote on it. So the reading pass cannot decide a comparison when it first sees it.
Each new comparison goes to a file in the build directory, in first-seen order; the votes of later
records of the same comparison (oriented to the first record's order) are kept in memory, and only for
comparisons seen again, so what the import holds grows with repeated rows, never with text. The voting pass
reads the comparisons back in the same order with all their votes, so each dataset row stands where the
first record of its comparison was read. The file is a stream of pickled lists of up to `BATCH` tuples: it
lives only within one import, in the process that wrote it, and pickle writes and reads it several times
faster than parquet (a list at a time, a few times faster again than a tuple at a time).

A handle names a pending comparison for the duplicate index: its row number shifted left once, with the
low bit saying whether the first record's response a sorts before its response b (which orientation later
records are turned to).
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf.data.aggregate import oriented
from rlhf.data.records import Comparison, Judged, Source, Vote

BATCH = 1024  # rows pickled together: a few hundred KiB of text held at a time


class PendingComparisons:
    """New comparisons on disk, later records' votes in memory; read back once all records are in."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("wb")
        self._rows = 0
        self._batch: list[tuple[Any, ...]] = []
        self._later: dict[int, list[Vote]] = {}

    def handle(self, comparison: Comparison) -> int:
        """The handle `comparison` gets if `add` is called next."""
        return self._rows << 1 | (comparison.response_a < comparison.response_b)

    def add(self, comparison: Comparison, test: bool) -> None:
        """A comparison seen for the first time, and whether its prompt draws the test split."""
        votes = [(vote.annotator, vote.choice) for vote in comparison.votes]
        source = comparison.source
        row = (comparison.prompt, comparison.response_a, comparison.response_b, votes, source.file, source.row,
               comparison.margin, test)  # fmt: skip
        self._store(row)

    def _store(self, row: tuple[Any, ...]) -> None:
        self._batch.append(row)
        self._rows += 1
        if len(self._batch) == BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._file.write(pickle.dumps(self._batch, pickle.HIGHEST_PROTOCOL))
            self._batch = []

    def _stored(self) -> Iterator[tuple[Any, ...]]:
        """The rows `add` stored, in order."""
        with self._path.open("rb") as stored:
            for _ in range(0, self._rows, BATCH):
                yield from pickle.load(stored)

    def join(self, handle: int, comparison: Comparison) -> None:
        """`comparison` is another record of the pending comparison `handle`: its votes count there."""
        swapped = (comparison.response_a < comparison.response_b) != bool(handle & 1)
        votes = [Vote(_intern(vote.annotator), vote.choice) for vote in oriented(comparison.votes, swapped)]
        self._later.setdefault(row_of(handle), []).extend(votes)

    def close(self) -> None:
        if not self._file.closed:
            self._flush()
        self._file.close()

    def comparisons(self) -> Iterator[tuple[int, Comparison, bool, bool]]:
        """(row, comparison with all its records' votes, in the test split, seen in more than one record),
        in first-seen order."""
        later = self._later
        for row, (prompt, a, b, votes, file, source_row, margin, test) in enumerate(self._stored()):
            votes = [Vote(annotator, choice) for annotator, choice in votes]
            if merged := row in later:
                votes += later[row]
            yield row, Comparison(prompt, a, b, votes, Source(file, source_row), margin), test, merged

    def remove(self) -> None:
        """Delete the file; the votes in memory go with it."""
        self.close()
        self._path.unlink(missing_ok=True)
        self._later.clear()


def row_of(handle: int) -> int:
    """The pending row a handle names."""
    return handle >> 1


def _intern(annotator: str | None) -> str | None:
    """One string per annotator name, however many of their votes are held."""
    return None if annotator is None else sys.intern(annotator)


class PendingJudged(PendingComparisons):
    """Unpaired judgements set aside the same way: one completion has no order to turn votes to, so a
    handle is its row shifted left once (low bit 0) and later records' votes count as they are."""

    def handle(self, judged: Judged) -> int:  # type: ignore[override]
        return self._rows << 1

    def add(self, judged: Judged, test: bool) -> None:  # type: ignore[override]
        votes = [(vote.annotator, vote.choice) for vote in judged.votes]
        self._store((judged.prompt, judged.completion, votes, judged.source.file, judged.source.row, test))

    def join(self, handle: int, judged: Judged) -> None:  # type: ignore[override]
        votes = [Vote(_intern(vote.annotator), vote.choice) for vote in judged.votes]
        self._later.setdefault(row_of(handle), []).extend(votes)

    def comparisons(self) -> Iterator[tuple[int, Judged, bool, bool]]:  # type: ignore[override]
        """(row, judged completion with all its records' votes, in the test split, seen in more than one
        record), in first-seen order."""
        later = self._later
        for row, (prompt, completion, votes, file, source_row, test) in enumerate(self._stored()):
            votes = [Vote(annotator, choice) for annotator, choice in votes]
            if merged := row in later:
                votes += later[row]
            yield row, Judged(prompt, completion, votes, Source(file, source_row)), test, merged
