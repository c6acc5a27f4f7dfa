"""Annotation rounds, the loop Llama 2's RLHF ran five times: sample the last round's policy, have annotators
judge the pairs, retrain the reward model and the policy, repeat.

Round r, as numbered steps, each recorded in `round-<r>/state.json` once done, so that a run stopped anywhere
(a round waiting days for its annotators included) is picked up by the next `rlhf run` at the first step not
done, without sampling again or sending a task twice:

    1. sampled   the round r-1 policy (SFT for round 1) answers `pairs_per_round` prompts; tasks.json
    2. pushed    the tasks go to a Label Studio project of their own (skipped on the file path)
    3. pulled    the judgements come back: a server snapshot once enough tasks are finished, or the simulated
                 annotators' export file
    4. trained   the pipeline's reward and policy stages train on the judgements so far (or this round's:
                 `rounds.data`), as an ordinary run; their versions get the alias `round-<r>`

The rounds' folder is `runs_dir/rounds/<name>-<key>`, where the key hashes the config but `rounds.count`, so
raising the count continues the same rounds. Each round's training is an ordinary pipeline run (its own run
directory and report) whose SFT stage is the version the rounds started from.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.annotation.channels import FileChannel, ServerChannel, channel_for
from rlhf.annotation.tasks import label_config
from rlhf.config import PipelineConfig
from rlhf.errors import ConfigError, DataError
from rlhf.fingerprints import digest
from rlhf.pipeline import PipelineRun, RunOptions, run_pipeline
from rlhf.registry import REF_PREFIX
from rlhf.rounds_report import log_rounds, write_rounds_report
from rlhf.stage_table import REWARD_MODEL, root_stage, stage_spec
from rlhf.workspace import open_registry

log = logging.getLogger(__name__)

Channel = FileChannel | ServerChannel

PHASES = ("new", "sampled", "pushed", "pulled", "trained")
STATE_FILE = "state.json"


@dataclass
class RoundState:
    """What one round has done so far; written after every step."""

    round: int
    phase: str = "new"
    sampled_from: str | None = None  # the registry ref of the policy that wrote the answers
    tasks: int = 0
    prompts_skipped: int = 0  # prompts whose samples gave fewer than two distinct answers
    project: dict[str, Any] | None = None  # {"id", "title"} on the server path
    pushed: dict[str, int] | None = None  # {"uploaded", "already_there"} of the last push
    export: str | None = None  # the judgements: a pulled snapshot's export or the simulated file
    snapshot: dict[str, Any] | None = None  # {"id", "sha256", "task_ids"} of the pulled snapshot
    run_dir: str | None = None  # the pipeline run that trained on it
    refs: dict[str, str] = field(default_factory=dict)  # stage -> published version
    metrics: dict[str, float] = field(default_factory=dict)

    def done(self, phase: str) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)


@dataclass(frozen=True)
class RoundsRun:
    folder: Path
    sft: str  # the SFT version every round's policy starts from
    rounds: list[RoundState]
    report: Path


def rounds_folder(cfg: PipelineConfig) -> Path:
    """Where these rounds keep their state: one folder per config, whatever the round count, the tracking or
    how often the server is asked."""
    raw = cfg.model_dump(mode="json")
    raw["rounds"].pop("count")
    raw["rounds"]["label_studio"].pop("poll_seconds")
    raw.pop("tracking")
    return Path(cfg.runs_dir) / "rounds" / f"{cfg.name}-{digest(raw)}"


def run_rounds(cfg: PipelineConfig, options: RunOptions | None = None) -> RoundsRun:
    """Run (or continue) every round of `cfg.rounds`; returns each round's state and the rounds' report."""
    assert cfg.rounds is not None
    if options is not None and options != RunOptions():
        raise ConfigError("--force, --from and --only select stages of one run; rounds take none of them")
    folder = rounds_folder(cfg)
    channel = channel_for(cfg)
    channel.check()
    with _exclusive(folder):
        # 0. The SFT policy every round starts from (cached by fingerprint after the first run)
        sft = _published(run_pipeline(_sft_only(cfg)), root_stage().name)
        log.info("rounds: %d rounds from %s in %s", cfg.rounds.count, sft, folder)
        states: list[RoundState] = []
        for number in range(1, cfg.rounds.count + 1):
            previous = states[-1].refs[_policy_stage(cfg)] if states else sft
            states.append(_run_round(cfg, channel, folder, number, sft, previous, states))
        report = write_rounds_report(folder, [asdict(state) for state in states])
        log_rounds(folder, [asdict(state) for state in states], cfg.tracking)
    log.info("rounds: report %s", report)
    return RoundsRun(folder, sft, states, report)


def _run_round(
    cfg: PipelineConfig,
    channel: Channel,
    folder: Path,
    number: int,
    sft: str,
    previous: str,
    earlier: list[RoundState],
) -> RoundState:
    rounds = cfg.rounds
    assert rounds is not None
    where = folder / f"round-{number}"
    where.mkdir(exist_ok=True)
    state = _load_state(where, number)

    # 1. Sample the last round's policy; the tasks are written before anything is sent, and never resampled
    if not state.done("sampled"):
        tasks, skipped = _sample(cfg, number, previous)
        if not tasks:
            raise DataError(
                f"round {number}: {previous} gave none of {skipped} prompts two distinct non-empty answers; "
                "raise rounds.generation.temperature or max_new_tokens"
            )
        atomic.write_text(where / "tasks.json", json.dumps(tasks, ensure_ascii=False, indent=1))
        atomic.write_text(where / "label_config.xml", label_config(rounds.responses_per_prompt))
        state.sampled_from, state.tasks, state.prompts_skipped = previous, len(tasks), skipped
        _advance(where, state, "sampled")
    tasks = json.loads((where / "tasks.json").read_text(encoding="utf-8"))

    # 2. Send them to the annotators (the server path; the file path has nobody to send to)
    if not state.done("pushed"):
        state.project, state.pushed = channel.push(_project_title(cfg, number), tasks)
        _advance(where, state, "pushed")

    # 3. Their judgements back, once enough tasks are finished
    if not state.done("pulled"):
        needed = math.ceil(rounds.wait_for * len(tasks))
        state.export, state.snapshot = channel.pull(where, _project_title(cfg, number), tasks, needed)
        _advance(where, state, "pulled")

    # 4. Train on the judgements so far (or this round's), publish as round-<r>, evaluate
    if not state.done("trained"):
        exports = training_exports(rounds.data, earlier, state)
        start = previous if rounds.policy_start == "previous" else None
        run = run_pipeline(round_config(cfg, number, sft, start, exports, where))
        state.run_dir, state.refs, state.metrics = str(run.run_dir), _refs(run), _metrics(cfg, run)
        registry = open_registry(cfg)
        for ref in state.refs.values():
            registry.set_alias(ref, f"round-{number}")
        _advance(where, state, "trained")
    log.info("round %d: %s", number, ", ".join(f"{k} {v:.3f}" for k, v in state.metrics.items()))
    return state


# --------------------------------------------------------------------------------------------------
# The steps' pieces


def _sample(cfg: PipelineConfig, number: int, policy: str) -> tuple[list[dict[str, Any]], int]:
    """`pairs_per_round` tasks from the policy's answers to prompts drawn for this round.

    Prompts are drawn with replacement (a task set may be larger than the prompt set: each draw is sampled
    afresh), half again as many as tasks are wanted, since a draw whose samples are identical makes no task;
    the tasks beyond `pairs_per_round` are dropped.
    """
    from rlhf.annotate import sample_tasks  # torch, only once a round samples

    rounds = cfg.rounds
    assert rounds is not None
    prompts = _prompts(cfg)
    rng = random.Random(f"{cfg.seed}:round-{number}:prompts")
    drawn = rng.choices(prompts, k=math.ceil(1.5 * rounds.pairs_per_round))
    meta = {"round": number, "run": cfg.name}
    tasks, skipped = sample_tasks(
        drawn, REF_PREFIX + policy, open_registry(cfg), rounds.responses_per_prompt, rounds.generation,
        cfg.seed + number, meta,
    )  # fmt: skip
    return tasks[: rounds.pairs_per_round], skipped


def _prompts(cfg: PipelineConfig) -> list[list[dict[str, str]]]:
    """The prompts rounds sample: the configured file, else the synthetic task's training prompts."""
    from rlhf.eval import load_prompts

    rounds = cfg.rounds
    assert rounds is not None
    if rounds.prompts is not None:
        return load_prompts(rounds.prompts)
    from rlhf.data.synthetic import all_prompts, heldout_prompts

    synthetic = cfg.data.synthetic
    assert synthetic is not None
    heldout = heldout_prompts(synthetic.seed, synthetic.heldout_fraction)
    return [[{"role": "user", "content": p}] for p in all_prompts() if p not in heldout]


def _project_title(cfg: PipelineConfig, number: int) -> str:
    assert cfg.rounds is not None
    return f"{cfg.rounds.label_studio.project_prefix or cfg.name} round {number}"


def _sft_only(cfg: PipelineConfig) -> PipelineConfig:
    """The pipeline with its SFT stage alone: what every round starts from."""
    raw = cfg.model_dump(mode="json")
    raw["rounds"] = None
    root = root_stage().name
    raw["stages"] = {root: raw["stages"][root]}
    return PipelineConfig.model_validate(raw)


def round_config(
    cfg: PipelineConfig, number: int, sft: str, policy_start: str | None, exports: list[str], where: Path
) -> PipelineConfig:
    """The pipeline as round `number` runs it: SFT taken from the registry, the judgements as its data, and
    the sampled policy stage started from `policy_start` when given (else from SFT)."""
    raw = cfg.model_dump(mode="json")
    raw["rounds"] = None
    raw["name"] = f"{cfg.name}-round{number}"
    raw["stages"][root_stage().name] = REF_PREFIX + sft
    if policy_start is not None:
        section, _, own = _policy_stage(cfg).partition("-")
        stage = raw["stages"][section][own]
        model = stage.get("model") or cfg.model.model_dump(mode="json")
        stage["model"] = {**model, "name": REF_PREFIX + policy_start}
    preferences = raw["data"]["preferences"]
    preferences["files"] = [*preferences["files"], *exports]
    preferences["label_config"] = preferences["label_config"] or str(where / "label_config.xml")
    return PipelineConfig.model_validate(raw)


def training_exports(data: str, earlier: list[RoundState], state: RoundState) -> list[str]:
    """The judgements a round trains on: every round's so far (`all`), or its own (`new`)."""
    assert state.export is not None, "a round trains once it has pulled"
    return [*(s.export for s in earlier if s.export and data == "all"), state.export]


def _policy_stage(cfg: PipelineConfig) -> str:
    """The run name of the policy stage whose model the next round samples."""
    assert cfg.rounds is not None
    policies = [name for name in cfg.stages.plan() if stage_spec(name).evaluated]
    wanted = cfg.rounds.policy
    if wanted is None:
        return policies[0]
    return next(name for name in policies if wanted in (name, name.partition("-")[2]))


def _published(run: PipelineRun, stage: str) -> str:
    return next(result.ref for result in run.results if result.stage == stage and result.ref)


def _refs(run: PipelineRun) -> dict[str, str]:
    root = root_stage().name
    return {result.stage: result.ref for result in run.results if result.ref and result.stage != root}


def _metrics(cfg: PipelineConfig, run: PipelineRun) -> dict[str, float]:
    """What the rounds' report compares: the policy against SFT on gold, and the reward model's accuracy."""
    metrics: dict[str, float] = {}
    evaluation = run.evaluations.get(_policy_stage(cfg))
    if evaluation is not None:
        for key in ("policy_gold_reward", "reference_gold_reward", "gold_win_rate", "kl", "rm_win_rate"):
            if key in evaluation.metrics:
                metrics[key] = float(evaluation.metrics[key])
    for result in run.results:
        if stage_spec(result.stage).provides == REWARD_MODEL:
            for key in ("accuracy", "accuracy_gold", "pairs_train"):
                if key in result.metrics:
                    metrics[f"rm_{key}"] = float(result.metrics[key])
    return metrics


# --------------------------------------------------------------------------------------------------
# State on disk


def _load_state(where: Path, number: int) -> RoundState:
    path = where / STATE_FILE
    if not path.is_file():
        return RoundState(round=number)
    try:
        return RoundState(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not a round's state ({exc}); move it away to start the round afresh"
        ) from None


def _advance(where: Path, state: RoundState, phase: str) -> None:
    state.phase = phase
    atomic.write_text(where / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One `rlhf run` drives a config's rounds at a time: two would push the same tasks twice."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{folder}: another rlhf run is driving these rounds (pid lock)") from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield
