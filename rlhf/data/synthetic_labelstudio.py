"""The synthetic task's simulated Label Studio projects, written as Label Studio's JSON export writes them:
tasks with their annotations, results, users and counters, so the real import path reads them.

Both simulated projects use it: the pairwise preference project and the thumbs project (one completion
judged 👍 / 👎). Stdlib only and deterministic for a seed, like `rlhf.data.synthetic`.
"""

from __future__ import annotations

import random
import string
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

PROJECT_ID = 1
BASE_TIME = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
_REGION_ID_CHARS = string.ascii_letters + string.digits + "_-"


def _completed_by(annotator: int) -> int | dict[str, Any]:
    """Label Studio writes `completed_by` as a user id or as a user object depending on version and export
    path; half the simulated annotators get each form so an importer has to take both."""
    user_id = annotator + 1
    if annotator % 2 == 0:
        return user_id
    return {
        "id": user_id,
        "email": f"annotator{user_id}@example.com",
        "first_name": "Annotator",
        "last_name": str(user_id),
    }


def _timestamp(moment: datetime) -> str:
    """Label Studio's timestamp form, e.g. 2021-03-09T22:16:08.728353Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def annotation(
    rng: random.Random,
    annotator: int,
    judged: tuple[tuple[str, str, str], dict[str, Any]] | None,
    cancelled: bool,
    ids: tuple[int, int],
    imported: datetime,
) -> dict[str, Any]:
    """One Label Studio annotation; `judged` is the result it holds, a control `(type, from_name, to_name)`
    and its value, or None (no result); `ids` is (annotation id, task id)."""
    submitted = imported + timedelta(seconds=rng.uniform(600, 14 * 86400))
    lead_time = round(rng.uniform(3.0, 90.0), 3)
    results = []
    if judged is not None:
        (kind, from_name, to_name), value = judged
        region_id = "".join(rng.choices(_REGION_ID_CHARS, k=10))
        results.append({"id": region_id, "from_name": from_name, "to_name": to_name, "type": kind,
                        "value": value, "origin": "manual"})  # fmt: skip
    annotation_id, task_id = ids
    return {
        "id": annotation_id,
        "completed_by": _completed_by(annotator),
        "result": results,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": _timestamp(submitted),
        "updated_at": _timestamp(submitted + timedelta(microseconds=rng.randrange(1, 1000))),
        "draft_created_at": _timestamp(submitted - timedelta(seconds=lead_time)),
        "lead_time": lead_time,
        "prediction": {},
        "result_count": len(results),
        "unique_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task_id,
        "project": PROJECT_ID,
        "updated_by": annotator + 1,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


def task(
    task_id: int,
    data: dict[str, str],
    annotations: list[dict[str, Any]],
    created: datetime,
    file_upload: str,
) -> dict[str, Any]:
    """One task as Label Studio's JSON export writes it (counters as LS keeps them: cancelled apart)."""
    last = max(annotations, key=lambda annotation: annotation["updated_at"])
    cancelled = sum(annotation["was_cancelled"] for annotation in annotations)
    return {
        "id": task_id,
        "annotations": annotations,
        "file_upload": file_upload,
        "drafts": [],
        "predictions": [],
        "data": data,
        "meta": {},
        "created_at": _timestamp(created),
        "updated_at": last["updated_at"],
        "allow_skip": True,
        "inner_id": task_id,
        "total_annotations": len(annotations) - cancelled,
        "cancelled_annotations": cancelled,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": PROJECT_ID,
        "updated_by": last["updated_by"],
        "comment_authors": [],
    }


def annotation_counts(tasks: list[dict[str, Any]]) -> dict[str, int]:
    """How the simulated annotators behaved, for the manifest."""
    annotations = [annotation for task in tasks for annotation in task["annotations"]]
    cancelled = sum(annotation["was_cancelled"] for annotation in annotations)
    voted = sum(bool(annotation["result"]) for annotation in annotations)
    return {"cancelled": cancelled, "no_preference": len(annotations) - cancelled - voted, "voted": voted}
