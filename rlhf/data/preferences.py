"""`rlhf data import`: exports and public datasets in, one canonical preference dataset out, every row
accounted for.

The import streams: records are read one at a time (`readers`), turned into comparisons by the format's
importer (`units`, which tells each file's format), checked (`quality`), voted on (`aggregate`), deduplicated, split by hashed prompt and written
in chunks. What it holds grows only with the number of unique rows (the duplicate table, 32-64 bytes a
row), never with the text. Excluding annotators by agreement needs their agreement first: a first pass
re-reads the sources rather than holding them.

Every unit read (each comparison an importer yields, and each record that yields none) ends in exactly one
place: the dataset (kept), `quarantine.jsonl` (with its reason and location) or `duplicates.jsonl` (with the
location of the row it repeats), so that rows read = kept + quarantined + duplicates.

Output, written beside `out_dir` and renamed into place (a crash leaves no half dataset), is laid out as
`rlhf.data.preference_dataset` says.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from rlhf.data import quality, readers
from rlhf.data.aggregate import Agreement, AgreementTracker, Ties, aggregate, counted_votes
from rlhf.data.importers import ImportOptions, get_importer
from rlhf.data.preference_dataset import (
    DATASET_FORMAT,
    DATASET_VERSION,
    DUPLICATES,
    MANIFEST,
    QUARANTINE,
    REPORT,
    SPLITS,
    SplitWriter,
    fingerprint,
    sources_of_rows,
    split_of,
    staged_dataset_dir,
)
from rlhf.data.records import Comparison, Quarantined
from rlhf.data.streams import Limits
from rlhf.data.units import file_units, raw_excerpt
from rlhf.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000
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
    by_reason: dict[str, int]
    excluded_annotators: tuple[str, ...]

    @property
    def identity(self) -> str:
        return (
            "rows read = kept + quarantined + duplicates: "
            f"{self.read} = {self.kept} + {self.quarantined} + {self.duplicates}"
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
) -> ImportReport:
    """Import `sources` (files or directories) into the preference dataset `out_dir`, replacing a previous
    one there. `count_tokens` (the target tokenizer's) is needed when `settings.max_tokens` is set."""
    if settings.max_tokens is not None and count_tokens is None:
        raise ConfigError("max_tokens: set, but no tokenizer was given to count tokens with")
    if settings.format is not None:
        get_importer(settings.format)  # an unknown name fails before any reading
    units = [(Path(source), readers.data_files(Path(source))) for source in sources]
    if not units:
        raise DataError("no sources to import")
    first_pass = None
    if settings.min_annotator_agreement is not None:
        tracker = AgreementTracker()
        for item in _stream(units, settings, []):
            if (
                isinstance(item, Comparison)
                and quality.check(item, count_tokens, settings.max_tokens) is None
            ):
                tracker.add(item.votes)
        first_pass = tracker.result()
    excluded = first_pass.below(settings.min_annotator_agreement) if first_pass else frozenset()
    with staged_dataset_dir(Path(out_dir)) as build:
        run = _Run(build, settings, count_tokens, excluded)
        try:
            sources_json = []
            for item in _stream(units, settings, sources_json):
                run.add(item)
        finally:
            run.close()
        manifest = run.finish(sources_json, first_pass)
    counts = manifest["counts"]
    return ImportReport(
        out_dir=Path(out_dir),
        fingerprint=manifest["fingerprint"],
        read=counts["read"],
        kept=counts["kept"],
        quarantined=counts["quarantined"],
        duplicates=counts["duplicates"],
        train=counts["train"],
        test=counts["test"],
        ties_kept=counts["ties_kept"],
        by_reason=counts["by_reason"],
        excluded_annotators=tuple(sorted(excluded)),
    )


def _stream(
    units: list[tuple[Path, list[Path]]], settings: ImportSettings, sources_json: list[dict[str, Any]]
) -> Iterator[Comparison | Quarantined]:
    """Every unit of the identity from every source, in order, recording each file in `sources_json`."""
    for source, files in units:
        produced = 0
        for path in files:
            entry = {"file": str(path), "sha256": "", "format": None, "records": 0, "comparisons": 0}
            sources_json.append(entry)
            for item in file_units(path, settings.format, settings.options, settings.limits, entry):
                produced += 1
                yield item
        if not produced:
            raise DataError(f"{source}: no records")


class _Run:
    """The streaming state of one import: split writers, quarantine, duplicate index, counters."""

    def __init__(
        self,
        directory: Path,
        settings: ImportSettings,
        count_tokens: Callable[[str], int] | None,
        excluded: frozenset[str],
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.count_tokens = count_tokens
        self.excluded = excluded
        self.writers = {split: SplitWriter(directory / split) for split in SPLITS}
        self.quarantine = _jsonl(directory / QUARANTINE)
        self.spool = _jsonl(directory / (DUPLICATES + ".partial"))
        self.index = quality.DuplicateIndex()
        self.agreement = AgreementTracker()
        self.originals: dict[str, set[int]] = {split: set() for split in SPLITS}
        self.read = self.ties_kept = 0
        self.by_reason: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()

    def add(self, item: Comparison | Quarantined) -> None:
        self.read += 1
        if self.read % PROGRESS_EVERY == 0:
            log.info(
                "import: %d rows read, %d kept",
                self.read,
                self.writers["train"].rows + self.writers["test"].rows,
            )
        if isinstance(item, Quarantined):
            self._quarantine(item)
            return
        settings = self.settings
        if reason := quality.check(item, self.count_tokens, settings.max_tokens):
            self._quarantine(Quarantined(item.source, reason, _raw_comparison(item)))
            return
        votes = counted_votes(item.votes, self.excluded)
        self.agreement.add(votes)
        record = aggregate(item, votes, settings.ties, settings.min_votes)
        if isinstance(record, str):
            self._quarantine(Quarantined(item.source, record, _raw_comparison(item)))
            return
        keys = quality.row_keys(item.prompt, item.response_a, item.response_b)
        split = split_of(keys.prompt, settings.split_seed, settings.test_fraction)
        writer = self.writers[split]
        repeat = self.index.first(keys, writer.rows << 1 | (split == "test"))
        if repeat is not None:
            kind, where = repeat
            self.duplicates[kind] += 1
            self.originals[SPLITS[where & 1]].add(where >> 1)
            entry = {"source_file": item.source.file, "source_row": item.source.row, "kind": kind}
            self.spool.write(_dumps({**entry, "split": SPLITS[where & 1], "row": where >> 1}))
            return
        self.ties_kept += record.tie
        writer.add(record)

    def _quarantine(self, item: Quarantined) -> None:
        self.by_reason[quality.category(item.reason)] += 1
        entry = {"source_file": item.source.file, "source_row": item.source.row, "reason": item.reason}
        self.quarantine.write(_dumps({**entry, "raw": item.raw}))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.quarantine.close()
        self.spool.close()

    def finish(self, sources_json: list[dict[str, Any]], first_pass: Agreement | None) -> dict[str, Any]:
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
            "format": DATASET_FORMAT,
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
                "ties_kept": self.ties_kept,
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
                for name, stats in (first_pass or final).annotators.items()
            },
            "agreement": {
                **_agreement_json(final),
                **({"before_exclusion": _agreement_json(first_pass)} if first_pass else {}),
            },
        }
        (self.directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (self.directory / REPORT).write_text(render_report(manifest), encoding="utf-8")
        return manifest

    def _write_duplicates(self) -> None:
        """duplicates.jsonl: each duplicate with the dataset row it repeats and that row's source."""
        origins = {
            split: sources_of_rows(self.directory / split / SplitWriter.NAME, wanted)
            for split, wanted in self.originals.items()
        }
        spool = self.directory / (DUPLICATES + ".partial")
        with spool.open(encoding="utf-8") as lines, _jsonl(self.directory / DUPLICATES) as out:
            for line in lines:
                entry = json.loads(line)
                split, row = entry.pop("split"), entry.pop("row")
                source_file, source_row = origins[split][row]
                of = {"split": split, "row": row, "source_file": source_file, "source_row": source_row}
                out.write(_dumps({**entry, "duplicate_of": of}))
        spool.unlink()


def render_report(manifest: dict[str, Any]) -> str:
    """report.md: the manifest for a person."""
    counts, agreement = manifest["counts"], manifest["agreement"]
    lines = [
        "# Preference data import",
        "",
        f"**rows read = kept + quarantined + duplicates: {counts['read']} = {counts['kept']} + "
        f"{counts['quarantined']} + {counts['duplicates']}**",
        "",
        f"- kept: {counts['train']} train + {counts['test']} test "
        f"(test fraction {manifest['settings']['test_fraction']}, split seed {manifest['settings']['split_seed']}), "
        f"of which {counts['ties_kept']} ties",
        f"- fingerprint: `{manifest['fingerprint']}`",
        "",
        "Rows are comparisons: each pair an importer read, plus each record it could not read.",
        "",
        "## Sources",
        "",
        "| file | format | records | comparisons | sha256 |",
        "|---|---|---:|---:|---|",
        *(
            f"| {s['file']} | {s['format'] or '-'} | {s['records']} | {s['comparisons']} | `{s['sha256'][:16]}` |"
            for s in manifest["sources"]
        ),
        "",
        f"## Quarantined ({counts['quarantined']}, in {QUARANTINE})",
        "",
        *_table(["reason", "rows"], counts["by_reason"].items()),
        "",
        f"## Duplicates ({counts['duplicates']}, in {DUPLICATES})",
        "",
        *_table(["kind", "rows"], counts["duplicates_by_kind"].items()),
        "",
        "## Annotators",
        "",
        "Agreement: how often an annotator chose what the majority of the *other* annotators of the same "
        "comparison chose (comparisons without such a majority do not count). Lowest first.",
        "",
        *_table(
            ["annotator", "votes", "compared", "agreement", "excluded"],
            (
                (name, a["votes"], a["compared"], _number(a["agreement"]), "yes" if a["excluded"] else "")
                for name, a in sorted(manifest["annotators"].items(), key=_by_agreement)
            ),
        ),
        "",
        "## Inter-annotator agreement",
        "",
        *_agreement_lines(agreement),
    ]
    if "before_exclusion" in agreement:
        threshold = manifest["settings"]["min_annotator_agreement"]
        lines += [
            "",
            f"Before excluding annotators below {threshold} agreement:",
            "",
            *_agreement_lines(agreement["before_exclusion"]),
        ]
    lines += ["", "## Settings", "", "```json", json.dumps(manifest["settings"], indent=2), "```", ""]
    return "\n".join(lines)


def _by_agreement(item: tuple[str, dict[str, Any]]) -> tuple[bool, float, str]:
    """Lowest agreement first; annotators never compared last."""
    name, stats = item
    return stats["agreement"] is None, stats["agreement"] or 0.0, name


def _agreement_lines(agreement: dict[str, Any]) -> list[str]:
    if not agreement["units"]:
        return ["No comparison has two or more named annotators."]
    return [
        f"- Krippendorff's alpha (nominal): {_number(agreement['krippendorff_alpha'])} "
        f"over {agreement['units']} comparisons with two or more annotators",
        f"- Fleiss' kappa: {_number(agreement['fleiss_kappa'])} over {agreement['fleiss_units']} comparisons "
        f"with {agreement['fleiss_raters']} annotators each (the most common number)",
    ]


def _agreement_json(agreement: Agreement) -> dict[str, Any]:
    return {
        "krippendorff_alpha": agreement.krippendorff_alpha,
        "units": agreement.alpha_units,
        "fleiss_kappa": agreement.fleiss_kappa,
        "fleiss_units": agreement.fleiss_units,
        "fleiss_raters": agreement.fleiss_raters,
    }


def _table(header: list[str], rows: Any) -> list[str]:
    body = [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    if not body:
        return ["none"]
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *body]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _jsonl(path: Path) -> IO[str]:
    # backslashreplace: a lone surrogate in a bad row comes out as a JSON escape instead of an error
    return path.open("w", encoding="utf-8", errors="backslashreplace")


def _dumps(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _raw_comparison(comparison: Comparison) -> str:
    fields = {"prompt": comparison.prompt, "a": comparison.response_a, "b": comparison.response_b}
    return raw_excerpt(fields)
