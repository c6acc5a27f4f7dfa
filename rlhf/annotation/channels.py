"""How a round's tasks reach annotators and their judgements come back: a Label Studio server, or files.

Both channels have the same two steps, `push` (send the tasks) and `pull` (the judgements as a Label Studio
JSON export on disk), so the rounds loop does not care which it drives. The file channel serves the simulated
annotators offline: nobody to send to, and their export is written as the server would write it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.annotation.simulated import annotate_on_server, export
from rlhf.annotation.tasks import label_config
from rlhf.config import RoundsConfig
from rlhf.data.preferences import ImportSettings
from rlhf.data.synthetic import SynthConfig

Project = dict[str, Any]  # {"id", "title"}


class FileChannel:
    """Offline: the simulated annotators answer into `export.json` beside the round's tasks."""

    def __init__(self, where: Path, annotators: SynthConfig | None, seed: int) -> None:
        assert annotators is not None, "the file channel has only the simulated annotators"
        self.where, self.annotators, self.seed = where, annotators, seed

    def push(self, title: str, tasks: list[dict[str, Any]]) -> tuple[Project | None, dict[str, int] | None]:
        return None, None

    def pull(self, title: str, tasks: list[dict[str, Any]], needed: int) -> tuple[str, dict[str, Any] | None]:
        self.where.mkdir(parents=True, exist_ok=True)
        path = self.where / "export.json"
        atomic.write_text(path, json.dumps(export(tasks, self.annotators, self.seed), ensure_ascii=False))
        return str(path), None


class ServerChannel:
    """A live Label Studio server: one project a round; people, or the simulated annotators through the API."""

    def __init__(
        self, where: Path, rounds: RoundsConfig, url: str, annotators: SynthConfig | None, seed: int
    ) -> None:
        self.where, self.rounds, self.url, self.annotators, self.seed = where, rounds, url, annotators, seed

    def _client(self):
        from rlhf.annotation.server import Credentials, LabelStudio

        key_env = self.rounds.label_studio.api_key_env
        return LabelStudio(Credentials.resolve(self.url, os.environ.get(key_env)))

    def push(self, title: str, tasks: list[dict[str, Any]]) -> tuple[Project, dict[str, int]]:
        from rlhf.annotation.sync import push

        # simulated annotators all answer every task, so the overlap is theirs; people: the configured one
        overlap = (
            self.annotators.annotations_per_task if self.annotators else self.rounds.label_studio.overlap
        )
        with self._client() as client:
            report = push(client, title, tasks, label_config(self.rounds.responses_per_prompt), overlap)
        return {"id": report.project_id, "title": title}, {
            "uploaded": report.uploaded,
            "already_there": report.already_there,
        }

    def pull(self, title: str, tasks: list[dict[str, Any]], needed: int) -> tuple[str, dict[str, Any]]:
        """The project's snapshot once `needed` tasks are finished (people), or once the simulated annotators
        have answered every task (a task one of them skipped never counts as finished, so nothing waits)."""
        from rlhf.annotation.sync import pull

        with self._client() as client:
            simulated = self.annotators is not None
            if simulated:
                project = client.find_project(title)
                annotate_on_server(client, project["id"], self.annotators, self.seed)
            result = pull(
                client, title, self.where / "pulled", ImportSettings(),
                wait_for=None if simulated else needed, poll_seconds=self.rounds.label_studio.poll_seconds,
                partial=simulated,
            )  # fmt: skip
        snapshot = {"id": result.snapshot_id, "sha256": result.sha256, "task_ids": list(result.task_ids),
                    "dataset": str(result.dataset_dir)}  # fmt: skip
        return str(result.export_path), snapshot
