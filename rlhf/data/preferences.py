"""`rlhf data import`: exports and public datasets in, one canonical preference dataset out, every row
accounted for.

The import streams in two passes. The reading pass reads records one at a time (`readers`), turns them into
comparisons with the format's importer (`units`, which tells each file's format), checks them (`quality`) and sets each new comparison aside on disk
(`pending`); a later record of the same comparison (same prompt and responses, in either order, in any
file) is a vote on it, not a lost duplicate. The voting pass reads the comparisons back in first-seen order
with all their votes, measures agreement (first over everyone, where annotators are excluded by it), decides
each by majority (`aggregate`) and writes it to the split its hashed prompt draws. What the import holds
grows only with the number of unique rows (the duplicate table, 32-64 bytes a row) and the votes of
comparisons seen more than once, never with the text.

Every unit read (each comparison an importer yields, and each record that yields none) ends in exactly one
place: the dataset (kept), `quarantine.jsonl` (with its reason and location: what the reading pass refused,
in reading order, then what the votes decided against, such as dropped ties) or `duplicates.jsonl` (with the
row of the comparison it belongs to), so that rows read = kept + quarantined + duplicates.

Output, written beside `out_dir` and renamed into place (a crash leaves no half dataset), is laid out as
`rlhf.data.preference_dataset` says.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from rlhf.data import quality, readers
from rlhf.data.aggregate import Agreement, AgreementTracker, Ties, aggregate, counted_votes
from rlhf.data.import_report import render_report
from rlhf.data.importers import PREFERENCES, ImportOptions, Kind, get_importer
from rlhf.data.pending import PendingComparisons, row_of
from rlhf.data.preference_dataset import (
    DATASET_FORMAT,
    DATASET_VERSION,
    DUPLICATES,
    MANIFEST,
    QUARANTINE,
    REPORT,
    SCHEMA,
    SPLITS,
    SplitWriter,
    fingerprint,
    split_of,
    staged_dataset_dir,
)
from rlhf.data.records import Comparison, Quarantined, Vote
from rlhf.data.streams import Limits
from rlhf.data.units import file_units, raw_excerpt
from rlhf.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000
MERGED_VOTE = "merged vote"  # the duplicate kind of a later record of a comparison: its votes count there
# json.loads, json.dumps and repr recurse once a level; this leaves room under Python's recursion limit.
MAX_DEPTH_LIMIT = 256


@dataclass(frozen=True)
class ImportSettings:
    """How to import; recorded in the manifest. `format=None` detects each file's format from its first record."""

    format: str | None = None
    options: ImportOptions = field(default_factory=ImportOptions)
    ties: Ties = "drop"
    min_votes: int = 1
    min_annotator_agreement: float | None = None
    max_tokens: int | None = None
    test_fraction: float = 0.1
    split_seed: int = 0
    max_depth: int = Limits.max_depth  # a record nested deeper is quarantined, never parsed
    max_record_bytes: int = Limits.max_record_bytes  # a bigger record is quarantined, never read whole

    def __post_init__(self) -> None:
        if self.ties not in ("drop", "keep"):
            raise ConfigError(f"ties: expected 'drop' or 'keep', got {self.ties!r}")
        if self.min_votes < 1:
            raise ConfigError(f"min_votes: expected at least 1, got {self.min_votes}")
        if self.min_annotator_agreement is not None and not 0 <= self.min_annotator_agreement <= 1:
            raise ConfigError(f"min_annotator_agreement: expected 0..1, got {self.min_annotator_agreement}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens: expected a positive number, got {self.max_tokens}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"test_fraction: expected 0 <= fraction < 1, got {self.test_fraction}")
        if not 1 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise ConfigError(f"max_depth: expected 1..{MAX_DEPTH_LIMIT}, got {self.max_depth}")
        if self.max_record_bytes < 1:
            raise ConfigError(f"max_record_bytes: expected a positive number, got {self.max_record_bytes}")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_depth, self.max_record_bytes)

    def to_json(self) -> dict[str, Any]:
        """As the manifest records them (`column_map` may be any mapping, so it is copied as a dict)."""
        options = {f.name: getattr(self.options, f.name) for f in fields(self.options)}
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "options": {**options, "column_map": dict(self.options.column_map)},
        }


@dataclass(frozen=True)
class ImportReport:
    """What an import did: the counts of the identity, and where everything went."""

    out_dir: Path
    fingerprint: str
    read: int
    kept: int
    quarantined: int
    duplicates: int
    train: int
    test: int
    ties_kept: int
    merged: int  # comparisons seen in more than one record
    conflicts: int  # ... whose merged votes are not unanimous
    by_reason: dict[str, int]  # most frequent first
    excluded_annotators: tuple[str, ...]

    @classmethod
    def of(cls, out_dir: Path, manifest: dict[str, Any], excluded: frozenset[str]) -> ImportReport:
        """The report of an import that wrote `manifest` into `out_dir`."""
        counts = manifest["counts"]
        return cls(
            out_dir=out_dir,
            fingerprint=manifest["fingerprint"],
            read=counts["read"],
            kept=counts["kept"],
            quarantined=counts["quarantined"],
            duplicates=counts["duplicates"],
            train=counts["train"],
            test=counts["test"],
            ties_kept=counts.get("ties_kept", 0),
            merged=counts["merged"],
            conflicts=counts["conflicts"],
            by_reason=counts["by_reason"],
            excluded_annotators=tuple(sorted(excluded)),
        )

    @property
    def identity(self) -> str:
        return (
            "rows read = kept + quarantined + duplicates: "
            f"{self.read} = {self.kept} + {self.quarantined} + {self.duplicates}"
        )

    def nothing_kept(self) -> str | None:
        """For an import that kept no row, one line on why: the top quarantine reason and the report."""
        if self.kept:
            return None
        reason, rows = next(iter(self.by_reason.items()), ("none", 0))
        return (
            f"nothing imported ({self.identity}); top quarantine reason: {reason} ({rows} of "
            f"{self.quarantined} rows); see {self.report_path}"
        )

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT

    @property
    def quarantine_path(self) -> Path:
        return self.out_dir / QUARANTINE

    @property
    def duplicates_path(self) -> Path:
        return self.out_dir / DUPLICATES


def import_preferences(
    sources: Sequence[Path],
    out_dir: Path,
    settings: ImportSettings,
    count_tokens: Callable[[str], int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ImportReport:
    """Import `sources` (files or directories) into the preference dataset `out_dir`, replacing a previous
    one there. `count_tokens` (the target tokenizer's) is needed when `settings.max_tokens` is set; `extra`
    lands as top-level keys of the manifest (e.g. the Label Studio project and snapshot a pull came from),
    written with the dataset, so no dataset ever lacks them."""
    return run_import(sources, Path(out_dir), settings, count_tokens, _Run, extra)


def run_import(
    sources: Sequence[Path],
    out_dir: Path,
    settings: ImportSettings,
    count_tokens: Callable[[str], int] | None,
    run_class: type[_Run],
    extra: Mapping[str, Any] | None = None,
) -> ImportReport:
    """An import of `run_class`'s kind (preferences, or `rlhf.data.unpaired`'s judgements): read every
    source, vote, and write the dataset into a staging folder renamed to `out_dir`."""
    kind = run_class.kind
    if settings.max_tokens is not None and count_tokens is None:
        raise ConfigError("max_tokens: set, but no tokenizer was given to count tokens with")
    if settings.format is not None:
        get_importer(settings.format, kind)  # an unknown name fails before any reading
    units = [(Path(source), readers.data_files(Path(source))) for source in sources]
    if not units:
        raise DataError("no sources to import")
    with staged_dataset_dir(out_dir, run_class.describes) as build:
        run = run_class(build, settings, count_tokens)
        try:
            sources_json: list[dict[str, Any]] = []
            for item in stream_units(units, settings, sources_json, kind):
                run.add(item)
            run.vote()
        finally:
            run.close()
        manifest = run.finish(sources_json, extra)
    return ImportReport.of(out_dir, manifest, run.excluded)


def stream_units(
    units: list[tuple[Path, list[Path]]],
    settings: ImportSettings,
    sources_json: list[dict[str, Any]],
    kind: Kind = PREFERENCES,
) -> Iterator[Any]:
    """Every unit of the identity from every source, in order, recording each file in `sources_json`."""
    for source, files in units:
        produced = 0
        for path in files:
            entry = {"file": str(path), "sha256": "", "format": None, "records": 0, kind.units: 0}
            sources_json.append(entry)
            for item in file_units(path, settings.format, settings.options, settings.limits, entry, kind):
                produced += 1
                yield item
        if not produced:
            raise DataError(f"{source}: no records")


class _Run:
    """The state of one import: the reading pass sets units aside (`add`), the voting pass decides and
    writes them (`vote`), and `finish` writes what was left out and the manifest.

    The hooks (`_admit`, `_raw`, `_decide`, `_counts` and the class attributes) are what a kind of data
    does its own way; `rlhf.data.unpaired` overrides them for unpaired judgements."""

    kind: Kind = PREFERENCES
    describes = "preference"  # for messages: "not an imported preference dataset"
    dataset_format = DATASET_FORMAT
    schema = SCHEMA
    pending_class: type[PendingComparisons] = PendingComparisons

    def __init__(
        self, directory: Path, settings: ImportSettings, count_tokens: Callable[[str], int] | None
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.count_tokens = count_tokens
        self.excluded: frozenset[str] = frozenset()
        self.first_pass: Agreement | None = None
        self.pending = self.pending_class(directory / ".pending")
        self.writers = {split: SplitWriter(directory / split, self.schema) for split in SPLITS}
        self.quarantine = jsonl_file(directory / QUARANTINE)
        self.spool = jsonl_file(directory / (DUPLICATES + ".partial"))
        self.index = quality.DuplicateIndex()
        self.agreement = AgreementTracker()
        self.repeated: set[int] = set()  # pending rows that a duplicate points to
        self.originals: dict[int, dict[str, Any]] = {}  # ... and where each of them ended
        self.read = self.ties_kept = self.merged = self.conflicts = 0
        self.by_reason: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()

    def _admit(self, item: Any) -> str | quality.RowKeys:
        """Why a unit cannot be trained on (`quality`), else its duplicate keys."""
        return quality.admit(item, self.count_tokens, self.settings.max_tokens)

    def _raw(self, item: Any) -> str:
        return _raw_comparison(item)

    def _decide(self, unit: Any, votes: list[Vote]) -> Any:
        """The record the counted votes make, or the reason for the quarantine."""
        return aggregate(unit, votes, self.settings.ties, self.settings.min_votes)

    def _counts(self) -> dict[str, Any]:
        """The kind's own counts in the manifest."""
        return {"ties_kept": self.ties_kept}

    def add(self, item: Any) -> None:
        """One unit of the reading pass: quarantined, set aside as a new unit, or a duplicate (a record of a
        unit already seen counts as a vote there)."""
        self.read += 1
        if self.read % PROGRESS_EVERY == 0:
            log.info("import: %d rows read", self.read)
        if isinstance(item, Quarantined):
            self._quarantine(item)
            return
        keys = self._admit(item)
        if isinstance(keys, str):
            self._quarantine(Quarantined(item.source, keys, self._raw(item)))
            return
        repeat = self.index.first(keys, self.pending.handle(item))
        if repeat is None:
            split = split_of(keys.prompt, self.settings.split_seed, self.settings.test_fraction)
            self.pending.add(item, test=split == "test")
            return
        kind, handle = repeat
        if kind == "exact":
            self.pending.join(handle, item)
            kind = MERGED_VOTE
        self.duplicates[kind] += 1
        self.repeated.add(row_of(handle))
        entry = {"source_file": item.source.file, "source_row": item.source.row, "kind": kind}
        self.spool.write(jsonl_line({**entry, "pending": row_of(handle)}))

    def vote(self) -> None:
        """The voting pass: each unit, with the votes of all its records, kept or quarantined."""
        self.pending.close()
        threshold = self.settings.min_annotator_agreement
        if threshold is not None:
            tracker = AgreementTracker()
            for _, unit, _, _ in self.pending.comparisons():
                tracker.add(counted_votes(unit.votes, frozenset()))
            self.first_pass = tracker.result()
            self.excluded = self.first_pass.below(threshold)
        excluded, add_agreement, repeated = self.excluded, self.agreement.add, self.repeated
        for row, unit, test, merged in self.pending.comparisons():
            if (row + 1) % PROGRESS_EVERY == 0:
                log.info("import: %d %s decided", row + 1, self.kind.units)
            votes = counted_votes(unit.votes, excluded)
            add_agreement(votes)
            if merged:
                self.merged += 1
                self.conflicts += len({vote.choice for vote in votes}) > 1
            record = self._decide(unit, votes)
            if isinstance(record, str):
                self._quarantine(Quarantined(unit.source, record, self._raw(unit)))
                outcome: dict[str, Any] = {"quarantined": record}
            else:
                writer = self.writers[SPLITS[test]]
                outcome = {"split": SPLITS[test], "row": writer.rows}
                self.ties_kept += getattr(record, "tie", False)
                writer.add(record)
            if row in repeated:
                source = unit.source
                self.originals[row] = {**outcome, "source_file": source.file, "source_row": source.row}
        self.pending.remove()

    def _quarantine(self, item: Quarantined) -> None:
        self.by_reason[quality.category(item.reason)] += 1
        entry = {"source_file": item.source.file, "source_row": item.source.row, "reason": item.reason}
        self.quarantine.write(jsonl_line({**entry, "raw": item.raw}))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.pending.close()
        self.quarantine.close()
        self.spool.close()

    def finish(
        self, sources_json: list[dict[str, Any]], extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resolve duplicates to their originals, then write the manifest and the report."""
        self._write_duplicates()
        kept = sum(writer.rows for writer in self.writers.values())
        quarantined, duplicates = sum(self.by_reason.values()), sum(self.duplicates.values())
        if self.read != kept + quarantined + duplicates:
            raise RuntimeError(
                f"import accounting broken: {self.read} != {kept} + {quarantined} + {duplicates}"
            )
        files = {split: [f"{split}/{SplitWriter.NAME}"] for split in SPLITS}
        for entry in sources_json:
            entry["sha256"] = readers.sha256_of(Path(entry["file"]))
        final = self.agreement.result()
        manifest = {
            "format": self.dataset_format,
            "format_version": DATASET_VERSION,
            "fingerprint": fingerprint(self.directory, files),
            "files": files,
            "counts": {
                "read": self.read,
                "kept": kept,
                "quarantined": quarantined,
                "duplicates": duplicates,
                "train": self.writers["train"].rows,
                "test": self.writers["test"].rows,
                **self._counts(),
                "merged": self.merged,
                "conflicts": self.conflicts,
                "by_reason": dict(self.by_reason.most_common()),
                "duplicates_by_kind": dict(self.duplicates.most_common()),
            },
            "sources": sources_json,
            "settings": self.settings.to_json(),
            "annotators": {
                name: {
                    "votes": stats.votes,
                    "compared": stats.compared,
                    "agreement": stats.agreement,
                    "excluded": name in self.excluded,
                }
                for name, stats in (self.first_pass or final).annotators.items()
            },
            "agreement": {
                **final.to_json(),
                **({"before_exclusion": self.first_pass.to_json()} if self.first_pass else {}),
            },
            **(extra or {}),
        }
        (self.directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (self.directory / REPORT).write_text(render_report(manifest), encoding="utf-8")
        return manifest

    def _write_duplicates(self) -> None:
        """duplicates.jsonl: each duplicate with the row of its comparison (in the dataset, or quarantined)
        and that row's source."""
        spool = self.directory / (DUPLICATES + ".partial")
        with spool.open(encoding="utf-8") as lines, jsonl_file(self.directory / DUPLICATES) as out:
            for line in lines:
                entry = json.loads(line)
                of = self.originals[entry.pop("pending")]
                out.write(jsonl_line({**entry, "duplicate_of": of}))
        spool.unlink()


def jsonl_file(path: Path) -> IO[str]:
    # backslashreplace: a lone surrogate in a bad row comes out as a JSON escape instead of an error
    return path.open("w", encoding="utf-8", errors="backslashreplace")


def jsonl_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _raw_comparison(comparison: Comparison) -> str:
    fields = {"prompt": comparison.prompt, "a": comparison.response_a, "b": comparison.response_b}
    return raw_excerpt(fields)
