"""Label Studio's three export types of one project, the labeling config, the prompt field and Ranker buckets.

The projects in tests/data/labelstudio were exported as JSON, then converted to JSON_MIN and CSV by Label
Studio's own converter code (see the README there). JSON_MIN and CSV rows are one annotation each, so a
task's rows give comparisons of one vote each; grouped by prompt and responses (what the import does when
it merges the votes of one comparison) they must hold exactly the JSON export's votes.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rlhf.data import readers
from rlhf.data.importers import BadRow, ImportOptions, detect
from rlhf.data.importers.labelstudio import IMPORTER as LABELSTUDIO
from rlhf.data.importers.labelstudio_config import parse_label_config
from rlhf.data.records import Comparison, Quarantined, Source, Vote
from rlhf.errors import ConfigError, DataError

PROJECTS = Path(__file__).parent / "data" / "labelstudio"
EXPORTS = ("json", "min.json", "csv")
Key = tuple[str, str, str]  # prompt as JSON, response a, response b


def read_export(path: Path, options: ImportOptions) -> tuple[list[Comparison], list[str]]:
    """Every record of an export through the importer: the comparisons, and the reason of each bad record."""
    comparisons, reasons = [], []
    for item in readers.read_records(path):
        assert not isinstance(item, Quarantined), item
        source, record = item
        try:
            comparisons.extend(LABELSTUDIO.comparisons(record, source, options))
        except BadRow as exc:
            reasons.append(f"{source.row}: {exc}")
    return comparisons, reasons


def votes_by_pair(comparisons: list[Comparison]) -> dict[Key, Counter[Vote]]:
    """The votes each pair got, over all comparisons of it: a row's one vote joins its task's others."""
    votes: dict[Key, Counter[Vote]] = {}
    for comparison in comparisons:
        key = (json.dumps(comparison.prompt), comparison.response_a, comparison.response_b)
        votes.setdefault(key, Counter()).update(comparison.votes)
    return votes


def options_for(project: str, **extra: Any) -> ImportOptions:
    settings = {
        "pairwise": {},
        "ranker": {"bucket_order": ("relevant_results", "biased_results")},
        "choices": {"label_config": str(PROJECTS / "choices.xml")},
    }[project]
    return ImportOptions(**{**settings, **extra})


PROMPT = [{"role": "user", "content": "Name two fruits."}]
FRENCH = [{"role": "user", "content": 'Say "hi" in French, then a URL: a/b.'}]
JOBS = [{"role": "user", "content": "AI and the job market?"}]
SAFE = [{"role": "user", "content": "Is AI safe?"}]
ONE, TWO = "one@example.com", "two@example.com"  # expanded users: JSON_MIN and CSV name them by email
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
EXPECTED = {  # project -> (prompt, response a, response b, votes) of each pair
    "pairwise": [
        (PROMPT, "Apple and pear.", "Apple and hammer.", [Vote("1", "a"), Vote("2", "b"), Vote("3", "tie")]),
        (
            FRENCH,
            'Bonjour, "hi"\nhttps://a.example/b',
            "Salut — https://b.example/c, ok",
            [Vote("1", "b"), Vote("2", "b")],
        ),
    ],
    "ranker": [  # relevant_results above biased_results: the order the user gave
        (JOBS, "AI will create new jobs.", "AI will replace every job.", [Vote(ONE, "a"), Vote(TWO, "a")]),
        (
            JOBS,
            "AI will create new jobs.",
            "Worry about climate instead.",
            [Vote(ONE, "tie"), Vote(TWO, "a")],
        ),
        (
            JOBS,
            "AI will replace every job.",
            "Worry about climate instead.",
            [Vote(ONE, "b"), Vote(TWO, "tie")],
        ),
        (SAFE, "AI will create new jobs.", "AI will replace every job.", [Vote(TWO, "a")]),
    ],
    "choices": [(CHAT, "7", "8", [Vote("1", "a"), Vote("2", "tie"), Vote("3", "tie")])],
}


@pytest.mark.parametrize("project", ["pairwise", "ranker", "choices"])
def test_json_min_and_csv_exports_give_the_json_exports_votes(project: str) -> None:
    expected = {(json.dumps(prompt), a, b): Counter(votes) for prompt, a, b, votes in EXPECTED[project]}
    for export in EXPORTS:
        path = PROJECTS / f"{project}.{export}"
        comparisons, _ = read_export(path, options_for(project))
        assert votes_by_pair(comparisons) == expected, export
        if export != "json":  # a row is one annotation: one vote, from its annotator
            assert all(len(comparison.votes) == 1 for comparison in comparisons), export


def test_rows_of_tasks_without_annotations_are_bad_rows_and_cancelled_ones_are_not_exported() -> None:
    reasons = {export: read_export(PROJECTS / f"pairwise.{export}", ImportOptions())[1] for export in EXPORTS}
    assert reasons["json"] == [
        "item 2: no submitted judgement: no annotations",
        "item 3: no submitted judgement: 1 annotation, all cancelled",
    ]
    assert reasons["min.json"] == ["item 5: no submitted judgement: no annotations"]
    assert reasons["csv"] == ["line 9: no submitted judgement: no annotations"]


@pytest.mark.parametrize("export", EXPORTS)
def test_ranker_buckets_rank_only_in_a_given_order(export: str) -> None:
    comparisons, reasons = read_export(PROJECTS / f"ranker.{export}", ImportOptions())
    assert not comparisons
    assert reasons and all(
        "sorted items into buckets (relevant_results, biased_results), which may be categories rather than "
        "a quality order; pass --bucket-order BEST,...,WORST" in reason
        for reason in reasons
    )
    # the user may say the other order too: relevant and biased are categories, which one is better is theirs
    flipped = ImportOptions(bucket_order=("biased_results", "relevant_results"))
    comparisons, _ = read_export(PROJECTS / f"ranker.{export}", flipped)
    assert votes_by_pair(comparisons)[
        (json.dumps(JOBS), "AI will create new jobs.", "AI will replace every job.")
    ] == Counter([Vote("one@example.com", "b"), Vote("two@example.com", "b")])
    partial = ImportOptions(bucket_order=("relevant_results",))
    _, reasons = read_export(PROJECTS / f"ranker.{export}", partial)
    assert reasons and all(
        "bucket biased_results is not in --bucket-order (relevant_results)" in r for r in reasons
    )


@pytest.mark.parametrize("export", ["min.json", "csv"])
def test_a_row_whose_judgement_cannot_be_told_needs_the_label_config(export: str) -> None:
    """Annotator 3 answered only the flags question: the JSON export shows that the project's preference
    control got no result (a tie); a row alone cannot tell 'flags' is not the judgement."""
    comparisons, reasons = read_export(PROJECTS / f"choices.{export}", ImportOptions())
    assert Counter(vote for c in comparisons for vote in c.votes) == Counter(
        [Vote("1", "a"), Vote("2", "tie")]
    )
    [reason] = reasons
    assert (
        "no Pairwise, Ranker or Choices result recognized in the row (other columns: flags); pass " in reason
    )
    assert "--label-config with the project's labeling config, or import the JSON export" in reason


def test_label_config_names_the_prompt_and_the_responses(tmp_path: Path) -> None:
    """Fields named nothing like answer1/answer2 or prompt: only the labeling config says which is which."""
    data = {"context": "Name two fruits.", "reply_x": "Apple and hammer.", "reply_y": "Apple and pear."}
    result = {"from_name": "duel", "to_name": "duel", "type": "pairwise", "value": {"selected": "right"}}
    record = {"id": 5, "data": data, "annotations": [{"id": 1, "completed_by": 4, "result": [result]}]}
    with pytest.raises(BadRow, match=r"^no prompt: expected one of .* \(keys: context, reply_x, reply_y\)"):
        list(LABELSTUDIO.comparisons(record, Source("x.json", "item 0"), ImportOptions()))
    config = tmp_path / "config.xml"
    config.write_text(
        '<View><Header value="Which reply is better?"/><Text name="question" value="$context"/>'
        '<Pairwise name="duel" toName="left,right"/>'
        '<Text name="left" value="$reply_y"/><Text name="right" value="$reply_x"/></View>'
    )
    options = ImportOptions(label_config=str(config))
    row = {**data, "id": 5, "duel": [{"selected": "right"}], "annotator": 4, "annotation_id": 1,
           "created_at": "2026-11-02T10:00:00Z", "updated_at": "2026-11-02T10:00:09Z", "lead_time": 9.0}  # fmt: skip
    for item in (record, row):
        [comparison] = LABELSTUDIO.comparisons(item, Source("x.json", "item 0"), options)
        assert (comparison.prompt, comparison.response_a, comparison.response_b, comparison.votes) == (
            PROMPT,
            "Apple and pear.",
            "Apple and hammer.",
            [Vote("4", "b")],
        )


def test_prompt_field_maps_a_prompt_of_any_name(tmp_path: Path) -> None:
    chat = json.dumps(CHAT)
    csv_path = tmp_path / "export.csv"
    csv_path.write_text(
        '"annotation_id","annotator","answer1","answer2","comparison","created_at","id","lead_time","turns",'
        '"updated_at"\r\n'
        f'3,"7","7","8","[{{""selected"":""left""}}]","2026-11-02",1,2.5,"{chat.replace(chr(34), 2 * chr(34))}",'
        '"2026-11-02"\r\n',
        encoding="utf-8",
    )
    _, reasons = read_export(csv_path, ImportOptions())
    assert reasons == ["line 2: no prompt: expected one of messages, dialogue, conversation, chat, prompt, "
                       "question, instruction, query, input, text (keys: answer1, answer2, turns)"]  # fmt: skip
    [comparison], _ = read_export(csv_path, ImportOptions(prompt_field="turns"))
    assert (comparison.prompt, comparison.votes) == (CHAT, [Vote("7", "a")])
    _, reasons = read_export(csv_path, ImportOptions(prompt_field="question"))
    assert reasons == ["line 2: no prompt: the prompt field 'question' is not in the data "
                       "(keys: answer1, answer2, turns)"]  # fmt: skip


def test_our_own_annotation_config_keeps_importing_without_flags() -> None:
    """`export-for-annotation` writes a Pairwise config (no buckets, so no order to give) and tasks whose
    multi-turn prompts keep their turns in `messages` beside the flat `prompt` text shown to annotators."""
    from rlhf.annotate import LABEL_CONFIG

    config = parse_label_config(LABEL_CONFIG, "tasks.label_config.xml")
    assert (config.control, config.kind, config.responses, config.prompt, config.buckets) == (
        "comparison",
        "pairwise",
        ("answer1", "answer2"),
        "prompt",
        (),
    )
    data = {"prompt": "user: hi\n\nuser: Name a prime.", "answer1": "7", "answer2": "8", "messages": CHAT}
    result = {
        "from_name": "comparison",
        "to_name": "comparison",
        "type": "pairwise",
        "value": {"selected": "left"},
    }
    record = {"id": 1, "data": data, "annotations": [{"id": 1, "completed_by": 2, "result": [result]}]}
    [comparison] = LABELSTUDIO.comparisons(record, Source("t.json", "item 0"), ImportOptions())
    assert (comparison.prompt, comparison.response_a, comparison.votes) == (CHAT, "7", [Vote("2", "a")])


def test_a_label_config_of_another_project_is_not_silently_a_tie() -> None:
    options = ImportOptions(label_config=str(PROJECTS / "pairwise.xml"))
    for export in EXPORTS:
        comparisons, reasons = read_export(PROJECTS / f"ranker.{export}", options)
        assert not comparisons and reasons
        assert all(
            "results of rank, which is not the labeling config's pairwise 'comparison'" in r for r in reasons
        )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<View><Text name='p' value='$p'>", r"config.xml:1: not a labeling config \(invalid XML"),
        (
            "<View><Text name='p' value='$p'/><Rating name='r' toName='p'/></View>",
            r"no Pairwise, Ranker, or Choices",
        ),
        (
            "<View><Text name='a' value='$a'/><Text name='b' value='$b'/>"
            "<Pairwise name='one' toName='a,b'/><Pairwise name='two' toName='a,b'/></View>",
            r"several controls could hold the preference \(Pairwise 'one', Pairwise 'two'\)",
        ),
        (
            "<View><Text name='a' value='$a'/><Pairwise name='one' toName='a'/></View>",
            r"Pairwise 'one' has toName='a'; expected two Text tags",
        ),
        (
            "<View><Text name='a' value='$a'/><Ranker name='rank' toName='a'/></View>",
            r"Ranker 'rank' has toName='a'; expected a List tag",
        ),
    ],
    ids=["invalid-xml", "no-control", "two-controls", "pairwise-to-one", "ranker-to-text"],
)
def test_a_bad_label_config_is_one_line_naming_the_file(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "config.xml"
    path.write_text(text)
    with pytest.raises(DataError, match=error) as caught:
        ImportOptions(label_config=str(path))
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_bucket_order_is_checked_against_the_label_config(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"bucket_order: relevant not among the Ranker buckets of .*ranker.xml"
    ):
        ImportOptions(label_config=str(PROJECTS / "ranker.xml"), bucket_order=("relevant", "biased_results"))
    with pytest.raises(ConfigError, match="expected distinct bucket names"):
        ImportOptions(bucket_order=("a", "a"))
    with pytest.raises(DataError, match=r"missing\.xml: cannot read the labeling config"):
        ImportOptions(label_config=str(tmp_path / "missing.xml"))


def test_a_changed_label_config_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "config.xml"
    shutil.copy(PROJECTS / "pairwise.xml", path)
    ImportOptions(label_config=str(path))
    path.write_text((PROJECTS / "ranker.xml").read_text() + "\n")
    assert ImportOptions(label_config=str(path), bucket_order=("biased_results",))


@pytest.mark.parametrize("export", EXPORTS)
def test_every_export_type_is_detected_as_label_studio(export: str) -> None:
    [(source, first), *_] = readers.read_records(PROJECTS / f"ranker.{export}")
    assert detect(first, str(source)).name == "labelstudio"
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "id": 1, "annotator": 1, "annotation_id": 2,
           "created_at": None, "updated_at": None, "lead_time": 1.0}  # fmt: skip
    assert detect(row, "x").name == "labelstudio"  # a task whose fields are TRL's names is still a row
