"""The built-in task with a programmatic gold reward: "name N things of a category".

It lets the pipeline show that it *aligns* a tiny random-init model on a CPU in minutes. The demonstrations
are deliberately mediocre (about half their words right), so SFT learns the format and preference
optimization has room to raise a gold reward that anyone can recompute exactly. The preference data comes as
a simulated Label Studio export with noisy, skipping and undecided annotators, so the real import path is
exercised too; the same annotators also judge single responses thumbs up or down (unpaired data, for KTO).

Stdlib only and deterministic for a seed: string-seeded `random.Random` streams and sha256, never Python's
salted `hash`, never the wall clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rlhf.data import synthetic_labelstudio as ls
from rlhf.errors import ConfigError, DataError

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animals": ("cat", "dog", "horse", "cow", "sheep", "goat", "rabbit", "mouse"),
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear"),
    "colors": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "pliers"),
    "cities": ("paris", "london", "tokyo", "rome", "berlin", "madrid", "cairo", "sydney"),
    "metals": ("iron", "copper", "gold", "silver", "tin", "zinc", "lead", "nickel"),
}
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
TEMPLATES: tuple[str, ...] = (
    "name {count} {category}",
    "list {count} {category} please",
    "give me {count} {category}",
    "tell me {count} {category}",
)

TASK_NAME = "name-things"
TASK_VERSION = 1
GOLD_REWARD_SUMMARY = (
    "distinct words of the asked category (at most N) / max(N, number of words); "
    "1.0 means exactly N distinct right words"
)

_CATEGORY_SETS = {category: frozenset(items) for category, items in CATEGORIES.items()}
# Preference candidates draw their share of right words from this range, so that most pairs differ in
# quality and carry a signal, while both sides stay plausible outputs of a mediocre SFT policy.
_CANDIDATE_CORRECT_PROB = (0.1, 0.9)
# <Pairwise name="comparison" toName="answer1,answer2"/>: the Pairwise control is its own object tag
_PAIRWISE = ("pairwise", "comparison", "comparison")
# <Choices name="thumbs" toName="response" choice="single"><Choice value="👍"/><Choice value="👎"/></Choices>
_THUMBS = ("choices", "thumbs", "response")


@dataclass(frozen=True)
class Instruction:
    """What a task prompt asks for: `count` distinct things of `category`."""

    count: int
    category: str


def _prompt_index() -> dict[str, Instruction]:
    """Every task prompt with its instruction; its order is the fixed order of `all_prompts`."""
    return {
        template.format(count=NUMBER_WORDS[count], category=category): Instruction(count, category)
        for template in TEMPLATES
        for category in CATEGORIES
        for count in NUMBER_WORDS
    }


_PROMPTS = _prompt_index()


def all_prompts() -> list[str]:
    """Every template × category × count prompt, always in the same order."""
    return list(_PROMPTS)


def parse_prompt(prompt: str) -> Instruction:
    """The instruction behind a task prompt; runs of whitespace are tolerated (decoders differ there)."""
    instruction = _PROMPTS.get(" ".join(prompt.split()))
    if instruction is None:
        raise DataError(
            f"not a prompt of the synthetic task: {prompt!r} (expected a template like 'name three fruits')"
        )
    return instruction


def gold_reward(prompt: str, response: str) -> float:
    """Score a response to a task prompt, in [0, 1].

    words = response.split(); hits = number of DISTINCT words that belong to the prompt's category,
    capped at count; score = hits / max(count, len(words)); an empty response scores 0.

    Exactly `count` distinct right words score 1.0. Counting distinct words means a repeated right word
    earns nothing, and dividing by the response length makes extra or wrong words cost, so a PPO policy
    cannot farm the reward by repetition or by reciting the whole category.
    """
    instruction = parse_prompt(prompt)
    words = response.split()
    if not words:
        return 0.0
    hits = min(instruction.count, len(_CATEGORY_SETS[instruction.category].intersection(words)))
    return hits / max(instruction.count, len(words))


def _heldout_count(fraction: float) -> int:
    """How many prompts a held-out fraction takes; neither the held-out nor the training side may be empty."""
    total = len(_PROMPTS)
    count = round(fraction * total) if 0 < fraction < 1 else 0
    if not 0 < count < total:
        raise ConfigError(
            f"heldout_fraction must hold out at least one of the {total} task prompts and keep one, "
            f"got {fraction!r}"
        )
    return count


def heldout_prompts(seed: int, fraction: float) -> set[str]:
    """The prompts reserved for evaluation: never in SFT data or preference pairs.

    Prompts are ranked by sha256 of (seed, prompt), so the split is stable across processes and Python
    versions, and the smallest `round(fraction * N)` are held out (an exact size, not a random one).
    """
    ranked = sorted(_PROMPTS, key=lambda prompt: hashlib.sha256(f"{seed}\0{prompt}".encode()).digest())
    return set(ranked[: _heldout_count(fraction)])


def task_corpus() -> list[str]:
    """Texts that hold every word the task can produce: the tokenizer is trained on them."""
    return all_prompts() + [" ".join(items) for items in CATEGORIES.values()]


def _require(ok: bool, key: str, expected: str, value: object) -> None:
    """One-line config error naming the key, what was expected and what came."""
    if not ok:
        raise ConfigError(f"synthetic task config: {key} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class SynthConfig:
    """How much synthetic data to write and how the simulated humans behave."""

    seed: int = 0
    num_sft_train: int = 8000
    num_sft_eval: int = 200
    num_eval_prompts: int | None = None  # None: every held-out prompt
    num_preference_tasks: int = 2000  # 0: none (annotation rounds bring the preferences instead)
    heldout_fraction: float = 0.2
    demo_correct_prob: float = 0.5  # each demo word is from the right category with this probability
    demo_exact_length_prob: float = 0.6  # else the demo has count ± 1 words (at least 1)
    annotator_noise: tuple[float, ...] = (0.05, 0.1, 0.15, 0.25, 0.35)  # per annotator: chance to flip a vote
    annotations_per_task: int = 3
    tie_margin: float = 0.1  # gold difference below which an annotator sees no clear winner
    skip_prob: float = 0.05  # chance that an annotator skips (cancels) a task
    num_thumbs_tasks: int = 2000  # single responses judged thumbs up / down (unpaired data, for KTO)
    thumbs_threshold: float = 0.7  # gold reward from which a response deserves a thumbs up

    def __post_init__(self) -> None:
        for key in ("num_sft_train", "num_sft_eval", "num_thumbs_tasks"):
            _require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        _require(self.num_preference_tasks >= 0, "num_preference_tasks", "an integer >= 0",
                 self.num_preference_tasks)  # fmt: skip
        heldout = _heldout_count(self.heldout_fraction)
        _require(
            self.num_eval_prompts is None or 1 <= self.num_eval_prompts <= heldout,
            "num_eval_prompts",
            f"null or between 1 and the {heldout} held-out prompts",
            self.num_eval_prompts,
        )
        for key in ("demo_correct_prob", "demo_exact_length_prob", "tie_margin", "thumbs_threshold"):
            _require(0 <= getattr(self, key) <= 1, key, "in [0, 1]", getattr(self, key))
        _require(0 <= self.skip_prob < 1, "skip_prob", "in [0, 1)", self.skip_prob)
        _require(
            len(self.annotator_noise) >= 1 and all(0 <= noise <= 0.5 for noise in self.annotator_noise),
            "annotator_noise",
            "a non-empty list of flip rates in [0, 0.5]",
            self.annotator_noise,
        )
        _require(
            1 <= self.annotations_per_task <= len(self.annotator_noise),
            "annotations_per_task",
            f"between 1 and the {len(self.annotator_noise)} annotators",
            self.annotations_per_task,
        )


def sample_response(
    rng: random.Random, instr: Instruction, correct_prob: float, exact_length_prob: float
) -> str:
    """One response without repeated words: each word is from the right category with `correct_prob`,
    else from another category; the length is `count` with `exact_length_prob`, else count ± 1 (at least 1).
    """
    length = instr.count if rng.random() < exact_length_prob else max(1, instr.count + rng.choice((-1, 1)))
    right = CATEGORIES[instr.category]
    wrong = [word for category, items in CATEGORIES.items() if category != instr.category for word in items]
    words: list[str] = []
    for _ in range(length):
        pool = right if rng.random() < correct_prob else wrong
        words.append(rng.choice([word for word in pool if word not in words]))
    return " ".join(words)


def _messages(role: str, content: str) -> list[dict[str, str]]:
    """A one-message conversation, as TRL's conversational prompt-completion format wants it."""
    return [{"role": role, "content": content}]


def _sft_records(rng: random.Random, cfg: SynthConfig, prompts: list[str], n: int) -> list[dict[str, Any]]:
    """Demonstrations of mediocre quality, so preference optimization has room to improve on SFT."""
    records = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        response = sample_response(
            rng, parse_prompt(prompt), cfg.demo_correct_prob, cfg.demo_exact_length_prob
        )
        records.append({"prompt": _messages("user", prompt), "completion": _messages("assistant", response)})
    return records


def _eval_records(cfg: SynthConfig, heldout: set[str]) -> list[dict[str, Any]]:
    """The held-out prompts (or a seeded sample of them) in `all_prompts` order."""
    prompts = [prompt for prompt in _PROMPTS if prompt in heldout]
    if cfg.num_eval_prompts is not None:
        keep = set(random.Random(f"{cfg.seed}:eval_prompts").sample(prompts, cfg.num_eval_prompts))
        prompts = [prompt for prompt in prompts if prompt in keep]
    return [{"prompt": _messages("user", prompt)} for prompt in prompts]


def _candidate_pair(rng: random.Random, instr: Instruction, exact_length_prob: float) -> tuple[str, str]:
    """Two different responses of independently drawn quality."""

    def draw() -> str:
        return sample_response(rng, instr, rng.uniform(*_CANDIDATE_CORRECT_PROB), exact_length_prob)

    first, second = draw(), draw()
    while second == first:
        second = draw()
    return first, second


def judgement(rng: random.Random, cfg: SynthConfig, annotator: int, margin: float) -> tuple[bool, str | None]:
    """One simulated annotator on a pair whose gold rewards differ by `margin` (left minus right).

    Returns (cancelled, selected side or None): a skip cancels the task; with no clear gold winner the
    annotator expresses no preference; otherwise they pick the better side, flipped with their noise rate.
    """
    if rng.random() < cfg.skip_prob:
        return True, None
    if abs(margin) < cfg.tie_margin:
        return False, None
    left_better = margin > 0
    if rng.random() < cfg.annotator_noise[annotator]:
        left_better = not left_better
    return False, "left" if left_better else "right"


Judge = Callable[[int], tuple[bool, tuple[tuple[str, str, str], dict[str, Any]] | None]]


def _project(
    cfg: SynthConfig,
    stream: str,
    count: int,
    upload: str,
    draw: Callable[[random.Random], tuple[dict, Judge]],
) -> list[dict[str, Any]]:
    """A simulated Label Studio project of `count` tasks: `draw` makes a task's data and its judge, which
    gives each of `annotations_per_task` annotators' (cancelled, result as (control, value) or None)."""
    rng = random.Random(f"{cfg.seed}:{stream}")
    imported = ls.BASE_TIME + timedelta(days=rng.randrange(365), seconds=rng.randrange(86400))
    tasks = []
    annotation_id = 0
    for task_id in range(1, count + 1):
        data, judge = draw(rng)
        annotations = []
        for annotator in rng.sample(range(len(cfg.annotator_noise)), cfg.annotations_per_task):
            annotation_id += 1
            cancelled, judged = judge(annotator)
            ids = (annotation_id, task_id)
            annotations.append(ls.annotation(rng, annotator, judged, cancelled, ids, imported))
        created = imported + timedelta(milliseconds=task_id)
        tasks.append(ls.task(task_id, data, annotations, created, upload))
    return tasks


def _preference_tasks(cfg: SynthConfig, prompts: list[str]) -> list[dict[str, Any]]:
    """A simulated Label Studio pairwise project: left is answer1, right is answer2."""

    def draw(rng: random.Random) -> tuple[dict, Judge]:
        prompt = rng.choice(prompts)
        answer1, answer2 = _candidate_pair(rng, parse_prompt(prompt), cfg.demo_exact_length_prob)
        margin = gold_reward(prompt, answer1) - gold_reward(prompt, answer2)

        def judge(annotator: int) -> tuple[bool, Any]:
            cancelled, selected = judgement(rng, cfg, annotator, margin)
            return cancelled, None if selected is None else (_PAIRWISE, {"selected": selected})

        return {"prompt": prompt, "answer1": answer1, "answer2": answer2}, judge

    return _project(cfg, "preferences", cfg.num_preference_tasks, "preference-pairs.json", draw)


def _thumbs_tasks(cfg: SynthConfig, prompts: list[str]) -> list[dict[str, Any]]:
    """A simulated Label Studio thumbs project: one response per task, drawn like a preference candidate,
    judged 👍 when its gold reward reaches `thumbs_threshold`, else 👎, by the same noisy, skipping
    annotators (each flips their thumb with their noise rate)."""

    def draw(rng: random.Random) -> tuple[dict, Judge]:
        prompt = rng.choice(prompts)
        response = sample_response(rng, parse_prompt(prompt), rng.uniform(*_CANDIDATE_CORRECT_PROB),
                                   cfg.demo_exact_length_prob)  # fmt: skip
        good = gold_reward(prompt, response) >= cfg.thumbs_threshold

        def judge(annotator: int) -> tuple[bool, Any]:
            if rng.random() < cfg.skip_prob:
                return True, None
            up = good != (rng.random() < cfg.annotator_noise[annotator])
            return False, (_THUMBS, {"choices": ["👍" if up else "👎"]})

        return {"prompt": prompt, "response": response}, judge

    return _project(cfg, "thumbs", cfg.num_thumbs_tasks, "thumbs.json", draw)


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def _write(path: Path, text: str) -> str:
    """Write a file durably and return its sha256, which the manifest records."""
    data = text.encode()
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _check_replaceable(out: Path) -> None:
    """Only an earlier task directory (with task.json) or an empty folder may be replaced: never user data."""
    if out.exists() and not (out.is_dir() and ((out / "task.json").is_file() or not any(out.iterdir()))):
        raise DataError(f"{out}: exists and is not a synthetic task directory (no task.json); pick another")


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh folder next to `out` that replaces it by renames on success and vanishes on failure.

    Readers see the old complete directory or the new complete one, never a half-written one.
    """
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            old = staging.with_name(staging.name.replace(".tmp-", ".old-", 1))
            out.rename(old)
            try:
                staging.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_DEFAULT_CONFIG = SynthConfig()


def write_synthetic_task(out_dir: str | Path, cfg: SynthConfig = _DEFAULT_CONFIG) -> dict[str, Path]:
    """Write the whole synthetic task into `out_dir` atomically; the same seed gives the same bytes.

    Returns the final path of each file by role: sft_train, sft_eval, eval_prompts, preferences, unpaired
    (the thumbs export), manifest.
    """
    out = Path(out_dir)
    heldout = heldout_prompts(cfg.seed, cfg.heldout_fraction)
    train_prompts = [prompt for prompt in _PROMPTS if prompt not in heldout]
    sft_train = _sft_records(random.Random(f"{cfg.seed}:sft_train"), cfg, train_prompts, cfg.num_sft_train)
    sft_eval = _sft_records(random.Random(f"{cfg.seed}:sft_eval"), cfg, train_prompts, cfg.num_sft_eval)
    eval_prompts = _eval_records(cfg, heldout)
    preferences = _preference_tasks(cfg, train_prompts)
    thumbs = _thumbs_tasks(cfg, train_prompts)
    files = {
        "sft_train": ("sft_train.jsonl", _jsonl(sft_train), len(sft_train)),
        "sft_eval": ("sft_eval.jsonl", _jsonl(sft_eval), len(sft_eval)),
        "eval_prompts": ("eval_prompts.jsonl", _jsonl(eval_prompts), len(eval_prompts)),
        "preferences": ("preferences_labelstudio.json", json.dumps(preferences) + "\n", len(preferences)),
        "unpaired": ("thumbs_labelstudio.json", json.dumps(thumbs) + "\n", len(thumbs)),
    }
    with _atomic_dir(out) as staging:
        manifest_files = {
            role: {"path": name, "records": count, "sha256": _write(staging / name, text)}
            for role, (name, text, count) in files.items()
        }
        manifest = {
            "task": TASK_NAME,
            "version": TASK_VERSION,
            "description": "name N things of a category; the gold reward is computed, not learned",
            "gold_reward": GOLD_REWARD_SUMMARY,
            "config": dataclasses.asdict(cfg),
            "prompts": {"total": len(_PROMPTS), "heldout": len(heldout), "train": len(train_prompts)},
            "files": manifest_files,
            "annotations": ls.annotation_counts(preferences),
            "thumbs_annotations": ls.annotation_counts(thumbs),
        }
        _write(staging / "task.json", json.dumps(manifest, indent=2) + "\n")
    return {role: out / name for role, (name, _, _) in files.items()} | {"manifest": out / "task.json"}
