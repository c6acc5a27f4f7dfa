"""Label Studio and Argilla importers on exports written the way the tools write them.

Each fixture is written to disk as the tool's export file (a Label Studio JSON array, an Argilla JSON-lines
dump of `to_datasets()` or of `Record.to_dict()`), read back, and handed record by record to the importer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rlhf.data.importers import BadRow, ImportOptions
from rlhf.data.importers.argilla import IMPORTER as ARGILLA
from rlhf.data.importers.judgements import choice_of
from rlhf.data.importers.labelstudio import IMPORTER as LABELSTUDIO
from rlhf.data.records import Comparison, Source, Vote
from rlhf.data.synthetic import SynthConfig, gold_reward, write_synthetic_task

SOURCE = Source("f.json", "task 1")
PROMPT = "name two fruits"
USER_PROMPT = [{"role": "user", "content": PROMPT}]


def exported(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write records as the tool's export file (JSON array for .json, JSON lines for .jsonl) and read them back."""
    if path.suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
        return json.loads(path.read_text(encoding="utf-8"))
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def imported(importer: Any, record: dict[str, Any], options: ImportOptions | None = None) -> list[Comparison]:
    return list(importer.comparisons(record, SOURCE, options or ImportOptions()))


# --- Label Studio fixtures: a task and its annotations as the JSON export writes them ---------------------


def user_object(user_id: int | None, email: str) -> dict[str, Any]:
    return {"id": user_id, "email": email, "first_name": "Ann", "last_name": "Otator"}


def annotation(
    annotation_id: int,
    completed_by: Any,
    result: list[dict[str, Any]],
    *,
    cancelled: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "completed_by": completed_by,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2025-01-07T10:12:01.000001Z",
        "updated_at": "2025-01-07T10:12:01.000002Z",
        "draft_created_at": "2025-01-07T10:11:50.000001Z",
        "lead_time": 11.2,
        "prediction": {},
        "result_count": len(result),
        "unique_id": f"00000000-0000-4000-8000-{annotation_id:012d}",
        "import_id": None,
        "last_action": None,
        "task": 1,
        "project": 3,
        "updated_by": 1,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
        **extra,
    }


def task(
    data: dict[str, Any], annotations: list[dict[str, Any]], predictions: Sequence[Any] = ()
) -> dict[str, Any]:
    cancelled = sum(a["was_cancelled"] for a in annotations)
    return {
        "id": 1,
        "annotations": annotations,
        "file_upload": "pairs.json",
        "drafts": [],
        "predictions": list(predictions),
        "data": data,
        "meta": {},
        "created_at": "2025-01-06T09:00:00.000001Z",
        "updated_at": "2025-01-07T10:12:01.000002Z",
        "inner_id": 1,
        "total_annotations": len(annotations) - cancelled,
        "cancelled_annotations": cancelled,
        "total_predictions": len(predictions),
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 3,
        "updated_by": 1,
        "comment_authors": [],
    }


def pairwise(selected: str, to_name: str = "comparison") -> dict[str, Any]:
    """Label Studio writes the Pairwise control's own name as `to_name`."""
    return {
        "id": "pW3xQ_9a1b",
        "from_name": "comparison",
        "to_name": to_name,
        "type": "pairwise",
        "value": {"selected": selected},
        "origin": "manual",
    }


def choices(name: str, *values: str) -> dict[str, Any]:
    return {
        "id": f"c_{name}",
        "from_name": name,
        "to_name": "prompt",
        "type": "choices",
        "value": {"choices": list(values)},
        "origin": "manual",
    }


def ranker(value: Any) -> dict[str, Any]:
    return {
        "id": "PpwBv_NMxd",
        "from_name": "rank",
        "to_name": "answers",
        "type": "ranker",
        "value": {"ranker": value},
    }


PAIR_DATA = {"prompt": PROMPT, "answer1": "apple pear", "answer2": "apple hammer"}


def test_labelstudio_pairwise_votes_per_annotator(tmp_path: Path) -> None:
    annotations = [
        annotation(11, 1, [pairwise("left")]),
        annotation(12, user_object(2, "two@example.com"), [pairwise("right")]),
        annotation(13, 3, []),  # chose neither side: Label Studio deletes the result
        annotation(14, user_object(4, "four@example.com"), [], cancelled=True),
        annotation(
            15, 5, [pairwise("left"), {"type": "textarea", "from_name": "why", "value": {"text": ["ok"]}}]
        ),
        annotation(16, user_object(None, "lead@example.com"), [pairwise("right")], ground_truth=True),
    ]
    prediction = {"model_version": "judge-v1", "score": 0.9, "result": [pairwise("right")]}
    [record] = exported(tmp_path / "export.json", [task(PAIR_DATA, annotations, [prediction])])

    assert imported(LABELSTUDIO, record) == [
        Comparison(
            prompt=USER_PROMPT,
            response_a="apple pear",
            response_b="apple hammer",
            votes=[
                Vote("1", "a"),
                Vote("two@example.com", "b"),  # a user object is named by email, as JSON_MIN and CSV name it
                Vote("3", "tie"),
                Vote("5", "a"),
                Vote("lead@example.com", "b"),
            ],
            source=SOURCE,
        )
    ]


def test_labelstudio_pairwise_to_name_orders_the_responses(tmp_path: Path) -> None:
    data = {"instruction": PROMPT, "kept": "apple pear", "other": "apple hammer"}
    [record] = exported(
        tmp_path / "export.json", [task(data, [annotation(1, 7, [pairwise("left", "other,kept")])])]
    )
    [comparison] = imported(LABELSTUDIO, record)
    assert (comparison.response_a, comparison.response_b, comparison.votes) == (
        "apple hammer",
        "apple pear",
        [Vote("7", "a")],
    )


def test_labelstudio_choices_template_with_chat_prompt(tmp_path: Path) -> None:
    data = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
        "response_a": "apple pear",
        "response_b": "apple hammer",
    }
    annotations = [
        annotation(1, 1, [choices("preference", "Response A"), choices("safety", "Safe")]),
        annotation(2, 2, [choices("safety", "Safe"), choices("preference", "Response B")]),
        annotation(3, 3, [choices("preference", "Tie")]),
        annotation(4, 4, [choices("preference", "Both equal"), choices("safety", "Unsafe")]),
        annotation(5, 5, [choices("safety", "Safe")]),  # answered safety only: no preference
    ]
    [record] = exported(tmp_path / "export.json", [task(data, annotations)])
    [comparison] = imported(LABELSTUDIO, record)
    assert comparison.prompt == [{"role": "system", "content": "Be brief."}, *USER_PROMPT]
    assert comparison.votes == [
        Vote("1", "a"),
        Vote("2", "b"),
        Vote("3", "tie"),
        Vote("4", "tie"),
        Vote("5", "tie"),
    ]


def test_labelstudio_paragraphs_dialogue_prompt(tmp_path: Path) -> None:
    data = {
        "dialogue": [
            {"author": "Human", "text": "hi"},
            {"author": "Assistant", "text": "hello, how can I help?"},
            {"author": "Human", "text": PROMPT},
        ],
        "answer1": "apple pear",
        "answer2": "apple hammer",
    }
    [record] = exported(tmp_path / "export.json", [task(data, [annotation(1, 1, [pairwise("right")])])])
    [comparison] = imported(LABELSTUDIO, record)
    assert comparison.prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello, how can I help?"},
        *USER_PROMPT,
    ]
    assert comparison.votes == [Vote("1", "b")]


RANKER_DATA = {
    "prompt": PROMPT,
    "items": [
        {"id": "llm_1", "title": "LLM 1", "body": "apple pear"},
        {"id": "llm_2", "title": "LLM 2", "body": "apple hammer"},
        {"id": "llm_3", "title": "LLM 3", "body": "saw hammer"},
    ],
}


def test_labelstudio_ranker_two_items_is_one_pair(tmp_path: Path) -> None:
    data = {**RANKER_DATA, "items": RANKER_DATA["items"][:2]}
    annotations = [
        annotation(1, 1, [ranker({"rank": ["llm_2", "llm_1"]})]),
        annotation(2, user_object(2, "two@example.com"), [ranker({"rank": ["llm_1", "llm_2"]})]),
    ]
    [record] = exported(tmp_path / "export.json", [task(data, annotations)])
    assert imported(LABELSTUDIO, record) == [
        Comparison(
            USER_PROMPT, "apple pear", "apple hammer", [Vote("1", "b"), Vote("two@example.com", "a")], SOURCE
        )
    ]


def test_labelstudio_ranker_k_wise_becomes_every_pair(tmp_path: Path) -> None:
    annotations = [
        annotation(1, 1, [ranker({"rank": ["llm_3", "llm_1", "llm_2"]})]),
        annotation(2, 2, [ranker(["llm_1", "llm_2", "llm_3"])]),  # older exports: a bare list
        annotation(3, 3, [], cancelled=True),
    ]
    [record] = exported(tmp_path / "export.json", [task(RANKER_DATA, annotations)])
    pairs = [(c.response_a, c.response_b, c.votes) for c in imported(LABELSTUDIO, record)]
    assert pairs == [
        ("apple pear", "apple hammer", [Vote("1", "a"), Vote("2", "a")]),
        ("apple pear", "saw hammer", [Vote("1", "b"), Vote("2", "a")]),
        ("apple hammer", "saw hammer", [Vote("1", "b"), Vote("2", "a")]),
    ]


def test_labelstudio_ranker_buckets_are_tiers_in_the_given_order(tmp_path: Path) -> None:
    data = {**RANKER_DATA, "items": [{"id": "llm_0", "title": "LLM 0", "body": "cat"}, *RANKER_DATA["items"]]}
    buckets = {"good": ["llm_2", "llm_3"], "best": ["llm_1"], "_": ["llm_0"]}  # "_": left unsorted
    [record] = exported(tmp_path / "export.json", [task(data, [annotation(1, 9, [ranker(buckets)])])])
    options = ImportOptions(bucket_order=("best", "good", "bad"))
    pairs = [(c.response_a, c.response_b, c.votes) for c in imported(LABELSTUDIO, record, options)]
    assert pairs == [
        ("apple pear", "apple hammer", [Vote("9", "a")]),
        ("apple pear", "saw hammer", [Vote("9", "a")]),
        ("apple hammer", "saw hammer", [Vote("9", "tie")]),
    ]


@pytest.mark.parametrize(
    ("data", "annotations", "reason"),
    [
        (
            PAIR_DATA,
            [annotation(i, i, [pairwise("left")], cancelled=True) for i in (1, 2, 3)],
            r"^no submitted judgement: 3 annotations, all cancelled$",
        ),
        (PAIR_DATA, [], r"^no submitted judgement: no annotations$"),
        (
            {**PAIR_DATA, "response_a": "x", "response_b": "y"},
            [annotation(1, 1, [pairwise("left")])],
            r"ambiguous responses in the task data: answer1/answer2, response_a/response_b",
        ),
        (
            {"prompt": PROMPT, "good": "x", "bad": "y"},
            [annotation(1, 1, [pairwise("left")])],
            r"cannot find the two responses in the task data \(keys: bad, good, prompt\)",
        ),
        (
            {"answer1": "x", "answer2": "y", "source": 4},
            [annotation(1, 1, [pairwise("left")])],
            r"^no prompt: expected one of .* \(keys: answer1, answer2, source\)",
        ),
        ({**PAIR_DATA, "answer2": None}, [annotation(1, 1, [])], r"response 'answer2' is not text"),
        (PAIR_DATA, [annotation(1, 1, [pairwise("middle")])], r"unknown Pairwise selection 'middle'"),
        (
            PAIR_DATA,
            [
                annotation(1, 1, [choices("preference", "Response A")]),
                annotation(2, 2, [choices("preference", "Can't choose")]),
            ],
            r"annotation 2: unknown choice \"Can't choose\" in 'preference'",
        ),
        (
            PAIR_DATA,
            [annotation(1, 1, [choices("preference", "Skip")])],
            r"no Choices value names a side or a tie \(preference: 'Skip'\)",
        ),
        (
            PAIR_DATA,
            [annotation(1, 1, [choices("preference", "Response A", "Response B")])],
            r"several choices in 'preference'",
        ),
        (
            PAIR_DATA,
            [annotation(1, 1, [{"type": "rating", "from_name": "stars", "value": {"rating": 4}}])],
            r"no comparison in the annotations: results of type rating",
        ),
        (
            {"dialogue": [{"author": "Narrator", "text": "once"}], "answer1": "x", "answer2": "y"},
            [annotation(1, 1, [pairwise("left")])],
            r"'dialogue' turn 0: expected .* known role",
        ),
        (
            RANKER_DATA,
            [annotation(1, 1, [ranker({"rank": ["llm_1", "llm_9"]})])],
            r"ranked items llm_1, llm_9 are not the ids of a list",
        ),
        (
            RANKER_DATA,
            [annotation(1, 1, [ranker({"_": ["llm_1", "llm_2"]})])],
            r"no pair of responses was judged",
        ),
    ],
    ids=[
        "all-cancelled",
        "no-annotations",
        "ambiguous-responses",
        "no-responses",
        "no-prompt",
        "response-not-text",
        "bad-selection",
        "unknown-choice",
        "no-comparison-choice",
        "several-choices",
        "no-comparison-control",
        "unknown-role",
        "ranked-id-missing",
        "nothing-ranked",
    ],
)
def test_labelstudio_bad_tasks_name_the_reason(
    tmp_path: Path, data: dict[str, Any], annotations: list[dict[str, Any]], reason: str
) -> None:
    [record] = exported(tmp_path / "export.json", [task(data, annotations)])
    with pytest.raises(BadRow, match=reason):
        imported(LABELSTUDIO, record)


def test_labelstudio_task_without_data_is_a_bad_row() -> None:
    with pytest.raises(BadRow, match="task has no 'data' object"):
        imported(LABELSTUDIO, {"id": 1, "annotations": []})


@pytest.mark.parametrize(
    ("label", "choice"),
    [
        ("Response A", "a"),
        ("answer2", "b"),
        ("response-1", "a"),
        ("Left", "a"),
        ("B", "b"),
        ("A is slightly better", "a"),
        ("Tie", "tie"),
        ("Both equal", "tie"),
        ("Neither", "tie"),
        ("Tie (both bad)", "tie"),
        ("Response C", None),
        ("Can't choose", None),
        ("Yes", None),
    ],
)
def test_choice_labels(label: str, choice: str | None) -> None:
    assert choice_of(label) == choice


def test_labelstudio_reads_the_synthetic_export(tmp_path: Path) -> None:
    """The built-in task's simulated annotators agree with the gold reward; their votes must survive import."""
    cfg = SynthConfig(num_sft_train=10, num_sft_eval=5, num_preference_tasks=200)
    tasks = json.loads(
        write_synthetic_task(tmp_path / "task", cfg)["preferences"].read_text(encoding="utf-8")
    )
    agree = clear = 0
    for record in tasks:
        [comparison] = imported(LABELSTUDIO, record)
        prompt = record["data"]["prompt"]
        assert (comparison.prompt, comparison.response_a, comparison.response_b) == (
            [{"role": "user", "content": prompt}],
            record["data"]["answer1"],
            record["data"]["answer2"],
        )
        assert len(comparison.votes) == sum(not a["was_cancelled"] for a in record["annotations"])
        gold = gold_reward(prompt, comparison.response_a) - gold_reward(prompt, comparison.response_b)
        counts = Counter(vote.choice for vote in comparison.votes)
        if abs(gold) < cfg.tie_margin:
            assert counts.keys() == {"tie"}
            continue
        clear += 1
        agree += counts["a" if gold > 0 else "b"] > counts["b" if gold > 0 else "a"]
    assert clear > 100
    assert agree / clear > 0.8


def test_labelstudio_synthetic_all_skipped_tasks_are_bad_rows(tmp_path: Path) -> None:
    cfg = SynthConfig(num_sft_train=10, num_sft_eval=5, num_preference_tasks=200, skip_prob=0.3)
    tasks = json.loads(
        write_synthetic_task(tmp_path / "task", cfg)["preferences"].read_text(encoding="utf-8")
    )
    skipped = [record for record in tasks if all(a["was_cancelled"] for a in record["annotations"])]
    assert skipped  # the seed gives a few; without them this test would prove nothing
    for record in tasks:
        if record in skipped:
            with pytest.raises(BadRow, match=r"^no submitted judgement: 3 annotations, all cancelled$"):
                imported(LABELSTUDIO, record)
        else:
            assert len(imported(LABELSTUDIO, record)) == 1


# --- Argilla fixtures ------------------------------------------------------------------------------------

HAIKU = "write a haiku about rain"
RESPONSES = {"response-1": "rain taps the window", "response-2": "grey sky, wet street", "response-3": "sun"}


def v1_answer(user_id: str, value: Any, status: str = "submitted") -> dict[str, Any]:
    return {"user_id": user_id, "value": value, "status": status}


def v1_ranking(*names: str, ranks: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    return [
        {"rank": rank, "value": name}
        for name, rank in zip(names, ranks or range(1, len(names) + 1), strict=True)
    ]


def v1_row(**questions: Any) -> dict[str, Any]:
    """A row of `FeedbackDataset.format_as("datasets")`: fields, then per question the answers, the
    suggestion and its metadata, then external_id and metadata (a JSON string)."""
    row: dict[str, Any] = {"prompt": HAIKU, **RESPONSES}
    for name, answers in questions.items():
        row[name] = answers
        row[f"{name}-suggestion"] = None
        row[f"{name}-suggestion-metadata"] = {"type": None, "score": None, "agent": None}
    return {**row, "external_id": "rec-17", "metadata": json.dumps({"source": "ultrachat"})}


def test_argilla_v1_ranking_statuses_and_ties(tmp_path: Path) -> None:
    row = v1_row(
        ranking=[
            v1_answer("u-ann", v1_ranking("response-2", "response-1", "response-3")),
            v1_answer("u-bob", v1_ranking("response-1", "response-2", "response-3", ranks=(1, 1, 2))),
            v1_answer("u-cat", v1_ranking("response-3", "response-2", "response-1"), "discarded"),
            v1_answer("u-dan", v1_ranking("response-3", "response-1", "response-2"), "draft"),
        ],
        quality=[v1_answer("u-ann", 4)],  # a rating question: not a preference
    )
    row["ranking-suggestion"] = v1_ranking("response-3", "response-2", "response-1")
    row["ranking-suggestion-metadata"] = {"type": "model", "score": 0.4, "agent": "judge"}
    [record] = exported(tmp_path / "argilla.jsonl", [row])

    prompt = [{"role": "user", "content": HAIKU}]
    one, two, three = RESPONSES.values()
    assert imported(ARGILLA, record) == [
        Comparison(prompt, one, two, [Vote("u-ann", "b"), Vote("u-bob", "tie")], SOURCE),
        Comparison(prompt, one, three, [Vote("u-ann", "a"), Vote("u-bob", "a")], SOURCE),
        Comparison(prompt, two, three, [Vote("u-ann", "a"), Vote("u-bob", "a")], SOURCE),
    ]


def test_argilla_v1_columnwise_after_arrow_round_trip(tmp_path: Path) -> None:
    """`datasets` stores a sequence of structs as a struct of lists: rankings, and (older exports) whole
    question columns, come back column-wise."""
    per_answer = v1_row(
        ranking=[
            v1_answer("u-ann", {"rank": [2, 1], "value": ["response-1", "response-2"]}),
            v1_answer("u-bob", {"rank": [1, 2], "value": ["response-1", "response-2"]}),
        ]
    )
    whole_column = v1_row(
        ranking={
            "user_id": ["u-ann", "u-bob"],
            "value": [
                {"rank": [2, 1], "value": ["response-1", "response-2"]},
                {"rank": [1], "value": ["response-3"]},
            ],
            "status": ["submitted", "submitted"],
        }
    )
    for record in exported(tmp_path / "argilla.jsonl", [per_answer, whole_column]):
        [comparison] = imported(ARGILLA, record)
        assert (comparison.response_a, comparison.response_b) == (
            RESPONSES["response-1"],
            RESPONSES["response-2"],
        )
    assert [vote.choice for vote in imported(ARGILLA, per_answer)[0].votes] == ["b", "a"]
    assert imported(ARGILLA, whole_column)[0].votes == [Vote("u-ann", "b")]  # u-bob ranked one response only


def test_argilla_v1_label_question(tmp_path: Path) -> None:
    row = v1_row(
        preference=[
            v1_answer("u-ann", "response-2"),
            v1_answer("u-bob", "tie"),
            v1_answer("u-cat", "response-1", "discarded"),
        ]
    )
    del row["response-3"]
    [record] = exported(tmp_path / "argilla.jsonl", [row])
    [comparison] = imported(ARGILLA, record)
    assert (comparison.response_a, comparison.response_b) == (
        RESPONSES["response-1"],
        RESPONSES["response-2"],
    )
    assert comparison.votes == [Vote("u-ann", "b"), Vote("u-bob", "tie")]


def test_argilla_ranking_values_that_are_not_field_names(tmp_path: Path) -> None:
    """A ranking question's values need not be the field names ('reply-2' ranks field 'response-2')."""
    row = v1_row(ranking=[v1_answer("u-ann", v1_ranking("reply-2", "reply-1"))])
    [record] = exported(tmp_path / "argilla.jsonl", [row])
    [comparison] = imported(ARGILLA, record)
    assert (comparison.response_b, comparison.votes) == (RESPONSES["response-2"], [Vote("u-ann", "b")])


USER_A, USER_B, USER_C = (
    "0b7b5a2e-6c1f-4d1e-9a53-1d2c3b4a5f60",
    "5d1f4a3c-2b6e-4f7a-8c9d-0e1f2a3b4c5d",
    "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4",
)


def v2_record(responses: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`Record.to_dict()` of Argilla 2.x."""
    return {
        "id": "rec-3",
        "fields": fields,
        "metadata": {"source": "arena"},
        "suggestions": {"preference": {"value": "response_a", "score": 0.8, "agent": "judge"}},
        "responses": responses,
        "vectors": {},
        "_server_id": "4c1e7f00-9a0b-4c3d-8e2f-6a5b4c3d2e1f",
    }


def test_argilla_v2_record_label_with_chat_prompt(tmp_path: Path) -> None:
    record = v2_record(
        {
            "preference": [
                {"value": "response_b", "user_id": USER_A, "status": "submitted"},
                {"value": "response_a", "user_id": USER_B},  # `to_dict` of older 2.x writes no status
                {"value": "response_a", "user_id": USER_C, "status": "draft"},
            ]
        },
        chat=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, *USER_PROMPT],
        response_a="apple pear",
        response_b="apple hammer",
    )
    [record] = exported(tmp_path / "records.jsonl", [record])
    [comparison] = imported(ARGILLA, record)
    assert comparison.prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        *USER_PROMPT,
    ]
    assert comparison.votes == [Vote(USER_A, "b"), Vote(USER_B, "a")]


def test_argilla_v2_record_ranking_is_ordered_names(tmp_path: Path) -> None:
    ranking = [
        {"value": ["response-3", "response-1", "response-2"], "user_id": USER_A, "status": "submitted"}
    ]
    [record] = exported(
        tmp_path / "records.jsonl", [v2_record({"ranking": ranking}, prompt=HAIKU, **RESPONSES)]
    )
    assert [c.votes for c in imported(ARGILLA, record)] == [
        [Vote(USER_A, "a")],
        [Vote(USER_A, "b")],
        [Vote(USER_A, "b")],
    ]


def flat_row(
    answers: list[Any] | None, users: list[Any] | None, statuses: list[Any] | None
) -> dict[str, Any]:
    """A row of Argilla 2.x `to_datasets()` / `to_hub`: fields and metadata flattened to columns."""
    return {
        "id": "rec-9",
        "_server_id": "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d",
        "prompt": PROMPT,
        "response-1": "apple pear",
        "response-2": "apple hammer",
        "source": "ultrafeedback",
        "preference.responses": answers,
        "preference.responses.users": users,
        "preference.responses.status": statuses,
        "preference.suggestion": "response-2",
        "preference.suggestion.score": 0.7,
        "preference.suggestion.agent": "judge",
        "comment.responses": ["looks fine"] if answers else None,
        "comment.responses.users": [USER_A] if answers else None,
        "comment.responses.status": ["submitted"] if answers else None,
    }


def test_argilla_v2_flattened_columns(tmp_path: Path) -> None:
    row = flat_row(
        ["response-1", "tie", "response-2"], [USER_A, USER_B, USER_C], ["submitted", "submitted", "discarded"]
    )
    [record] = exported(tmp_path / "hub.jsonl", [row])
    assert imported(ARGILLA, record) == [
        Comparison(
            USER_PROMPT, "apple pear", "apple hammer", [Vote(USER_A, "a"), Vote(USER_B, "tie")], SOURCE
        )
    ]


def test_argilla_question_option_picks_among_candidates(tmp_path: Path) -> None:
    row = v1_row(
        helpfulness=[v1_answer("u-ann", v1_ranking("response-1", "response-2", "response-3"))],
        harmlessness=[v1_answer("u-ann", v1_ranking("response-3", "response-2", "response-1"))],
    )
    [record] = exported(tmp_path / "argilla.jsonl", [row])
    with pytest.raises(
        BadRow, match=r"several questions could hold the preference \(helpfulness, harmlessness\)"
    ):
        imported(ARGILLA, record)
    chosen = imported(ARGILLA, record, ImportOptions(argilla_question="harmlessness"))
    assert [vote.choice for c in chosen for vote in c.votes] == ["b", "b", "b"]
    with pytest.raises(
        BadRow, match=r"no question 'safety' in the record \(questions: helpfulness, harmlessness\)"
    ):
        imported(ARGILLA, record, ImportOptions(argilla_question="safety"))


@pytest.mark.parametrize(
    ("record", "options", "reason"),
    [
        (
            v1_row(
                ranking=[
                    v1_answer("u-a", v1_ranking("response-1", "response-2"), "discarded"),
                    v1_answer("u-b", v1_ranking("response-1", "response-2"), "draft"),
                    v1_answer("u-c", v1_ranking("response-2", "response-1"), "draft"),
                ]
            ),
            None,
            r"^no submitted judgement: answers to 'ranking': 1 discarded, 2 draft$",
        ),
        (v1_row(ranking=[]), None, r"^no submitted judgement: no responses$"),
        (flat_row(None, None, None), None, r"^no submitted judgement: no responses$"),
        (
            v1_row(ranking=[v1_answer("u-a", v1_ranking("response-1", "response-9"))]),
            ImportOptions(argilla_question="ranking"),
            r"ranking value 'response-9' of 'ranking' names no field",
        ),
        (
            v1_row(quality=[v1_answer("u-a", 4)]),
            ImportOptions(argilla_question="quality"),
            r"question 'quality' holds 4: not a ranking, nor a label",
        ),
        (v1_row(quality=[v1_answer("u-a", 4)]), None, r"no ranking or label question names the responses"),
        (
            v1_row(preference=[v1_answer("u-a", "response-1")]),
            None,
            r"label question 'preference' needs exactly two response fields, found response-1, response-2, response-3",
        ),
        (
            {**v1_row(preference=[v1_answer("u-a", "maybe")]), "response-3": None},
            ImportOptions(argilla_question="preference"),
            r"label 'maybe' of 'preference' names no response \(responses: response-1, response-2\)",
        ),
        (
            flat_row(["response-1", "tie"], [USER_A], ["submitted", "submitted"]),
            None,
            r"'preference.responses' holds 2 answers but 1 users and 2 statuses",
        ),
        (
            v1_row(ranking=[v1_answer("u-a", v1_ranking("response-1"), "pending")]),
            None,
            r"unknown response status 'pending'",
        ),
        (
            v1_row(ranking=[v1_answer("u-a", v1_ranking("response-1", "response-2"))])
            | {"response-2": ["x"]},
            None,
            r"response field 'response-2' is not text",
        ),
    ],
    ids=[
        "only-draft-or-discarded",
        "no-answers",
        "flat-unannotated",
        "ranking-names-no-field",
        "rating-question",
        "no-preference-question",
        "label-over-three",
        "unknown-label",
        "flat-lengths",
        "unknown-status",
        "response-not-text",
    ],
)
def test_argilla_bad_records_name_the_reason(
    tmp_path: Path, record: dict[str, Any], options: ImportOptions | None, reason: str
) -> None:
    [record] = exported(tmp_path / "argilla.jsonl", [record])
    with pytest.raises(BadRow, match=reason):
        imported(ARGILLA, record, options)


# --- sniffing: each importer claims its own shapes only -------------------------------------------------

TRL_ROW = {"prompt": PROMPT, "chosen": "apple pear", "rejected": "apple hammer"}
LS_TASKS = {
    "labelstudio-task": task(PAIR_DATA, [annotation(1, 1, [pairwise("left")])]),
    "labelstudio-predictions-only": {
        "id": 2,
        "data": PAIR_DATA,
        "predictions": [{"result": [pairwise("left")]}],
    },
}
ARGILLA_RECORDS = {
    "argilla-v1": v1_row(ranking=[v1_answer("u-a", v1_ranking("response-1", "response-2"))]),
    "argilla-v1-columnwise": {
        "prompt": PROMPT,
        "ranking": {
            "user_id": ["u-a"],
            "value": [{"rank": [1], "value": ["response-1"]}],
            "status": ["submitted"],
        },
    },
    "argilla-v1-unannotated": v1_row(ranking=[]),
    "argilla-v2-record": v2_record({}, prompt=PROMPT),
    "argilla-v2-flat": flat_row(["tie"], [USER_A], ["submitted"]),
}


@pytest.mark.parametrize("name", [*LS_TASKS, *ARGILLA_RECORDS, "trl"])
def test_sniff_claims_only_its_own_shapes(name: str) -> None:
    record = {**LS_TASKS, **ARGILLA_RECORDS, "trl": TRL_ROW}[name]
    assert LABELSTUDIO.sniff(record) == (name in LS_TASKS)
    assert ARGILLA.sniff(record) == (name in ARGILLA_RECORDS)
