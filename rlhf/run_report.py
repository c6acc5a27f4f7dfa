"""The run report: `report.md` in a run directory, with each stage's headline numbers, the policies'
evaluations, and figures as PNG in `report/`: each stage's training curves, the reward model's accuracy, and
the policies' gold reward and reward-model score against their KL from the SFT policy.

It reads only what a run leaves on disk (`summary.json`, else each stage's `result.json`, and each stage's
`history.json`), so a failed or partial run still gets a report of what it did, and any run's report can be
written again later. `log_report` puts the figures and the report into the run's wandb group.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf import atomic
from rlhf.config import TrackingConfig
from rlhf.settings import ONLINE_ALGORITHMS
from rlhf.stage import HISTORY_FILE, RESULT_FILE
from rlhf.stage_table import REWARD_MODEL, STAGES, stage_position, stage_spec
from rlhf.tracking import Tracker

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
FIGURES_DIR = "report"

# A stage's metric -> its label in the stages table; a metric recorded as `<key>_first` / `<key>_last`
# shows as "first → last".
HEADLINE = {
    "train_loss": "train loss",
    "eval_loss": "eval loss",
    "train_accuracy": "train accuracy",
    "accuracy": "accuracy vs majority",
    "accuracy_gold": "accuracy vs gold",
    "reward_accuracy": "implicit reward accuracy",
    "reward_margin": "implicit reward margin",
    # the online algorithms' rollouts: the reward they optimize (reward models and functions), and the KL
    **{
        f"{algorithm}_{key}": label
        for algorithm in ONLINE_ALGORITHMS
        for key, label in (("score_raw_mean", "rollout score"), ("kl", "KL"))
    },
    "gold_reward": "gold reward",
    "eos_share": "ends with EOS",
    "response_tokens": "response tokens",
    "steps": "steps",
}

# An evaluation's metric -> its column in the evaluations table (columns no evaluation has are left out).
EVALUATION = {
    "kl": "KL from SFT",
    "policy_gold_reward": "gold reward",
    "reference_gold_reward": "SFT gold reward",
    "gold_win_rate": "gold win rate",
    "policy_rm_score": "RM score",
    "reference_rm_score": "SFT RM score",
    "rm_win_rate": "RM win rate",
    "policy_eos_share": "ends with EOS",
    "policy_response_tokens": "response tokens",
}

# The reward model's accuracy, as its stage records it -> bar label.
ACCURACY = {
    "train_accuracy": "train pairs\nvs majority",
    "accuracy": "held-out pairs\nvs majority",
    "accuracy_gold": "held-out pairs\nvs gold reward",
}


@dataclass(frozen=True)
class Panel:
    """One panel of a training-curve figure: the history keys drawn on it, each as its own line."""

    title: str
    keys: tuple[str, ...]


# Every stage kind's panels in one list: a stage gets those its history has keys for (TRL's names for SFT,
# the reward model and DPO; rlhf.ppo's for PPO).
PANELS = (
    Panel("loss", ("loss", "eval_loss")),
    Panel("PPO losses", ("policy_loss", "value_loss")),
    Panel("token accuracy", ("mean_token_accuracy", "eval_mean_token_accuracy")),
    Panel("pair accuracy", ("accuracy", "eval_accuracy", "rewards/accuracies", "eval_rewards/accuracies")),
    Panel("reward margin", ("margin", "eval_margin", "rewards/margins", "eval_rewards/margins")),
    Panel("reward-model score", ("score_raw_mean",)),
    Panel("KL from the reference", ("kl",)),
)

# Panels of the reward-against-KL figure: title, evaluation metric (policy_<m> / reference_<m>), and the
# online algorithms' history key drawn as the training trajectory on it (None: they log no such score).
KL_PANELS = (("gold reward", "gold_reward", None), ("reward-model score", "rm_score", "score_raw_mean"))
KL_NOTE = (
    "Points: each policy stage (DPO, KTO, PPO, GRPO, RLOO, ...) sampled on the held-out prompts, the SFT "
    "policy at KL 0. Lines: the online algorithms' training rollouts, scored by the reward they optimize (reward "
    "models and reward functions), with their rollout settings."
)


@dataclass
class StageOutcome:
    """What a stage left in the run directory: its result (when it finished) and its training history."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    ref: str | None = None
    seconds: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False
    cached: bool = False  # not trained in this run (its history, when shown, is the training run's)


@dataclass
class RunOutcome:
    run_dir: Path
    base_model: str | None
    base_metrics: dict[str, float]
    stages: list[StageOutcome]
    evaluations: dict[str, dict[str, float]]  # policy stage -> its metrics against the SFT policy
    complete: bool  # the pipeline wrote its summary


@dataclass(frozen=True)
class Drawn:
    """A figure written to disk, and where the report shows it."""

    section: str
    caption: str
    path: Path
    note: str = ""  # how to read it, under the figure


# --------------------------------------------------------------------------------------------------
# Reading the run directory


def _read_json(path: Path) -> Any:
    """A JSON file's content; None when it is missing or unreadable (a report never fails on one file)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("report: skipping %s (%s)", path, err)
        return None


def _stage_folders(run_dir: Path, file: str) -> list[str]:
    """Names of the stage folders holding `file` (not the data, model or hidden rank folders)."""
    return sorted(
        path.parent.name
        for path in run_dir.glob(f"*/{file}")
        if not path.parent.name.startswith(".") and stage_position(path.parent.name) is not None
    )


def _order(stage: str) -> int:
    """A stage's place in a report: the table's order, a name no stage has last."""
    position = stage_position(stage)
    return len(STAGES) if position is None else position


def load_run(run_dir: Path) -> RunOutcome:
    """Everything the report shows, from the summary when the run finished, else from each stage's files."""
    summary = _read_json(run_dir / SUMMARY_FILE)
    complete = isinstance(summary, dict)
    summary = summary if complete else {}
    results = {entry["stage"]: entry for entry in summary.get("stages", [])}
    for name in _stage_folders(run_dir, RESULT_FILE):
        results.setdefault(name, _read_json(run_dir / name / RESULT_FILE) or {})
    names = list(results) + [n for n in _stage_folders(run_dir, HISTORY_FILE) if n not in results]
    stages = [_stage(run_dir, name, results.get(name)) for name in names]
    return RunOutcome(
        run_dir=run_dir,
        base_model=summary.get("base_model"),
        base_metrics=summary.get("base_metrics") or {},
        stages=sorted(stages, key=lambda stage: _order(stage.name)),
        evaluations=summary.get("evaluations") or {},
        complete=complete,
    )


def _stage(run_dir: Path, name: str, result: Mapping[str, Any] | None) -> StageOutcome:
    """One stage from its result (None: it recorded none) and its history file (rows without a step skipped)."""
    history = _read_json(run_dir / name / HISTORY_FILE)
    rows = (
        [row for row in history if isinstance(row, dict) and "step" in row]
        if isinstance(history, list)
        else []
    )
    if not result:
        return StageOutcome(name, history=rows)
    metrics, ref, seconds = result.get("metrics") or {}, result.get("ref"), result.get("seconds")
    return StageOutcome(name, metrics, ref, seconds, rows, finished=True, cached=bool(result.get("cached")))


# --------------------------------------------------------------------------------------------------
# Figures


def figure_row(panels: int, title: str) -> tuple[Figure, list[Axes]]:
    """A row of panels on matplotlib's Agg canvas (no pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * panels, 3.4), layout="constrained")
    figure.suptitle(title)
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def _series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    rows = [row for row in history if key in row]
    return [row["step"] for row in rows], [row[key] for row in rows]


def training_curves(stage: StageOutcome) -> Figure | None:
    """The stage's logged metrics against its steps, in the panels its history has keys for."""
    panels = [p for p in PANELS if any(key in row for row in stage.history for key in p.keys)]
    if not panels:
        return None
    figure, axes = figure_row(len(panels), f"{stage.name}: training")
    from matplotlib.ticker import MaxNLocator

    steps = "PPO update" if any("score_raw_mean" in row for row in stage.history) else "optimizer step"
    for ax, panel in zip(axes, panels, strict=True):
        for key in panel.keys:
            xs, ys = _series(stage.history, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set(title=panel.title, xlabel=steps)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    return figure


def reward_accuracy(stages: list[StageOutcome]) -> Figure | None:
    """The reward model's pair accuracy against the annotators' majority (train, held out) and the gold reward."""
    reward = next((s for s in stages if stage_spec(s.name).provides == REWARD_MODEL), None)
    bars = (
        {label: reward.metrics[key] for key, label in ACCURACY.items() if key in reward.metrics}
        if reward
        else {}
    )
    if not bars:
        return None
    figure, (ax,) = figure_row(1, f"{reward.name}: pair accuracy")
    drawn = ax.bar(list(bars), list(bars.values()), color=["#9bb7d4", "#3b75af", "#e08a2c"][: len(bars)])
    ax.bar_label(drawn, fmt="%.3f")
    ax.axhline(0.5, linestyle="--", color="gray", label="chance")
    ax.set(ylim=(0, 1.05), ylabel="share of pairs ordered right")
    ax.legend(fontsize="small", loc="lower right")
    return figure


def reward_vs_kl(run: RunOutcome) -> Figure | None:
    """Each evaluated policy's gold reward and reward-model score against its KL from the SFT policy, the SFT
    policy itself at KL 0, and PPO's training trajectory (its rollouts' score against their KL)."""
    panels = [
        (title, metric, key)
        for title, metric, key in KL_PANELS
        if _kl_points(run, metric) or (key and _trajectories(run, key))
    ]
    if not panels:
        return None
    figure, axes = figure_row(len(panels), "reward against KL from the SFT policy")
    colors = {
        name: f"C{i}"
        for i, name in enumerate(dict.fromkeys([*run.evaluations, *(s.name for s in run.stages)]))
    }
    for ax, (title, metric, key) in zip(axes, panels, strict=True):
        for name, xs, ys in _trajectories(run, key) if key else ():
            ax.plot(xs, ys, marker=".", alpha=0.5, color=colors[name], label=f"{name} training rollouts")
        if (reference := _reference(run, metric)) is not None:
            ax.scatter(
                [0.0], [reference], marker="*", s=160, color="black", zorder=3, label="SFT (reference)"
            )
        for name, kl, value in _kl_points(run, metric):
            ax.scatter([kl], [value], s=60, zorder=3, color=colors[name], label=name)
        ax.set(title=title, xlabel="KL(policy ‖ SFT), nats per response", ylabel=title)
        ax.legend(fontsize="small")
    return figure


def _kl_points(run: RunOutcome, metric: str) -> list[tuple[str, float, float]]:
    """(policy stage, KL, policy's value) of each evaluation that has both."""
    return [
        (name, e["kl"], e[f"policy_{metric}"])
        for name, e in run.evaluations.items()
        if "kl" in e and f"policy_{metric}" in e
    ]


def _reference(run: RunOutcome, metric: str) -> float | None:
    """The SFT policy's value: every policy is evaluated against it on the same prompts and seed."""
    return next(
        (e[f"reference_{metric}"] for e in run.evaluations.values() if f"reference_{metric}" in e), None
    )


def _trajectories(run: RunOutcome, key: str) -> list[tuple[str, list[float], list[float]]]:
    """(stage, KL, score) over the updates of each stage whose history logs both."""
    found = []
    for stage in run.stages:
        rows = [row for row in stage.history if key in row and "kl" in row]
        if rows:
            found.append((stage.name, [row["kl"] for row in rows], [row[key] for row in rows]))
    return found


def planned_figures(run: RunOutcome, folder: Path) -> list[tuple[Drawn, Figure | None]]:
    """Every figure the report can show, with where it goes; None where the run has no data for it."""
    curves = [
        (
            Drawn("Training curves", f"{s.name} training curves", folder / f"training-{s.name}.png"),
            training_curves(s),
        )
        for s in run.stages
    ]
    accuracy = Drawn("Reward model", "reward-model pair accuracy", folder / "reward-accuracy.png")
    kl = Drawn(
        "Reward against KL", "reward against KL from the SFT policy", folder / "reward-vs-kl.png", KL_NOTE
    )
    return [*curves, (accuracy, reward_accuracy(run.stages)), (kl, reward_vs_kl(run))]


def draw_figures(run: RunOutcome, folder: Path) -> list[Drawn]:
    """The figures the run has data for, written as PNG into `folder` (emptied of an earlier report's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    drawn = []
    for entry, figure in planned_figures(run, folder):
        if figure is not None:
            figure.savefig(entry.path, dpi=110)
            drawn.append(entry)
    return drawn


# --------------------------------------------------------------------------------------------------
# Markdown


def format_number(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def headline(metrics: Mapping[str, float]) -> str:
    """A stage's headline metrics in one cell: `label value`, or `label first → last` for tracked ones."""
    parts = []
    for key, label in HEADLINE.items():
        if key in metrics:
            parts.append(f"{label} {format_number(metrics[key])}")
        elif f"{key}_first" in metrics and f"{key}_last" in metrics:
            parts.append(
                f"{label} {format_number(metrics[f'{key}_first'])} → {format_number(metrics[f'{key}_last'])}"
            )
    return ", ".join(parts) or "-"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def _time(stage: StageOutcome) -> str:
    if stage.cached:
        return "cached"
    return f"{stage.seconds:.0f} s" if stage.seconds is not None else "-"


def _stages_section(stages: list[StageOutcome]) -> list[str]:
    rows = [
        [
            stage.name,
            f"`{stage.ref}`" if stage.ref else "-",
            _time(stage),
            headline(stage.metrics) if stage.finished else "no result recorded (did not finish)",
        ]
        for stage in stages
    ]
    return (
        ["## Stages", "", *markdown_table(["stage", "registry version", "time", "metrics"], rows)]
        if rows
        else []
    )


def _evaluations_section(evaluations: dict[str, dict[str, float]]) -> list[str]:
    columns = [key for key in EVALUATION if any(key in e for e in evaluations.values())]
    if not columns:
        return []
    rows = [
        [name, *(format_number(e[k]) if k in e else "-" for k in columns)] for name, e in evaluations.items()
    ]
    intro = "Each policy and the SFT policy sampled on the same held-out prompts with the same seed."
    header = ["policy", *(EVALUATION[k] for k in columns)]
    return ["## Policies against the SFT policy", "", intro, "", *markdown_table(header, rows)]


def _figures_section(figures: list[Drawn], run_dir: Path) -> list[str]:
    lines = ["## Figures", ""] if figures else []
    for section in dict.fromkeys(figure.section for figure in figures):
        lines += [f"### {section}", ""]
        for figure in (f for f in figures if f.section == section):
            lines += [f"![{figure.caption}]({figure.path.relative_to(run_dir).as_posix()})", ""]
            lines += [f"*{figure.note}*", ""] if figure.note else []
    return lines


def render(run: RunOutcome, figures: list[Drawn]) -> str:
    lines = [f"# Run `{run.run_dir.name}`", ""]
    if not run.complete:
        lines += ["The run did not finish (no summary.json): this report shows what its stages recorded.", ""]
    if run.base_model:
        base = f" ({headline(run.base_metrics)})" if run.base_metrics else ""
        lines += [f"Base model: `{run.base_model}`{base}", ""]
    lines += _stages_section(run.stages)
    lines += _evaluations_section(run.evaluations)
    lines += _figures_section(figures, run.run_dir)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Entry points


def write_report(run_dir: Path) -> Path:
    """Write `report.md` and its figures (`report/*.png`) for a run directory, from whatever the run left."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    text = render(run, draw_figures(run, run_dir / FIGURES_DIR))
    path = run_dir / REPORT_FILE
    atomic.write_text(path, text)
    return path


def log_report(run_dir: Path, report: Path, tracking: TrackingConfig) -> None:
    """The report's figures as wandb images, and the report with its figures as a `report` artifact, in a run
    of job type "report" in the pipeline's group (nothing with tracking off)."""
    run_dir, report = Path(run_dir), Path(report)
    figures = sorted((report.parent / FIGURES_DIR).glob("*.png"))
    name = f"{run_dir.name}-report"
    config = {"report": str(report)}
    with Tracker(
        tracking, group=run_dir.name, job_type="report", name=name, config=config, run_dir=run_dir
    ) as tracker:
        tracker.log_images({f"report/{figure.stem}": figure for figure in figures})
        tracker.log_files(re.sub(r"[^\w.-]", "-", name), "report", report.parent, [report, *figures])
