"""Run records: what each pipeline run did, kept in its directory as `run.json` and listed by `rlhf status`.

The record is rewritten atomically at every change of a stage's state, so a run killed at any moment leaves
a readable record; one whose process is gone while it still says "running" shows as "interrupted".
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhf import atomic
from rlhf.errors import RlhfError

RECORD_FILE = "run.json"
StageStatus = Literal["pending", "running", "done", "cached", "taken", "failed", "skipped"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class StageRecord:
    status: StageStatus = "pending"
    fingerprint: str | None = None
    ref: str | None = None  # the registry version it published, was cached as, or was taken from
    started_at: str | None = None
    seconds: float | None = None
    log: str | None = None
    error: str | None = None


@dataclass
class RunRecord:
    """One pipeline run: its config, each stage's state and timing, and how it ended."""

    run_dir: str
    pipeline: str
    config_fingerprint: str
    stages: dict[str, StageRecord]
    status: Literal["running", "done", "failed"] = "running"
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    seconds: float | None = None
    error: str | None = None
    report: str | None = None
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)

    @classmethod
    def start(cls, run_dir: Path, pipeline: str, config_fingerprint: str, stages: list[str]) -> RunRecord:
        record = cls(str(run_dir), pipeline, config_fingerprint, {name: StageRecord() for name in stages})
        record.save()
        return record

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        path = run_dir / RECORD_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            stages = {name: StageRecord(**entry) for name, entry in data.pop("stages").items()}
            return cls(**data, stages=stages)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RlhfError(f"{path}: not a readable run record ({exc})") from None

    def stage(self, name: str, status: StageStatus, **details: Any) -> None:
        """Set a stage's state (and any of its details); a stage that starts running is timed from now."""
        entry = self.stages.setdefault(name, StageRecord())
        if status == "running":
            entry.started_at = _now()
        entry.status = status
        for key, value in details.items():
            setattr(entry, key, value)
        self.save()

    def finish(self, seconds: float, error: str | None = None, report: str | None = None) -> None:
        self.status = "failed" if error else "done"
        self.error, self.report, self.finished_at, self.seconds = error, report, _now(), round(seconds, 1)
        for entry in self.stages.values():  # what never started because an earlier stage failed
            if entry.status == "pending":
                entry.status = "skipped"
        self.save()

    @property
    def state(self) -> str:
        """The status as it stands: a "running" record whose process is gone on this host was interrupted."""
        if self.status == "running" and self.host == socket.gethostname() and not _alive(self.pid):
            return "interrupted"
        return self.status

    def save(self) -> None:
        atomic.write_text(Path(self.run_dir) / RECORD_FILE, json.dumps(asdict(self), indent=2))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def list_runs(runs_dir: Path) -> list[RunRecord]:
    """Every run under `runs_dir` that has a record, oldest first."""
    records = [RunRecord.load(path.parent) for path in runs_dir.glob(f"*/{RECORD_FILE}")]
    return sorted(records, key=lambda record: record.started_at)
