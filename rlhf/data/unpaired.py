"""`rlhf data import --kind unpaired`: annotators' unpaired judgements (thumbs up/down, a 1-5 rating of one
completion) in, one unpaired dataset out (TRL's KTO form: prompt, completion, label), every row accounted for.

The import is the preference import's (`rlhf.data.preferences`: streaming, two passes, duplicate index,
quarantine, atomic output, report) with this kind's hooks: the unit is a judged completion (`Judged`), the
same prompt and completion in any record of any file is one unit whose records are votes on it, and the
voting pass decides each by majority. A vote reads "a" desirable, "b" undesirable, "tie" neutral (a rating
between `undesirable_rating` and `desirable_rating`). Kept: a strict majority of desirable or of undesirable
votes. Quarantined with the reason: a neutral majority, or no majority (equally many leaders: KTO needs a
label, so there is no `ties: keep` here), or fewer votes than `min_votes`. Rows read = kept + quarantined +
duplicates, as for preferences.

Layout, as `rlhf.data.preference_dataset` writes it, with the rows of `SCHEMA` below and the manifest's
format `rlhf-unpaired`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from rlhf.data import quality, readers
from rlhf.data.importers import PREFERENCES, UNPAIRED, Kind, get_importer
from rlhf.data.pending import PendingJudged
from rlhf.data.preference_dataset import MESSAGES, load_imported
from rlhf.data.preferences import ImportReport, ImportSettings, _Run, run_import
from rlhf.data.records import Judged, UnpairedRecord, Vote, assistant, excerpt
from rlhf.data.units import DETECT_RECORDS
from rlhf.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets import DatasetDict

DATASET_FORMAT = "rlhf-unpaired"
SCHEMA = pa.schema(
    [
        ("prompt", MESSAGES),
        ("completion", MESSAGES),
        ("label", pa.bool_()),
        ("annotators", pa.list_(pa.string())),
        ("votes", pa.list_(pa.string())),
        ("source_file", pa.string()),
        ("source_row", pa.string()),
    ]
)
KTO_COLUMNS = ["prompt", "completion", "label"]  # TRL's conversational unpaired form
VOTE_NAMES = {"a": "desirable", "b": "undesirable", "tie": "neutral"}


def load_unpaired(out_dir: Path) -> DatasetDict:
    """The train and test splits of an imported unpaired dataset, checked against its fingerprint."""
    return load_imported(out_dir, DATASET_FORMAT)


def import_unpaired(
    sources: Sequence[Path],
    out_dir: Path,
    settings: ImportSettings,
    count_tokens: Callable[[str], int] | None = None,
) -> ImportReport:
    """Import unpaired judgements from `sources` into the unpaired dataset `out_dir` (replacing one there)."""
    if settings.ties != "drop":
        raise ConfigError("ties: an unpaired example needs a majority label; only 'drop' applies")
    return run_import(sources, Path(out_dir), settings, count_tokens, _UnpairedRun)


def decide(judged: Judged, votes: list[Vote], min_votes: int) -> UnpairedRecord | str:
    """The labelled example the counted votes make, or the reason there is none (for the quarantine)."""
    if len(votes) < min_votes:
        return f"too few votes: {len(votes)} < min_votes {min_votes}"
    counts = Counter(vote.choice for vote in votes)
    (top, most), *rest = counts.most_common()
    if rest and rest[0][1] == most:
        tally = ", ".join(f"{n} {VOTE_NAMES[choice]}" for choice, n in sorted(counts.items()))
        return f"no majority: {tally}"
    if top == "tie":
        return (
            f"neutral rating: {most} of {len(votes)} votes between the desirable and undesirable thresholds"
        )
    named = [vote for vote in votes if vote.annotator is not None]
    return UnpairedRecord(
        prompt=judged.prompt,
        completion=assistant(judged.completion),
        label=top == "a",
        annotators=[str(vote.annotator) for vote in named],
        votes=[VOTE_NAMES[vote.choice] for vote in named],
        source_file=judged.source.file,
        source_row=judged.source.row,
    )


class _UnpairedRun(_Run):
    """The preference import's run with the unpaired kind's units, checks, keys and decisions."""

    kind = UNPAIRED
    describes = "unpaired"
    dataset_format = DATASET_FORMAT
    schema = SCHEMA
    pending_class = PendingJudged

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.labels: Counter[str] = Counter()

    def _admit(self, item: Judged) -> str | quality.RowKeys:
        return self._check(item) or self._keys(item)

    def _check(self, item: Judged) -> str | None:
        texts = {"completion": item.completion}
        labels = quality.written_labels(item.prompt, item.votes)
        return quality.empty_text(item.prompt, texts) or quality.text_problem(
            item.prompt, texts, labels, self.count_tokens, self.settings.max_tokens
        )

    def _keys(self, item: Judged) -> quality.RowKeys:
        return quality.completion_keys(item.prompt, item.completion)

    def _raw(self, item: Judged) -> str:
        return excerpt(repr({"prompt": item.prompt, "completion": item.completion}))

    def _decide(self, unit: Judged, votes: list[Vote]) -> UnpairedRecord | str:
        record = decide(unit, votes, self.settings.min_votes)
        if not isinstance(record, str):
            self.labels["desirable" if record.label else "undesirable"] += 1
        return record

    def _counts(self) -> dict[str, Any]:
        return {"desirable": self.labels["desirable"], "undesirable": self.labels["undesirable"]}


def detect_kind(sources: Sequence[Path], settings: ImportSettings) -> Kind:
    """The kind of data in `sources`: unpaired when a record among the first file's first ones is an
    unpaired judgement (a rating or thumbs of one completion) that a preference importer does not read as a
    comparison, else preferences."""
    files = readers.data_files(Path(sources[0])) if sources else []
    if not files:
        return PREFERENCES
    records = readers.read_records(files[0], settings.limits)
    head = [item for item in itertools.islice(records, DETECT_RECORDS) if isinstance(item, tuple)]
    formats = [settings.format] if settings.format else list(UNPAIRED.formats)
    for _, record in head:
        if any(name in UNPAIRED.formats and get_importer(name, UNPAIRED).sniff(record) for name in formats):
            return UNPAIRED
    return PREFERENCES


def thumbs_mapping(items: Sequence[str], key: str) -> dict[str, bool]:
    """`LABEL=desirable` / `LABEL=undesirable` items (`--thumbs`) as a thumbs mapping; a bad item names `key`."""
    meanings = {"desirable": True, "undesirable": False}
    mapping = {}
    for item in items:
        label, _, meaning = item.rpartition("=")
        if not label or meaning not in meanings:
            raise ConfigError(f"{key}: expected LABEL=desirable or LABEL=undesirable, got {item!r}")
        mapping[label] = meanings[meaning]
    return mapping


def kto_examples(path: Path) -> tuple[DatasetDict, dict[str, float]]:
    """The imported unpaired dataset in TRL's KTO form (prompt, completion, label), with its counts."""
    examples = load_unpaired(path).select_columns(KTO_COLUMNS)
    train = examples["train"]
    if len(train) == 0:
        raise DataError(f"{path}: no unpaired examples to train on")
    desirable = sum(train["label"])
    counts = {"examples_train": len(train), "examples_eval": len(examples["test"]),
              "desirable_train": desirable, "undesirable_train": len(train) - desirable}  # fmt: skip
    return examples, counts
