"""The annotation rounds' report: per round, the policy's gold reward and the reward model's accuracy, as a
table (`rounds.md`), a figure (`rounds.png`) and the numbers (`rounds.json`) in the rounds' folder, and as a
wandb run of job type "rounds" (one history row per round, the figure, the report as an artifact)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf import atomic
from rlhf.config import TrackingConfig
from rlhf.run_report import figure_row, format_number, markdown_table
from rlhf.tracking import Tracker

# metric -> column heading; a round that lacks one shows "-"
COLUMNS = {
    "policy_gold_reward": "policy gold",
    "gold_win_rate": "gold win rate vs SFT",
    "kl": "KL vs SFT",
    "rm_accuracy": "RM accuracy (held-out votes)",
    "rm_accuracy_gold": "RM accuracy (gold)",
    "rm_pairs_train": "RM pairs",
}


def write_rounds_report(folder: Path, rounds: list[dict[str, Any]]) -> Path:
    """Write the report of `rounds` (each a round's state) into `folder`; returns the markdown's path."""
    atomic.write_text(folder / "rounds.json", json.dumps(rounds, indent=2) + "\n")
    figure = _gold_and_accuracy(rounds)
    lines = [f"# Annotation rounds ({len(rounds)})", ""]
    sft_gold = next(
        (r["metrics"]["reference_gold_reward"] for r in rounds if "reference_gold_reward" in r["metrics"]),
        None,
    )
    if sft_gold is not None:
        lines += [f"SFT policy (round 0) gold reward: {format_number(sft_gold)}", ""]
    header = ["round", "sampled from", "tasks", *COLUMNS.values(), "versions"]
    rows = [
        [str(r["round"]), r.get("sampled_from") or "-", str(r["tasks"]),
         *(format_number(r["metrics"][key]) if key in r["metrics"] else "-" for key in COLUMNS),
         ", ".join(r["refs"].values()) or "-"]
        for r in rounds
    ]  # fmt: skip
    lines += markdown_table(header, rows)
    if figure is not None:
        figure.savefig(folder / "rounds.png", dpi=110)
        lines += ["![gold reward and reward-model accuracy per round](rounds.png)", ""]
    atomic.write_text(folder / "rounds.md", "\n".join(lines))
    return folder / "rounds.md"


def _gold_and_accuracy(rounds: list[dict[str, Any]]):
    """Two panels over the rounds: the policy's gold reward (round 0: SFT) and the reward model's accuracy."""
    trained = [r for r in rounds if "policy_gold_reward" in r["metrics"]]
    if not trained:
        return None
    figure, (gold, accuracy) = figure_row(2, "annotation rounds")
    xs = [0, *(r["round"] for r in trained)]
    ys = [
        trained[0]["metrics"].get("reference_gold_reward", float("nan")),
        *(r["metrics"]["policy_gold_reward"] for r in trained),
    ]
    gold.plot(xs, ys, marker="o")
    gold.set(xlabel="round (0: SFT)", ylabel="gold reward", title="policy gold reward")
    for key, label in (("rm_accuracy", "held-out votes"), ("rm_accuracy_gold", "gold")):
        points = [(r["round"], r["metrics"][key]) for r in trained if key in r["metrics"]]
        if points:
            accuracy.plot(*zip(*points, strict=True), marker="o", label=label)
    accuracy.set(xlabel="round", ylabel="accuracy", title="reward-model accuracy")
    accuracy.legend()
    for axes in (gold, accuracy):
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def log_rounds(folder: Path, rounds: list[dict[str, Any]], tracking: TrackingConfig) -> str | None:
    """The rounds' figures in wandb: a history row per round (step = round), the figure and the report as a
    `report` artifact, in a run grouped with the rounds' folder name; returns the run id (None: tracking off)."""
    config = {"rounds": len(rounds), "folder": str(folder)}
    with Tracker(tracking, group=folder.name, job_type="rounds", name=f"{folder.name}-rounds", config=config,
                 run_dir=folder) as tracker:  # fmt: skip
        for state in rounds:
            tracker.log(
                {f"rounds/{key}": value for key, value in state["metrics"].items()}, step=state["round"]
            )
        files = [
            folder / name for name in ("rounds.md", "rounds.png", "rounds.json") if (folder / name).is_file()
        ]
        if (folder / "rounds.png").is_file():
            tracker.log_images({"rounds/figure": folder / "rounds.png"})
        tracker.log_files(f"{folder.name}-rounds", "report", folder, files)
        return tracker.run_id
