"""Console summaries: what a run produced, its headline numbers, and where everything went."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlhf.console import output_console
from rlhf.eval import PolicyEvaluation
from rlhf.pipeline import PipelineRun
from rlhf.runs import RunRecord

# Metrics worth a column, in display order, with their headings.
HEADLINE = {
    "gold_reward": "gold reward",
    "eos_share": "ends with EOS",
    "response_tokens": "resp. tokens",
    "kl": "KL from SFT",
    "accuracy_gold": "RM acc gold",
    "accuracy": "RM acc maj.",
    "train_loss_last": "train loss",
}


def print_pipeline_summary(run: PipelineRun, console: Console | None = None) -> None:
    """One table: the base model, then each stage's product, with the run's headline numbers; on a terminal too
    narrow for every column, the last ones are left out (summary.json and report.md hold them all)."""
    console = console or output_console()
    rows = _summary_rows(run)
    headings = list(HEADLINE)
    while len(headings) > 1 and _narrowest(_summary_table(run, rows, headings)) > console.width:
        headings.pop()
    table = _summary_table(run, rows, headings)
    if left_out := len(HEADLINE) - len(headings):
        table.caption = f"{left_out} more column(s) in report.md and summary.json"
    console.print(table)
    for stage, evaluation in run.evaluations.items():
        shown = {k: v for k, v in evaluation.metrics.items() if "win_rate" in k}
        console.print(
            f"{stage} vs SFT: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()), soft_wrap=True
        )
    for result in run.results:
        console.print(f"{result.stage}: {result.describe()}", soft_wrap=True)
    if run.skipped:
        console.print(f"skipped, after the --only stage: {', '.join(run.skipped)}", soft_wrap=True)
    console.print(f"run directory (config, record, logs, wandb): {run.run_dir}", soft_wrap=True)
    if run.report:
        console.print(f"report: {run.report}", soft_wrap=True)


def _narrowest(table: Table) -> int:
    """The fewest columns `table` takes with no cell cut: headings wrapped at spaces, cells whole (each column
    its padding and one border)."""
    widest = [max([*map(len, str(column.header).split()), *(len(str(cell)) for cell in column.cells)])
              for column in table.columns]  # fmt: skip
    return 1 + sum(width + 3 for width in widest)


def _summary_rows(run: PipelineRun) -> list[tuple[str, dict[str, float], str]]:
    """(model, its metrics, time) for the base model and each stage; a policy's with its closing evaluation."""
    rows = [("base", run.base_metrics, "")] if run.base_metrics else []
    for result in run.results:
        metrics = dict(result.metrics)
        if evaluation := run.evaluations.get(result.stage):  # against the SFT policy on the same prompts
            evaluated = evaluation.metrics
            metrics |= {k.removeprefix("policy_"): v for k, v in evaluated.items() if k.startswith("policy_")}
            metrics["kl"] = evaluated.get("kl", float("nan"))
        rows.append((result.stage, metrics, "cached" if result.cached else f"{result.seconds:.0f}s"))
    return rows


def _summary_table(
    run: PipelineRun, rows: list[tuple[str, dict[str, float], str]], headings: list[str]
) -> Table:
    table = Table(title=f"run {run.run_dir.name}")
    table.add_column("model", no_wrap=True)
    for key in headings:
        table.add_column(HEADLINE[key], justify="right", min_width=max(map(len, HEADLINE[key].split())))
    table.add_column("time", justify="right", no_wrap=True)
    for model, metrics, seconds in rows:
        cells = [f"{metrics[key]:.3f}" if key in metrics else "-" for key in headings]
        table.add_row(model, *cells, seconds)
    return table


def print_evaluation(evaluation: PolicyEvaluation, console: Console | None = None, samples: int = 8) -> None:
    """The headline metrics, then a few sample generations side by side."""
    console = console or output_console()
    metrics = Table(title="policy vs reference")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in evaluation.metrics.items():
        metrics.add_row(key, f"{value:.4f}")
    console.print(metrics)
    table = Table(title="samples")
    for column in evaluation.columns:
        table.add_column(column)
    for row in evaluation.rows[:samples]:
        table.add_row(*(f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in row))
    console.print(table)


def print_runs(records: list[RunRecord], console: Console | None = None) -> None:
    """`rlhf status`: one line per run, oldest first, with each stage's state."""
    console = console or output_console()
    if not records:
        console.print("no runs yet")
        return
    table = Table(title=f"runs in {Path(records[0].run_dir).parent}")
    table.add_column("run", no_wrap=True)
    for column in ("started", "status", "time", "stages"):
        table.add_column(column)
    for record in records:
        stages = " ".join(f"{name}:{entry.status}" for name, entry in record.stages.items())
        seconds = f"{record.seconds:.0f}s" if record.seconds is not None else "-"
        started = record.started_at[5:16].replace("T", " ")  # MM-DD hh:mm
        table.add_row(Path(record.run_dir).name, started, record.state, seconds, stages)
    console.print(table)


def print_run(record: RunRecord, console: Console | None = None) -> None:
    """`rlhf status RUN`: the run's stages, each with its state, version, time and log; its error, report."""
    console = console or output_console()
    table = Table(title=f"{record.run_dir} ({record.state}, started {record.started_at})")
    for column in ("stage", "status", "version", "fingerprint", "time", "log"):
        table.add_column(column)
    for name, entry in record.stages.items():
        seconds = f"{entry.seconds:.0f}s" if entry.seconds is not None else "-"
        table.add_row(
            name, entry.status, entry.ref or "-", entry.fingerprint or "-", seconds, entry.log or "-"
        )
    console.print(table)
    if record.error:
        console.print(f"error: {record.error}", soft_wrap=True)
    if record.report:
        console.print(f"report: {record.report}", soft_wrap=True)
