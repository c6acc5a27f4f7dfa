"""Importers of public preference formats: exact comparisons from realistic rows, bad rows with reasons,
and a sniff matrix in which every format's first row is claimed by exactly one importer."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rlhf.data.importers import BadRow, ImportOptions, arena, hh, mapped, nectar, openai, trl, ultrafeedback
from rlhf.data.records import Comparison, Source, Vote
from rlhf.errors import DataError

SRC = Source("f.jsonl", "line 3")
MINE = [hh.IMPORTER, ultrafeedback.IMPORTER, nectar.IMPORTER, arena.IMPORTER, openai.IMPORTER, trl.IMPORTER]


def run(importer: Any, row: Any, **options: Any) -> list[Comparison]:
    return list(importer.comparisons(row, SRC, ImportOptions(**options)))


def bad(importer: Any, row: Any, reason: str, **options: Any) -> None:
    with pytest.raises(BadRow, match=reason):
        run(importer, row, **options)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def preferred(prompt: list[dict[str, str]], a: str, b: str, margin: float | None = None) -> Comparison:
    return Comparison(prompt, a, b, [Vote(None, "a")], SRC, margin=margin)


# --- HH-RLHF -------------------------------------------------------------------------------------------

HH_PREFIX = (
    "\n\nHuman: What's a good houseplant?\n\nAssistant: A pothos is hardy.\n\nHuman: How often do I water it?"
)
HH_ROW = {
    "chosen": HH_PREFIX + "\n\nAssistant: When the top inch of soil is dry, about weekly.",
    "rejected": HH_PREFIX + "\n\nAssistant: Every hour.",
}


def test_hh_multi_turn_prompt_and_last_turns() -> None:
    assert run(hh.IMPORTER, HH_ROW) == [
        preferred(
            [user("What's a good houseplant?"), bot("A pothos is hardy."), user("How often do I water it?")],
            "When the top inch of soil is dry, about weekly.",
            "Every hour.",
        )
    ]


def test_hh_identical_pair_is_left_to_the_shared_checks() -> None:
    [comparison] = run(hh.IMPORTER, {"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"]})
    assert comparison.response_a == comparison.response_b


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ("Human: hi\n\nAssistant: hello", "Human: hi\n\nAssistant: yo", "chosen does not start with"),
        ("\n\nAssistant: hi\n\nHuman: x\n\nAssistant: a", HH_ROW["rejected"], "chosen does not start with"),
        ("Preamble\n\nHuman: hi\n\nAssistant: a", HH_ROW["rejected"], "chosen does not start with"),
        (HH_ROW["chosen"], HH_PREFIX, "rejected does not end with an Assistant turn"),
        (HH_ROW["chosen"], HH_PREFIX + "\n\nAssistant: ", "rejected has an empty last Assistant turn"),
        (HH_ROW["chosen"], HH_PREFIX + "\n\nAssistant:", "rejected has an empty last Assistant turn"),
        (HH_ROW["chosen"], "\n\nHuman: Other question\n\nAssistant: x", "differ before their last reply"),
        (HH_ROW["chosen"], "\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "two Human turns in a row"),
        (HH_ROW["chosen"], "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "two Assistant turns in a row"),
        (HH_ROW["chosen"], 17, "rejected should be text, got int"),
        ("", HH_ROW["rejected"], "chosen is empty"),
    ],
)
def test_hh_odd_transcripts_are_bad_rows(chosen: Any, rejected: Any, reason: str) -> None:
    bad(hh.IMPORTER, {"chosen": chosen, "rejected": rejected}, reason)


def test_hh_missing_key_and_non_object_are_bad_rows() -> None:
    bad(hh.IMPORTER, {"chosen": HH_ROW["chosen"]}, "missing 'rejected'")
    bad(hh.IMPORTER, ["chosen", "rejected"], "record should be an object, got list")


# --- UltraFeedback (raw) --------------------------------------------------------------------------------


def uf_completion(model: str, response: str, overall: Any, **ratings: str) -> dict[str, Any]:
    aspects = {
        "helpfulness": "3",
        "honesty": "3",
        "instruction_following": "3",
        "truthfulness": "3",
    } | ratings
    return {
        "model": model,
        "response": response,
        "overall_score": overall,
        "fine-grained_score": 3.0,
        "critique": "...",
        "annotations": {name: {"Rating": rating, "Rationale": "..."} for name, rating in aspects.items()},
    }


UF_ROW = {
    "source": "evol_instruct",
    "instruction": "Name a prime number.",
    "models": ["m1", "m2", "m3", "m4"],
    "completions": [
        uf_completion("m1", "Seven.", 8.0, helpfulness="5"),
        uf_completion("m2", "Nine.", 3.5, helpfulness="2"),
        uf_completion("m3", "Two.", 7.5, helpfulness="N/A", honesty="5"),
        uf_completion("m4", "Four.", 2.0, helpfulness="1", truthfulness="N/A"),
    ],
    "correct_answers": ["None"],
    "incorrect_answers": ["None"],
}
UF_PROMPT = [user("Name a prime number.")]


def test_ultrafeedback_best_vs_worst_on_overall_score() -> None:
    assert run(ultrafeedback.IMPORTER, UF_ROW, rating_pairs="best-vs-worst") == [
        preferred(UF_PROMPT, "Seven.", "Four.", margin=6.0)
    ]


def test_ultrafeedback_aspect_rating_skips_na() -> None:
    # helpfulness: 5, 2, N/A (skipped), 1
    pairs = run(ultrafeedback.IMPORTER, UF_ROW, rating_key="helpfulness", rating_pairs="all-above-margin")
    assert [(c.response_a, c.response_b, c.margin) for c in pairs] == [
        ("Seven.", "Nine.", 3.0),
        ("Seven.", "Four.", 4.0),
        ("Nine.", "Four.", 1.0),
    ]


def test_ultrafeedback_mean_leaves_na_aspects_out() -> None:
    # means: Seven 14/4, Nine 11/4, Two 11/3 (helpfulness N/A left out), Four 7/3 (truthfulness N/A left out)
    [comparison] = run(ultrafeedback.IMPORTER, UF_ROW, rating_key="mean", rating_pairs="best-vs-worst")
    assert (comparison.response_a, comparison.response_b) == ("Two.", "Four.")
    assert comparison.margin == pytest.approx(11 / 3 - 7 / 3)


def test_ultrafeedback_all_above_margin_respects_the_margin() -> None:
    pairs = run(ultrafeedback.IMPORTER, UF_ROW, rating_pairs="all-above-margin", rating_margin=4.5)
    assert [(c.response_a, c.response_b, c.margin) for c in pairs] == [
        ("Seven.", "Nine.", 4.5),
        ("Seven.", "Four.", 6.0),
        ("Two.", "Four.", 5.5),
    ]


def test_ultrafeedback_best_vs_random_is_seeded_and_strictly_worse() -> None:
    def pick(seed: int, row: str) -> str:
        [comparison] = ultrafeedback.IMPORTER.comparisons(
            UF_ROW, Source("f.jsonl", row), ImportOptions(seed=seed)
        )
        assert comparison.response_a == "Seven."
        return comparison.response_b

    picks = [pick(0, f"line {n}") for n in range(30)]
    assert picks == [pick(0, f"line {n}") for n in range(30)]
    assert set(picks) == {"Nine.", "Two.", "Four."}
    assert [pick(1, f"line {n}") for n in range(30)] != picks


def test_ultrafeedback_prompt_key_variant() -> None:
    row = {k: v for k, v in UF_ROW.items() if k != "instruction"} | {"prompt": "Name a prime number."}
    assert run(ultrafeedback.IMPORTER, row, rating_pairs="best-vs-worst")[0].prompt == UF_PROMPT


def uf_with(**changes: Any) -> dict[str, Any]:
    row = copy.deepcopy(UF_ROW)
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("row", "options", "reason"),
    [
        (
            uf_with(completions=[uf_completion(m, m, 5.0) for m in "abcd"]),
            {},
            "no response rated above another",
        ),
        (
            uf_with(completions=[uf_completion("a", "A", "N/A"), uf_completion("b", "B", 4.0)]),
            {},
            "fewer than two completions with a usable 'overall' rating",
        ),
        (uf_with(completions={"a": 1}), {}, "completions should be a list, got dict"),
        (uf_with(completions=["Seven.", "Nine."]), {}, "completion 0 should be an object, got str"),
        (
            uf_with(completions=[uf_completion("a", None, 5.0), uf_completion("b", "B", 4.0)]),
            {},
            "completion 0 response should be text, got NoneType",
        ),
        (uf_with(instruction=""), {}, "instruction is empty"),
        (
            uf_with(instruction=None),
            {},
            "missing 'instruction'",
        ),
        (
            uf_with(),
            {"rating_pairs": "all-above-margin", "rating_margin": 7.0},
            "no two responses differ by at least 7.0",
        ),
    ],
)
def test_ultrafeedback_bad_rows(row: Any, options: dict[str, Any], reason: str) -> None:
    bad(ultrafeedback.IMPORTER, row, reason, **options)


def test_ultrafeedback_unknown_rating_key_or_pairs_is_a_config_error() -> None:
    with pytest.raises(DataError, match="rating_key 'helpfullness'"):
        run(ultrafeedback.IMPORTER, UF_ROW, rating_key="helpfullness")
    with pytest.raises(DataError, match="rating_pairs 'best'"):
        run(ultrafeedback.IMPORTER, UF_ROW, rating_pairs="best")


# --- Nectar ----------------------------------------------------------------------------------------------

NECTAR_ROW = {
    "prompt": "\n\nHuman: Tell me a joke.\n\nAssistant: Why did the hen cross?\n\nHuman: Another one.\n\nAssistant:",
    "answers": [
        {"answer": f"joke {rank}", "model": f"model-{rank}", "rank": float(rank)}
        for rank in (3, 1, 7, 2, 5, 4, 6)
    ],
    "turns": 2,
    "num_responses": 7,
    "source": ["anthropic-hh"],
    "good_natured": True,
}
NECTAR_PROMPT = [user("Tell me a joke."), bot("Why did the hen cross?"), user("Another one.")]


def test_nectar_best_vs_worst_in_rank_units() -> None:
    assert run(nectar.IMPORTER, NECTAR_ROW, rating_pairs="best-vs-worst") == [
        preferred(NECTAR_PROMPT, "joke 1", "joke 7", margin=6.0)
    ]


def test_nectar_all_pairs_above_a_rank_margin() -> None:
    every = run(nectar.IMPORTER, NECTAR_ROW, rating_pairs="all-above-margin", rating_margin=1)
    assert len(every) == 21
    ranks = [(int(c.response_a[-1]), int(c.response_b[-1]), c.margin) for c in every]
    assert all(a < b and margin == b - a for a, b, margin in ranks)
    wide = run(nectar.IMPORTER, NECTAR_ROW, rating_pairs="all-above-margin", rating_margin=3)
    assert len(wide) == 4 + 3 + 2 + 1


def test_nectar_best_vs_random_keeps_the_best() -> None:
    [comparison] = run(nectar.IMPORTER, NECTAR_ROW)
    assert comparison.response_a == "joke 1" and comparison.response_b != "joke 1"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"prompt": "\n\nHuman: Tell me a joke.\n\nAssistant: Sure"}, "does not end with an open"),
        ({"prompt": "\n\nHuman: Tell me a joke."}, "does not end with an open"),
        ({"prompt": "Tell me a joke."}, "prompt does not start with"),
        (
            {"answers": [{"answer": "x", "rank": "first"}, {"answer": "y", "rank": 2}]},
            "answer 0 rank is not a number",
        ),
        (
            {"answers": [{"answer": "x", "rank": 1}, {"rank": 2}]},
            "answer 1 text should be text, got NoneType",
        ),
        (
            {"answers": [{"answer": "x", "rank": 1}, {"answer": "y", "rank": 1}]},
            "no response rated above another",
        ),
        ({"answers": "joke"}, "answers should be a list, got str"),
    ],
)
def test_nectar_bad_rows(changes: dict[str, Any], reason: str) -> None:
    bad(nectar.IMPORTER, NECTAR_ROW | changes, reason)


# --- Chatbot Arena ---------------------------------------------------------------------------------------


def battle(winner: str, **changes: Any) -> dict[str, Any]:
    row = {
        "question_id": "58210e39b3fd4441a2bd4a518bb44c2d",
        "model_a": "chatglm-6b",
        "model_b": "koala-13b",
        "winner": winner,
        "judge": "arena_user_973",
        "conversation_a": [user("What is Python?"), bot("A snake.")],
        "conversation_b": [user("What is Python?"), bot("A programming language.")],
        "turn": 1,
        "anony": True,
        "language": "English",
        "tstamp": 1682351591.1322,
    }
    return row | changes


@pytest.mark.parametrize(
    ("winner", "choice", "meta"),
    [
        ("model_a", "a", {}),
        ("model_b", "b", {}),
        ("tie", "tie", {}),
        ("tie (bothbad)", "tie", {"both_bad": True}),
    ],
)
def test_arena_votes_by_winner_with_the_judge(winner: str, choice: str, meta: dict[str, Any]) -> None:
    assert run(arena.IMPORTER, battle(winner)) == [
        Comparison(
            [user("What is Python?")],
            "A snake.",
            "A programming language.",
            [Vote("arena_user_973", choice)],
            SRC,
            meta=meta,
        )
    ]


def test_arena_mt_bench_rows_are_cut_at_the_judged_turn() -> None:
    two_turns = {
        "conversation_a": [user("Write a haiku."), bot("A's haiku"), user("Now autumn."), bot("A's autumn")],
        "conversation_b": [user("Write a haiku."), bot("B's haiku"), user("Now autumn."), bot("B's autumn")],
        "judge": "author_2",
    }
    [first] = run(arena.IMPORTER, battle("model_b", turn=1, **two_turns))
    assert (first.prompt, first.response_a, first.response_b) == (
        [user("Write a haiku.")],
        "A's haiku",
        "B's haiku",
    )
    assert first.votes == [Vote("author_2", "b")]
    bad(
        arena.IMPORTER,
        battle("model_b", turn=2, **two_turns),
        "conversation_a and conversation_b differ before",
    )
    bad(
        arena.IMPORTER, battle("model_b", turn=3, **two_turns), "turn 3 was judged but the conversation has 2"
    )


def test_arena_without_judge_or_turn() -> None:
    row = {k: v for k, v in battle("model_a").items() if k not in ("judge", "turn")}
    assert run(arena.IMPORTER, row)[0].votes == [Vote(None, "a")]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (
            {"model_a": "a", "model_b": "b", "winner": "model_a", "judge": "x", "turn": 1},
            "battle has no conversation text",
        ),
        (battle("model_a", conversation_a=[], conversation_b=[]), "battle has no conversation text"),
        (battle("model_c"), "unknown winner 'model_c'"),
        (battle(["model_a"]), "unknown winner"),
        (battle("tie", conversation_b=[user("Something else?"), bot("x")]), "differ before their last reply"),
        (
            battle("tie", conversation_a=[user("What is Python?")], turn=None),
            "does not end with an assistant",
        ),
        (
            battle("tie", conversation_a="What is Python?"),
            "conversation_a is not a non-empty list of messages",
        ),
        (battle("tie", conversation_a=[{"content": "hi"}, bot("x")]), "conversation_a message 0 has no role"),
        (battle("tie", turn="1"), "turn is not a positive integer"),
    ],
)
def test_arena_bad_rows(row: dict[str, Any], reason: str) -> None:
    bad(arena.IMPORTER, row, reason)


# --- OpenAI preference fine-tuning -----------------------------------------------------------------------


def openai_row(**changes: Any) -> dict[str, Any]:
    row = {
        "input": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "How cold is"}, {"type": "text", "text": "SF?"}],
                },
            ],
            "tools": [],
            "parallel_tool_calls": True,
        },
        "preferred_output": [{"role": "assistant", "content": "About 15 °C."}],
        "non_preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "Freezing."}]}],
    }
    return row | changes


def test_openai_messages_and_text_parts() -> None:
    assert run(openai.IMPORTER, openai_row()) == [
        preferred(
            [{"role": "system", "content": "Be brief."}, user("How cold is\nSF?")],
            "About 15 °C.",
            "Freezing.",
        )
    ]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"input": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}},
            r"input.messages message 0 has a non-text part \(image_url\)",
        ),
        ({"preferred_output": [bot("a"), bot("b")]}, "preferred_output holds 2 messages"),
        ({"preferred_output": []}, "preferred_output holds 0 messages"),
        (
            {"non_preferred_output": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},
            "non_preferred_output message 0 has no text content",
        ),
        ({"preferred_output": [user("hi")]}, "preferred_output does not end with an assistant message"),
        ({"input": {"tools": []}}, "missing 'messages'"),
        ({"input": "How cold is SF?"}, "input should be an object, got str"),
        ({"non_preferred_output": None}, "missing 'non_preferred_output'"),
    ],
)
def test_openai_bad_rows(changes: dict[str, Any], reason: str) -> None:
    bad(openai.IMPORTER, openai_row(**changes), reason)


# --- TRL standard forms ----------------------------------------------------------------------------------

SKY = [user("What color is the sky?")]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            preferred([user("The sky is")], " blue.", " green."),
        ),
        (
            {"prompt": SKY, "chosen": [bot("It is blue.")], "rejected": [bot("It is green.")], "margin": 2},
            preferred(SKY, "It is blue.", "It is green.", margin=2.0),
        ),
        (
            {"chosen": "The sky is blue.", "rejected": "The sky is bright."},
            preferred([user("The sky is")], "blue.", "bright."),
        ),
        (
            {"chosen": "Q: sky?\nA: blue", "rejected": "Q: sky?\nA: green"},
            preferred([user("Q: sky?\nA:")], "blue", "green"),
        ),
        (
            {"chosen": [*SKY, bot("It is blue.")], "rejected": [*SKY, bot("It is green.")]},
            preferred(SKY, "It is blue.", "It is green."),
        ),
        (  # UltraFeedback binarized: prompt text, whole conversations, scores
            {
                "prompt": "What color is the sky?",
                "prompt_id": "abc",
                "chosen": [*SKY, bot("It is blue.")],
                "rejected": [*SKY, bot("It is green.")],
                "messages": [*SKY, bot("It is blue.")],
                "score_chosen": 8.5,
                "score_rejected": 5.0,
            },
            preferred(SKY, "It is blue.", "It is green.", margin=3.5),
        ),
    ],
    ids=[
        "explicit-text",
        "explicit-messages",
        "implicit-text",
        "implicit-text-newline",
        "implicit-messages",
        "uf-bin",
    ],
)
def test_trl_forms(row: dict[str, Any], expected: Comparison) -> None:
    assert run(trl.IMPORTER, row) == [expected]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"chosen": "Blue.", "rejected": "Green."}, "share no prompt"),
        ({"chosen": "Skyblue", "rejected": "Skygreen"}, "share no prompt"),
        ({"chosen": " blue", "rejected": " green"}, "share no prompt"),
        ({"chosen": [*SKY, bot("x")], "rejected": "y"}, "both be text or both be messages"),
        ({"chosen": [bot("x")], "rejected": [bot("y")]}, "no prompt: chosen holds only the reply"),
        (
            {"chosen": [*SKY, bot("x")], "rejected": [user("Other?"), bot("y")]},
            "chosen and rejected differ before their last reply",
        ),
        (
            {"prompt": SKY, "chosen": [user("x")], "rejected": [bot("y")]},
            "chosen does not end with an assistant",
        ),
        ({"prompt": "", "chosen": "x", "rejected": "y"}, "prompt is empty"),
        ({"prompt": 5, "chosen": "x", "rejected": "y"}, "prompt is not a non-empty list of messages"),
        ({"prompt": "p", "chosen": 1, "rejected": "y"}, "chosen is not a non-empty list of messages"),
        (
            {"prompt": "p", "chosen": "x", "rejected": "y", "score_chosen": "N/A", "score_rejected": 1},
            "score_chosen",
        ),
        ({"prompt": "p", "chosen": "x", "rejected": "y", "margin": True}, "margin is not a number"),
        ({"prompt": "p", "chosen": "x"}, "missing 'rejected'"),
    ],
)
def test_trl_bad_rows(row: dict[str, Any], reason: str) -> None:
    bad(trl.IMPORTER, row, reason)


# --- mapped columns --------------------------------------------------------------------------------------

COLUMNS = {
    "prompt": "question",
    "chosen": "good",
    "rejected": "bad",
    "margin": "gap",
    "annotator": "rater",
    "tie": "same",
}


def csv_row(**changes: str) -> dict[str, str]:
    return {
        "id": "7",
        "question": "2+2?",
        "good": "4",
        "bad": "5",
        "gap": "1.5",
        "rater": "alice",
        "same": "no",
    } | changes


def test_mapped_csv_rows() -> None:
    assert run(mapped.IMPORTER, csv_row(), column_map=COLUMNS) == [
        Comparison([user("2+2?")], "4", "5", [Vote("alice", "a")], SRC, margin=1.5)
    ]
    [tie] = run(mapped.IMPORTER, csv_row(same="YES", gap="", rater=""), column_map=COLUMNS)
    assert (tie.votes, tie.margin) == ([Vote(None, "tie")], None)


def test_mapped_json_rows_with_messages_and_minimal_map() -> None:
    row = {"q": [user("2+2?")], "c": [bot("4")], "r": [bot("5")]}
    minimal = {"prompt": "q", "chosen": "c", "rejected": "r"}
    assert run(mapped.IMPORTER, row, column_map=minimal) == [preferred([user("2+2?")], "4", "5")]


def test_mapped_incomplete_or_unknown_map_is_a_config_error() -> None:
    with pytest.raises(DataError, match="no column for chosen, rejected"):
        run(mapped.IMPORTER, csv_row(), column_map={"prompt": "question"})
    with pytest.raises(DataError, match="unknown fields score"):
        run(mapped.IMPORTER, csv_row(), column_map=COLUMNS | {"score": "gap"})


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({k: v for k, v in csv_row().items() if k != "bad"}, r"missing column 'bad' \(rejected\)"),
        (csv_row(gap="wide"), "margin is not a number: 'wide'"),
        (csv_row(gap="nan"), "margin is not a number"),
        (csv_row(same="maybe"), "tie is not true/false/1/0/yes/no"),
        (csv_row(question=""), "prompt is empty"),
        ("2+2?,4,5", "record should be an object, got str"),
    ],
)
def test_mapped_bad_rows(row: Any, reason: str) -> None:
    bad(mapped.IMPORTER, row, reason, column_map=COLUMNS)


# --- sniffing --------------------------------------------------------------------------------------------

SAMPLES: dict[str, Any] = {
    "hh": HH_ROW,
    "ultrafeedback": UF_ROW,
    "nectar": NECTAR_ROW,
    "arena": battle("tie (bothbad)"),
    "openai": openai_row(),
    "trl": {"prompt": SKY, "chosen": [bot("It is blue.")], "rejected": [bot("It is green.")]},
}
MORE_TRL = [
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "What color?", "chosen": [*SKY, bot("b")], "rejected": [*SKY, bot("g")], "score_chosen": 8.0},
]
FOREIGN = [
    {  # Label Studio task
        "id": 41,
        "data": {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        "annotations": [
            {"id": 1, "completed_by": 3, "result": [{"type": "pairwise", "value": {"selected": "left"}}]}
        ],
        "predictions": [],
    },
    {"id": 2, "data": {"instruction": "x"}, "completions": [{"result": []}]},  # older Label Studio
    {  # Argilla v1 export with DPO-like field names
        "prompt": "2+2?",
        "chosen": "4",
        "rejected": "5",
        "preference": [{"user_id": "u1", "value": "chosen", "status": "submitted"}],
    },
    {  # the same after an Arrow round trip: question columns become column-wise
        "prompt": "2+2?",
        "chosen": "4",
        "rejected": "5",
        "preference": {"user_id": ["u1"], "value": ["chosen"], "status": ["submitted"]},
    },
    {
        "fields": {"prompt": "2+2?"},
        "metadata": {},
        "suggestions": {},
        "responses": {"q": [{"value": 1, "user_id": "u"}]},
    },
    {
        "prompt": "2+2?",
        "chosen": "4",
        "rejected": "5",
        "rank.responses": [[1, 2]],
        "rank.responses.users": [["u"]],
    },
]


@pytest.mark.parametrize("name", SAMPLES)
def test_each_sample_is_claimed_by_its_importer_only(name: str) -> None:
    assert [importer.name for importer in MINE if importer.sniff(SAMPLES[name])] == [name]


@pytest.mark.parametrize("record", MORE_TRL)
def test_other_trl_forms_sniff_as_trl(record: dict[str, Any]) -> None:
    assert [importer.name for importer in MINE if importer.sniff(record)] == ["trl"]


@pytest.mark.parametrize("record", [*FOREIGN, [], None, "text", {}, {"chosen": 1, "rejected": 2}])
def test_annotation_tool_exports_and_odd_records_are_not_claimed(record: Any) -> None:
    assert not any(importer.sniff(record) for importer in [*MINE, mapped.IMPORTER])


def test_mapped_never_sniffs() -> None:
    assert not any(mapped.IMPORTER.sniff(sample) for sample in [*SAMPLES.values(), csv_row()])


# --- robustness ------------------------------------------------------------------------------------------

ODD_VALUES = [None, 0, 1.5, float("nan"), True, "", "x", [], [None], [{}], {}, {"role": 1}]


def odd_variants(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record with one value, or one element or field of a value, replaced by something odd."""
    variants = []
    for key, value in record.items():
        for odd in ODD_VALUES:
            variants.append(record | {key: odd})
            if isinstance(value, list) and value:
                variants.append(record | {key: [odd, *value[1:]]})
            if isinstance(value, dict):
                variants += [record | {key: value | {inner: odd}} for inner in value]
    return variants


@pytest.mark.parametrize("name", SAMPLES)
def test_odd_values_give_bad_rows_never_crashes(name: str) -> None:
    importer = next(importer for importer in MINE if importer.name == name)
    for variant in odd_variants(SAMPLES[name]):
        try:
            comparisons = run(importer, variant)
        except BadRow as error:
            assert str(error)
        else:
            assert all(isinstance(c.response_a, str) and isinstance(c.response_b, str) for c in comparisons)
