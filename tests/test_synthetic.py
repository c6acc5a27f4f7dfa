"""The synthetic task: gold reward, prompt split, determinism, Label Studio export, atomic writes."""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from rlhf.data import synthetic
from rlhf.data.synthetic import (
    CATEGORIES,
    NUMBER_WORDS,
    TEMPLATES,
    Instruction,
    SynthConfig,
    all_prompts,
    gold_reward,
    heldout_prompts,
    parse_prompt,
    sample_response,
    task_corpus,
    write_synthetic_task,
)
from rlhf.errors import ConfigError, DataError

SMALL = SynthConfig(num_sft_train=300, num_sft_eval=20, num_preference_tasks=150)


@pytest.fixture(scope="module")
def default_task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_task(tmp_path_factory.mktemp("synthetic") / "task")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _user_prompts(records: list[dict]) -> set[str]:
    return {record["prompt"][0]["content"] for record in records}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("apple banana cherry", 1.0),  # exactly three distinct fruits
        ("cherry apple banana", 1.0),  # order does not matter
        ("apple banana hammer", 2 / 3),  # one wrong-category word
        ("apple banana", 2 / 3),  # one missing
        ("apple apple apple", 1 / 3),  # repeats count once
        ("apple apple banana", 2 / 3),
        ("apple banana cherry grape", 3 / 4),  # too long: capped hits over length
        ("apple banana cherry grape mango pear", 3 / 6),
        ("  apple   banana  cherry ", 1.0),  # whitespace is not a word
        ("", 0.0),
        ("   ", 0.0),
        ("hammer saw drill", 0.0),  # wrong category entirely
    ],
)
def test_gold_reward_hand_computed(response: str, expected: float) -> None:
    assert gold_reward("name three fruits", response) == pytest.approx(expected)


def test_gold_reward_depends_on_the_prompt() -> None:
    assert gold_reward("give me two tools", "hammer saw") == 1.0
    assert gold_reward("list six tools please", "hammer saw") == pytest.approx(2 / 6)
    assert gold_reward("tell me two cities", "hammer saw") == 0.0


def test_vocabulary_is_small_disjoint_and_lowercase() -> None:
    items = [word for words in CATEGORIES.values() for word in words]
    template_words = {word for template in TEMPLATES for word in template.split() if "{" not in word}
    assert len(CATEGORIES) == 6 and all(len(words) == 8 for words in CATEGORIES.values())
    assert len(set(items)) == len(items)
    assert not set(items) & (template_words | set(NUMBER_WORDS.values()) | set(CATEGORIES))
    corpus_words = {word for text in task_corpus() for word in text.split(" ")}
    assert all(word.isalpha() and word.islower() for word in corpus_words)
    assert set(items) | template_words | set(NUMBER_WORDS.values()) | set(CATEGORIES) == corpus_words
    assert len(corpus_words) <= 100


def test_parse_prompt_round_trips_every_prompt() -> None:
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == len(TEMPLATES) * len(CATEGORIES) * len(NUMBER_WORDS)
    assert prompts == all_prompts()
    for prompt in prompts:
        instruction = parse_prompt(prompt)
        rendered = {
            template.format(count=NUMBER_WORDS[instruction.count], category=instruction.category)
            for template in TEMPLATES
        }
        assert prompt in rendered
    assert parse_prompt("list  four metals please ") == Instruction(4, "metals")


@pytest.mark.parametrize(
    "prompt", ["name seven fruits", "name three vegetables", "hello", "", "name three\nfruits x"]
)
def test_parse_prompt_rejects_non_task_prompts(prompt: str) -> None:
    with pytest.raises(DataError) as caught:
        parse_prompt(prompt)
    message = str(caught.value)
    assert repr(prompt) in message and "\n" not in message


def test_heldout_split_is_stable_and_seeded() -> None:
    heldout = heldout_prompts(0, 0.2)
    assert heldout == heldout_prompts(0, 0.2)
    assert len(heldout) == round(0.2 * len(all_prompts()))
    assert heldout <= set(all_prompts())
    assert heldout != heldout_prompts(1, 0.2)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        heldout_prompts(0, 1.0)


def test_sample_response_has_no_repeats_and_the_asked_length() -> None:
    rng = random.Random(0)
    instruction = Instruction(6, "colors")
    responses = [sample_response(rng, instruction, 0.5, 0.6) for _ in range(500)]
    lengths = Counter(len(response.split()) for response in responses)
    assert all(len(set(response.split())) == len(response.split()) for response in responses)
    assert set(lengths) == {5, 6, 7}
    assert all(
        sample_response(rng, instruction, 1.0, 1.0).split()[0] in CATEGORIES["colors"] for _ in range(20)
    )
    assert gold_reward("name six colors", sample_response(rng, instruction, 1.0, 1.0)) == 1.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = write_synthetic_task(tmp_path / "a", SMALL)
    second = write_synthetic_task(tmp_path / "b", SMALL)
    other = write_synthetic_task(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 1}))
    assert set(first) == {"sft_train", "sft_eval", "eval_prompts", "preferences", "unpaired", "manifest"}
    for role in first:
        assert first[role].read_bytes() == second[role].read_bytes(), role
    for role in ("sft_train", "sft_eval", "preferences", "unpaired"):
        assert first[role].read_bytes() != other[role].read_bytes(), role


def test_rewriting_replaces_a_previous_task(tmp_path: Path) -> None:
    out = tmp_path / "task"
    write_synthetic_task(out, SMALL)
    paths = write_synthetic_task(out, SynthConfig(**{**SMALL.__dict__, "num_sft_train": 7}))
    assert len(_jsonl(paths["sft_train"])) == 7
    assert sorted(path.name for path in tmp_path.iterdir()) == ["task"]


def test_manifest_matches_the_files(default_task: dict[str, Path]) -> None:
    manifest = json.loads(default_task["manifest"].read_text())
    assert manifest["config"] == json.loads(json.dumps(SynthConfig().__dict__))
    for role, entry in manifest["files"].items():
        data = default_task[role].read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        records = json.loads(data) if role in ("preferences", "unpaired") else data.decode().splitlines()
        assert len(records) == entry["records"]


def test_heldout_prompts_never_leak(default_task: dict[str, Path]) -> None:
    heldout = heldout_prompts(0, 0.2)
    tasks = json.loads(default_task["preferences"].read_text())
    seen = (
        _user_prompts(_jsonl(default_task["sft_train"]))
        | _user_prompts(_jsonl(default_task["sft_eval"]))
        | {task["data"]["prompt"] for task in tasks}
    )
    assert not seen & heldout
    eval_prompts = _user_prompts(_jsonl(default_task["eval_prompts"]))
    assert eval_prompts == heldout


def test_sft_records_are_trl_conversational(default_task: dict[str, Path]) -> None:
    record = _jsonl(default_task["sft_train"])[0]
    assert set(record) == {"prompt", "completion"}
    assert record["prompt"][0]["role"] == "user" and record["completion"][0]["role"] == "assistant"


def test_demos_leave_room_for_preference_optimization(default_task: dict[str, Path]) -> None:
    demos = _jsonl(default_task["sft_train"])
    golds = [gold_reward(demo["prompt"][0]["content"], demo["completion"][0]["content"]) for demo in demos]
    assert 0.3 <= statistics.mean(golds) <= 0.6
    best = max(
        gold_reward(prompt, " ".join(CATEGORIES[parse_prompt(prompt).category][: parse_prompt(prompt).count]))
        for prompt in _user_prompts(demos)
    )
    assert best == 1.0


TASK_KEYS = {
    "id",
    "data",
    "annotations",
    "predictions",
    "meta",
    "created_at",
    "updated_at",
    "inner_id",
    "total_annotations",
    "cancelled_annotations",
    "total_predictions",
    "project",
}
ANNOTATION_KEYS = {
    "id",
    "completed_by",
    "result",
    "was_cancelled",
    "ground_truth",
    "created_at",
    "updated_at",
    "lead_time",
    "task",
    "project",
}


def test_label_studio_export_shape(default_task: dict[str, Path]) -> None:
    tasks = json.loads(default_task["preferences"].read_text())
    assert isinstance(tasks, list) and len(tasks) == SynthConfig().num_preference_tasks
    annotation_ids = []
    for task in tasks:
        assert set(task) >= TASK_KEYS
        assert set(task["data"]) == {"prompt", "answer1", "answer2"}
        assert task["data"]["answer1"] != task["data"]["answer2"]
        assert len(task["annotations"]) == SynthConfig().annotations_per_task
        cancelled = sum(annotation["was_cancelled"] for annotation in task["annotations"])
        assert (task["total_annotations"], task["cancelled_annotations"]) == (3 - cancelled, cancelled)
        assert len({_user_id(annotation) for annotation in task["annotations"]}) == 3  # distinct annotators
        for annotation in task["annotations"]:
            assert set(annotation) >= ANNOTATION_KEYS
            assert annotation["task"] == task["id"]
            annotation_ids.append(annotation["id"])
            for item in annotation["result"]:
                assert set(item) == {"id", "from_name", "to_name", "type", "value", "origin"}
                assert item["type"] == "pairwise" and item["value"]["selected"] in ("left", "right")
            if annotation["was_cancelled"]:
                assert annotation["result"] == []
    assert len(annotation_ids) == len(set(annotation_ids))


def _user_id(annotation: dict) -> int:
    completed_by = annotation["completed_by"]
    return completed_by["id"] if isinstance(completed_by, dict) else completed_by


def test_label_studio_export_has_every_annotator_behaviour(default_task: dict[str, Path]) -> None:
    annotations = [
        a for task in json.loads(default_task["preferences"].read_text()) for a in task["annotations"]
    ]
    kinds = Counter(
        "cancelled" if a["was_cancelled"] else "voted" if a["result"] else "no_preference"
        for a in annotations
    )
    assert kinds["cancelled"] > 0 and kinds["no_preference"] > 0 and kinds["voted"] > 0
    assert dict(kinds) == json.loads(default_task["manifest"].read_text())["annotations"]
    forms = [a["completed_by"] for a in annotations]
    assert any(isinstance(form, int) for form in forms)
    users = [form for form in forms if isinstance(form, dict)]
    assert users and all(set(user) == {"id", "email", "first_name", "last_name"} for user in users)


def test_less_noisy_annotators_agree_more_with_gold(default_task: dict[str, Path]) -> None:
    cfg = SynthConfig()
    agreement: dict[int, list[bool]] = defaultdict(list)
    for task in json.loads(default_task["preferences"].read_text()):
        data = task["data"]
        margin = gold_reward(data["prompt"], data["answer1"]) - gold_reward(data["prompt"], data["answer2"])
        for annotation in task["annotations"]:
            if abs(margin) < cfg.tie_margin:
                assert annotation["result"] == []  # no clear winner: no preference expressed
            elif annotation["result"]:
                selected = annotation["result"][0]["value"]["selected"]
                agreement[_user_id(annotation)].append((selected == "left") == (margin > 0))
    rates = {user: statistics.mean(votes) for user, votes in agreement.items()}
    noisiest = 1 + cfg.annotator_noise.index(max(cfg.annotator_noise))
    assert set(rates) == set(range(1, len(cfg.annotator_noise) + 1))
    assert all(rates[user] > rates[noisiest] for user in rates if user != noisiest)
    assert rates[1] > 0.9  # the most careful annotator (noise 0.05) nearly always agrees


def test_crash_mid_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = synthetic._write
    calls = []

    def failing_write(path: Path, text: str) -> str:
        calls.append(path)
        if len(calls) > 1:
            raise OSError("disk full")
        return real_write(path, text)

    monkeypatch.setattr(synthetic, "_write", failing_write)
    out = tmp_path / "task"
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_task(out, SMALL)
    assert len(calls) == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_crash_while_replacing_keeps_the_old_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "task"
    before = {path.name: path.read_bytes() for path in write_synthetic_task(out, SMALL).values()}

    def failing_write(path: Path, text: str) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write", failing_write)
    with pytest.raises(OSError):
        write_synthetic_task(out, SynthConfig(**{**SMALL.__dict__, "seed": 5}))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["task"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic task directory"):
        write_synthetic_task(out, SMALL)
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_sft_train", 0),
        ("heldout_fraction", 0.0),
        ("num_eval_prompts", 1000),
        ("annotations_per_task", 6),
        ("annotator_noise", ()),
        ("skip_prob", 1.0),
    ],
)
def test_bad_config_names_the_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        SynthConfig(**{field: value})
