"""Push tasks to a Label Studio project and pull its annotations back as a preference dataset, both
idempotent, so that a run stopped anywhere can simply run again.

Push: the server's tasks are the record of what was pushed. Label Studio does not deduplicate, so a push
lists the `meta.rlhf.key` of every task already in the project and uploads only the tasks whose key is not
there; a push cut off after its upload finds the keys next time.

Pull: an export snapshot of the finished tasks (or, `partial`, of every task with a submitted annotation)
is imported with `rlhf.data.preferences`. The dataset folder is named by the sha256 of the snapshot's bytes,
which Label Studio writes identically for an unchanged project: pulling again without new annotations finds
the same folder and reuses it (same fingerprint, so the stages downstream stay cached). The export and the
labeling config are kept beside the datasets, and the manifest's `labelstudio` block says which project,
snapshot and tasks the dataset came from, never with the key.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.annotation.server import TITLE_LENGTH, AnnotationServerError, LabelStudio, Snapshot
from rlhf.annotation.tasks import is_comparison_config, task_key
from rlhf.data import readers
from rlhf.data.preference_dataset import MANIFEST, fingerprint
from rlhf.data.preferences import ImportReport, ImportSettings, import_preferences
from rlhf.data.records import Quarantined
from rlhf.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMPORT_BATCH = 1000  # tasks per import request (the server takes up to 250K / 200 MB)
EXPORT, LABEL_CONFIG = "export.json", "label_config.xml"


@dataclass(frozen=True)
class PushReport:
    project_id: int
    uploaded: int
    already_there: int


@dataclass(frozen=True)
class PullResult:
    dataset_dir: Path
    report: ImportReport
    project_id: int
    snapshot_id: int
    sha256: str
    task_ids: tuple[int, ...]
    reused: bool  # the dataset of this snapshot was already there
    export_path: Path  # the snapshot as downloaded (Label Studio JSON), beside the datasets


def check_title(title: str) -> str:
    """A project title Label Studio accepts (it refuses titles outside 3..50 characters)."""
    low, high = TITLE_LENGTH
    if not low <= len(title) <= high:
        raise ConfigError(f"--project: a Label Studio title has {low} to {high} characters, got {len(title)}")
    return title


def load_tasks(path: Path) -> list[dict[str, Any]]:
    """A tasks file as `rlhf data export-for-annotation` writes it: a JSON array of keyed tasks."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the tasks ({exc})") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a JSON tasks file ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise DataError(f"{path}: expected a JSON array of task objects")
    _check_keys(tasks, str(path))
    return tasks


def push(
    client: LabelStudio, title: str, tasks: list[dict[str, Any]], label_config: str, overlap: int
) -> PushReport:
    """Upload to the project titled `title` (created with `label_config` and `overlap` annotators per task
    if there is none) the tasks whose key it does not hold yet."""
    check_title(title)
    if overlap < 1:
        raise ConfigError(f"--overlap: expected at least 1 annotator per task, got {overlap}")
    _check_keys(tasks, "tasks")
    project = client.find_project(title)
    if project is None:
        if not is_comparison_config(label_config):
            raise DataError(
                "the labeling config has no Pairwise or Ranker control: it does not ask for a comparison"
            )
        project = client.create_project(title, label_config, overlap)
    else:
        project = client.project(int(project["id"]))  # the listing may leave the config out
        _check_comparison(client, project)
    project_id = int(project["id"])
    there = {task_key(task) for task in client.tasks(project_id)}
    missing: dict[str, dict[str, Any]] = {}
    for task in tasks:
        key = str(task_key(task))
        if key not in there and key not in missing:
            missing[key] = task
    batch = list(missing.values())
    for start in range(0, len(batch), IMPORT_BATCH):
        client.import_tasks(project_id, batch[start : start + IMPORT_BATCH])
    return PushReport(project_id, len(batch), len(tasks) - len(batch))


def pull(
    client: LabelStudio,
    title: str,
    out_root: Path,
    settings: ImportSettings,
    wait_for: int | None = None,
    poll_seconds: float = 10.0,
    partial: bool = False,
    progress: bool = True,
) -> PullResult:
    """The dataset of the project's finished tasks (`partial`: of every task with a submitted annotation)
    under `out_root/<title slug>/snap-<sha256[:12]>`, after waiting for `wait_for` finished tasks."""
    found = client.find_project(check_title(title))
    if found is None:
        raise AnnotationServerError(f"Label Studio at {client.url}: no project titled '{title}'")
    project = client.project(int(found["id"]))
    project_id = int(project["id"])
    _check_comparison(client, project)
    if wait_for is not None:
        wait_until_labeled(client, project_id, title, wait_for, poll_seconds, progress)
    # downloaded outside out_root, which a failed pull leaves as it was
    with tempfile.TemporaryDirectory(prefix="rlhf-pull-") as staging:
        snapshot = client.snapshot(project_id, finished_only=not partial, dest=Path(staging) / EXPORT)
        try:
            result = _land(snapshot, project, Path(out_root), settings, partial, client.url)
        except BaseException:
            _forget(client, project_id, snapshot.id)  # no dataset refers to it
            raise
    if result.reused:
        _forget(client, project_id, snapshot.id)  # the dataset refers to the first snapshot of these bytes
    return result


def _land(
    snapshot: Snapshot,
    project: dict[str, Any],
    out_root: Path,
    settings: ImportSettings,
    partial: bool,
    url: str,
) -> PullResult:
    """The snapshot's dataset: the one already imported from the same bytes and settings, else a new import
    (the export and the labeling config written first, beside it)."""
    title, project_id = str(project["title"]), int(project["id"])
    task_ids = _task_ids(snapshot.path, title, snapshot.id, partial)
    sha = snapshot.sha256
    folder = out_root / _slug(title, project_id)
    dataset_dir = folder / f"snap-{sha[:12]}"
    exports = folder / "exports" / dataset_dir.name
    recorded = settings.to_json()  # the settings of this pull as its manifest records them
    recorded["format"], recorded["options"]["label_config"] = "labelstudio", str(exports / LABEL_CONFIG)
    if (manifest := _complete(dataset_dir, sha, recorded)) is not None:
        block = manifest["labelstudio"]
        excluded = frozenset(name for name, stats in manifest["annotators"].items() if stats.get("excluded"))
        report = ImportReport.of(dataset_dir, manifest, excluded)
        ids = tuple(block["task_ids"])
        snapshot_id = block["snapshot_id"]
        if not (exports / EXPORT).is_file():  # removed since: the same bytes again
            _place(snapshot.path, exports / EXPORT)
        return PullResult(dataset_dir, report, project_id, snapshot_id, sha, ids, True, exports / EXPORT)
    _place(snapshot.path, exports / EXPORT)
    atomic.write_text(exports / LABEL_CONFIG, str(project.get("label_config") or ""))
    options = replace(settings.options, label_config=str(exports / LABEL_CONFIG))  # reads the config
    settings = replace(settings, format="labelstudio", options=options)
    extra = {
        "labelstudio": {
            "url": url,
            "project": {"id": project_id, "title": title},
            "snapshot_id": snapshot.id,
            "snapshot_md5": snapshot.md5,
            "sha256": sha,
            "finished_only": not partial,
            "task_ids": list(task_ids),
            "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    }
    report = import_preferences([exports / EXPORT], dataset_dir, settings, extra=extra)
    return PullResult(dataset_dir, report, project_id, snapshot.id, sha, task_ids, False, exports / EXPORT)


def _forget(client: LabelStudio, project_id: int, snapshot_id: int) -> None:
    """Delete a snapshot nothing refers to; a failure to is not worth failing the pull for."""
    try:
        client.delete_snapshot(project_id, snapshot_id)
    except AnnotationServerError as exc:
        log.warning("could not delete Label Studio snapshot %s: %s", snapshot_id, exc)


def wait_until_labeled(
    client: LabelStudio,
    project_id: int,
    title: str,
    wait_for: int,
    poll_seconds: float = 10.0,
    progress: bool = True,
) -> int:
    """Poll the project until `wait_for` of its tasks are finished (have their overlap of annotators);
    returns how many are. A task every annotator skipped never finishes, so ask for fewer than the tasks."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if wait_for < 1:
        raise ConfigError(f"--wait-for: expected at least 1 finished task, got {wait_for}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar:
        job = bar.add_task(f"Label Studio '{title}': finished tasks", total=wait_for)
        while True:
            tasks = client.tasks(project_id)
            if wait_for > len(tasks):
                raise AnnotationServerError(
                    f"--wait-for {wait_for}: project '{title}' (id {project_id}) has only {len(tasks)} tasks"
                )
            finished = sum(bool(task.get("is_labeled")) for task in tasks)
            bar.update(job, completed=min(finished, wait_for))
            if finished >= wait_for:
                return finished
            time.sleep(poll_seconds)


def _check_keys(tasks: list[dict[str, Any]], where: str) -> None:
    for index, task in enumerate(tasks):
        if not isinstance(task_key(task), str):
            raise DataError(
                f"{where}: task {index} has no meta.rlhf.key (write tasks with rlhf data export-for-annotation)"
            )


def _check_comparison(client: LabelStudio, project: dict[str, Any]) -> None:
    if not is_comparison_config(str(project.get("label_config") or "")):
        raise AnnotationServerError(
            f"Label Studio at {client.url}: project '{project.get('title')}' (id {project.get('id')}) is not a "
            "comparison project: its labeling config has no Pairwise or Ranker control"
        )


def _place(downloaded: Path, target: Path) -> None:
    """Move a downloaded snapshot into place: beside the target first, then renamed, so no reader sees half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(f".{target.name}.partial")
    shutil.copyfile(downloaded, aside)
    aside.replace(target)


def _task_ids(path: Path, title: str, snapshot_id: int, partial: bool) -> tuple[int, ...]:
    """The sorted ids of the snapshot's tasks, read a task at a time; a snapshot without tasks is an error
    (nothing to import)."""
    tasks: list[int] = []
    try:
        for item in readers.read_records(path):
            if not isinstance(item, Quarantined) and isinstance(item[1].get("id"), int):
                tasks.append(item[1]["id"])
    except DataError as exc:
        raise AnnotationServerError(
            f"project '{title}': snapshot {snapshot_id} is not JSON ({exc})"
        ) from None
    if not tasks and partial:
        raise AnnotationServerError(
            f"project '{title}': no tasks to pull yet (none has a submitted annotation)"
        )
    if not tasks:
        raise AnnotationServerError(
            f"project '{title}': no tasks to pull yet (none finished; wait with --wait-for N, or pull the "
            "annotated ones with --partial)"
        )
    return tuple(sorted(tasks))


def _slug(title: str, project_id: int) -> str:
    """The title as a folder name (no path can escape `out_root`)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:64] or f"project-{project_id}"


def _complete(dataset_dir: Path, sha: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of the dataset already imported from this snapshot with these settings, if it is there
    and intact (other settings import again, into the same folder)."""
    wanted = json.loads(json.dumps(settings))
    try:
        manifest = json.loads((dataset_dir / MANIFEST).read_text(encoding="utf-8"))
        if manifest["labelstudio"]["sha256"] != sha or manifest["settings"] != wanted:
            return None
        if fingerprint(dataset_dir, manifest["files"]) != manifest["fingerprint"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest
