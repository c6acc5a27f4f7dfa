"""The stage contract: what a stage gets from outside (StageContext) and what it hands back (StageResult).

Every program in `stages/` has the same face:

    def run(cfg: <Stage>Config, ctx: StageContext) -> StageResult   # the work, on every rank
    def main(argv=None) -> int                                      # `python -m stages.X --config FILE`

`main` hands over to `rlhf.launch.stage_main`. A stage never looks for another stage's output by path: the
context's `inputs` carry every location it needs (the model to start from, dataset files), resolved by
`rlhf.workspace`; what it returns is published by `rlhf.launch`, under the name the stage table gives it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.config import PipelineConfig
from rlhf.data.files import fingerprint
from rlhf.distributed import RankInfo
from rlhf.errors import ConfigError
from rlhf.registry import Registry
from rlhf.settings import DistributedConfig, ModelSpec
from rlhf.stage_table import stage_key
from rlhf.tracking import Tracker

RESULT_FILE = "result.json"
HISTORY_FILE = "history.json"  # a stage's logged training rows: [{"step": n, metric: value, ...}, ...]


@dataclass
class ResolvedModel:
    """A model spec made loadable, with where it came from (for lineage)."""

    spec: ModelSpec  # name is a local directory or hub id; `base` set for a registry LoRA version
    ref: str | None  # the concrete registry version ("sft-policy:v3") when it came from the registry
    base_model: str  # the root of the chain: hub id, built-in spec or directory the first stage started from


@dataclass
class StageContext:
    """Everything a stage needs from outside; built by `rlhf.workspace`, never by the stage."""

    stage: str  # the run name: `sft`, `policy`, `policy-ppo`
    pipeline: PipelineConfig
    run_dir: Path
    work_dir: Path  # this stage's scratch: checkpoints, logs
    output_dir: Path  # the stage's final product (a HF model directory) before it is published
    rank: RankInfo
    seed: int
    start: ResolvedModel  # the model this stage starts from
    inputs: dict[str, str]  # input role -> location: "sft_train", "sft_eval", "eval_prompts", "reward_model"
    task: str | None  # name of the gold-reward task the data comes from, if any
    registry: Registry
    checkpoint_dir: Path  # where training checkpoints go, and where a rerun of the same stage resumes from
    fingerprint: str | None = None  # of the stage's resolved config and inputs, when the pipeline runs it
    datasets_read: list[dict[str, str]] = field(default_factory=list)  # lineage, filled by `data`
    tracker: Tracker | None = None

    @property
    def model(self) -> ModelSpec:
        return self.start.spec

    @property
    def distributed(self) -> DistributedConfig:
        """This stage's processes and DeepSpeed settings (the pipeline's, under the stage's own keys)."""
        return self.pipeline.distributed_for(self.stage)

    def input(self, role: str) -> str:
        """A required input; a missing one is a config error naming the key to set."""
        if role not in self.inputs:
            raise ConfigError(
                f"{stage_key(self.stage)}: needs '{role}' but none is configured (set data.{role})"
            )
        return self.inputs[role]

    def data(self, role: str, override: str | None = None) -> str:
        """The dataset this stage reads for `role` (the stage config's own path wins), recorded for lineage."""
        path = override or self.input(role)
        if not any(entry["path"] == path for entry in self.datasets_read):
            self.datasets_read.append({"name": role, "path": path, "fingerprint": fingerprint(path)})
        return path


@dataclass
class StageResult:
    """What a stage produced: its model directory and its headline metrics; where it was published."""

    stage: str
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)  # registry versions it used besides its start (lineage)
    ref: str | None = None  # the published version ("sft-policy:v3"), set once published
    seconds: float = 0.0
    cached: bool = False  # not trained: a version with the stage's fingerprint was already published

    def save(self, path: Path) -> None:
        atomic.write_text(path, json.dumps(asdict(self), default=str, indent=2))

    @classmethod
    def load(cls, path: Path) -> StageResult:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**recorded, "output_dir": Path(recorded["output_dir"])})

    def describe(self) -> str:
        """Where the product went, for the last console line."""
        if self.cached:
            return f"cached as {self.ref} ({self.output_dir})"
        return f"published {self.ref} ({self.output_dir})" if self.ref else f"output in {self.output_dir}"


StageRun = Callable[[Any, StageContext], StageResult]  # a program's `run(cfg, ctx)`
