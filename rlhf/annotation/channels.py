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
from rlhf.config import PipelineConfig, RoundsConfig
from rlhf.data.preferences import ImportSettings
from rlhf.data.synthetic import SynthConfig
from rlhf.errors import ConfigError

Project = dict[str, Any]  # {"id", "title"}


class FileChannel:
    """Offline: the simulated annotators answer into `export.json` beside the round's tasks."""

    def __init__(self, annotators: SynthConfig, seed: int) -> None:
        self.annotators, self.seed = annotators, seed

    def check(self) -> None:
        """Nothing to reach."""

    def push(self, title: str, tasks: list[dict[str, Any]]) -> tuple[Project | None, dict[str, int] | None]:
        return None, None

    def pull(
        self, where: Path, title: str, tasks: list[dict[str, Any]], needed: int
    ) -> tuple[str, dict[str, Any] | None]:
        where.mkdir(parents=True, exist_ok=True)
        path = where / "export.json"
        atomic.write_text(path, json.dumps(export(tasks, self.annotators, self.seed), ensure_ascii=False))
        return str(path), None


class ServerChannel:
    """A live Label Studio server: one project a round; people, or the simulated annotators through the API."""

    def __init__(self, rounds: RoundsConfig, url: str, annotators: SynthConfig | None, seed: int) -> None:
        self.rounds, self.url, self.annotators, self.seed = rounds, url, annotators, seed

    def _client(self):
        from rlhf.annotation.server import Credentials, LabelStudio

        key_env = self.rounds.label_studio.api_key_env
        if not os.environ.get(key_env):
            raise ConfigError(f"rounds.label_studio.api_key_env: set {key_env} to the Label Studio API key")
        return LabelStudio(Credentials.resolve(self.url, os.environ[key_env]))

    def check(self) -> None:
        """Reach the server with the key before anything trains: a wrong URL or key is one line at once."""
        with self._client() as client:
            client.version()

    def push(self, title: str, tasks: list[dict[str, Any]]) -> tuple[Project, dict[str, int]]:
        from rlhf.annotation.sync import push

        # simulated annotators all answer every task, so the overlap is theirs; people: the configured one
        overlap = (
            self.annotators.annotations_per_task if self.annotators else self.rounds.label_studio.overlap
        )
        with self._client() as client:
            report = push(client, title, tasks, label_config(self.rounds.responses_per_prompt), overlap)
        pushed = {"uploaded": report.uploaded, "already_there": report.already_there}
        return {"id": report.project_id, "title": title}, pushed

    def pull(
        self, where: Path, title: str, tasks: list[dict[str, Any]], needed: int
    ) -> tuple[str, dict[str, Any]]:
        """The project's snapshot once `needed` tasks are finished (people), or once the simulated annotators
        have answered every task (a task one of them skipped never counts as finished, so nothing waits)."""
        from rlhf.annotation.server import AnnotationServerError
        from rlhf.annotation.sync import pull

        with self._client() as client:
            simulated = self.annotators is not None
            if simulated:
                project = client.find_project(title)
                if project is None:
                    raise AnnotationServerError(f"Label Studio at {client.url}: no project titled '{title}'")
                annotate_on_server(client, project["id"], self.annotators, self.seed)
            result = pull(
                client, title, where / "pulled", ImportSettings(),
                wait_for=None if simulated else needed, poll_seconds=self.rounds.label_studio.poll_seconds,
                partial=simulated,
            )  # fmt: skip
        snapshot = {"id": result.snapshot_id, "sha256": result.sha256, "task_ids": list(result.task_ids),
                    "dataset": str(result.dataset_dir)}  # fmt: skip
        return str(result.export_path), snapshot


def channel_for(cfg: PipelineConfig) -> FileChannel | ServerChannel:
    """The rounds' channel: a server when a URL is configured (or in LABEL_STUDIO_URL), else files, which only
    the simulated annotators can answer through."""
    rounds = cfg.rounds
    assert rounds is not None
    url = rounds.label_studio.url or os.environ.get("LABEL_STUDIO_URL")
    simulated = cfg.data.synthetic if rounds.annotators == "simulated" else None
    if url is not None:
        return ServerChannel(rounds, url, simulated, cfg.seed)
    if simulated is None:
        raise ConfigError(
            "rounds.label_studio.url: needed for annotators label_studio (or set LABEL_STUDIO_URL)"
        )
    return FileChannel(simulated, cfg.seed)
