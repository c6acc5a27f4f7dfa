"""The built-in task's noisy annotators, answering our tasks: through a live Label Studio server's API (as the
UI would), or, with no server, into a file written as Label Studio's JSON export writes it.

Both paths give the same judgements: each task's annotators and their answers are drawn from a generator
seeded by the run's seed and the task's key, so a resumed or re-run round votes as it did the first time.
Pairwise tasks are judged as the synthetic task's own preference project is (gold margin, tie margin,
per-annotator flip rate, skips); a ranking orders the responses by gold reward, each adjacent pair swapped with
the annotator's flip rate.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rlhf.annotation.tasks import responses_of, task_key
from rlhf.data import synthetic_labelstudio as ls
from rlhf.data.synthetic import SynthConfig, gold_reward, judgement

if TYPE_CHECKING:
    from rlhf.annotation.server import LabelStudio

Result = list[dict[str, Any]]  # a Label Studio annotation's `result`: [] is "no preference"


def user_email(annotator: int) -> str:
    """The simulated annotator's Label Studio account (`.invalid`: a domain that can never receive mail)."""
    return f"sim-{annotator + 1}@rlhf.invalid"


def answers(task: dict[str, Any], cfg: SynthConfig, seed: int) -> Iterator[tuple[int, bool, Result]]:
    """(annotator, cancelled, result) of each of the task's `cfg.annotations_per_task` annotators, in order."""
    rng = random.Random(f"{seed}:simulated:{task_key(task)}")
    prompt, responses = task["data"]["prompt"], responses_of(task)
    gold = [gold_reward(prompt, response) for response in responses]
    for annotator in rng.sample(range(len(cfg.annotator_noise)), cfg.annotations_per_task):
        if len(responses) == 2:
            cancelled, selected = judgement(rng, cfg, annotator, gold[0] - gold[1])
            result = [] if selected is None else [_pairwise(selected)]
        else:
            cancelled = rng.random() < cfg.skip_prob
            result = (
                [] if cancelled else [_ranking(task, _noisy_order(rng, gold, cfg.annotator_noise[annotator]))]
            )
        yield annotator, cancelled, result


def annotate_on_server(
    client: LabelStudio, project_id: int, cfg: SynthConfig, seed: int, max_tasks: int | None = None
) -> int:
    """Answer the project's tasks as the simulated annotators, each from their own account; returns the
    number of annotations posted. A task's annotations already there count as its first annotators' answers,
    so a run cut short and started again completes tasks rather than answering them twice."""
    users = {
        annotator: client.ensure_user(user_email(annotator)) for annotator in range(len(cfg.annotator_noise))
    }
    posted = 0
    for task in client.tasks(project_id)[:max_tasks]:
        done = task.get("total_annotations", 0) + task.get("cancelled_annotations", 0)
        for annotator, cancelled, result in list(answers(task, cfg, seed))[done:]:
            client.annotate(task["id"], result, users[annotator], cancelled=cancelled)
            posted += 1
    return posted


def export(tasks: list[dict[str, Any]], cfg: SynthConfig, seed: int) -> list[dict[str, Any]]:
    """The tasks as Label Studio's JSON export would hold them once the simulated annotators had answered."""
    rng = random.Random(f"{seed}:simulated-export")  # timestamps and ids only; the votes come from `answers`
    exported, annotation_id = [], 0
    for task_id, task in enumerate(tasks, start=1):
        annotations = []
        for annotator, cancelled, result in answers(task, cfg, seed):
            annotation_id += 1
            judged = _as_judged(result[0]) if result else None
            annotations.append(
                ls.annotation(rng, annotator, judged, cancelled, (annotation_id, task_id), ls.BASE_TIME)
            )
        exported.append(
            {**ls.task(task_id, task["data"], annotations, ls.BASE_TIME, "tasks.json"), "meta": task["meta"]}
        )
    return exported


def _noisy_order(rng: random.Random, gold: list[float], noise: float) -> list[int]:
    """Indices best first by gold reward, after one pass that swaps each adjacent pair with `noise`."""
    order = sorted(range(len(gold)), key=lambda i: -gold[i])
    for i in range(len(order) - 1):
        if rng.random() < noise:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def _pairwise(selected: str) -> dict[str, Any]:
    """A Pairwise choice as Label Studio 1.23 stores it."""
    return {"from_name": "comparison", "to_name": "answer1,answer2", "type": "pairwise",
            "value": {"selected": selected}}  # fmt: skip


def _ranking(task: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """A Ranker's order (no buckets) as Label Studio 1.23 stores it: the value is keyed by the Ranker's name."""
    ids = [task["data"]["items"][i]["id"] for i in order]
    return {"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": {"rank": ids}}}


def _as_judged(result: dict[str, Any]) -> tuple[tuple[str, str, str], dict[str, Any]]:
    """A result in the (control, value) form `rlhf.data.synthetic_labelstudio.annotation` writes."""
    return (result["type"], result["from_name"], result["to_name"]), result["value"]
