"""Console summaries: what a run produced, its headline numbers, and where everything went."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rlhf.pipeline import PipelineRun
from rlhf.stage import describe_result

# Metrics worth a column, in display order, with their headings.
HEADLINE = {
    "gold_reward": "gold reward",
    "eos_share": "ends with EOS",
    "response_tokens": "resp. tokens",
    "train_loss_last": "train loss",
    "eval_loss": "eval loss",
}


def print_pipeline_summary(run: PipelineRun, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"run {run.run_dir.name}")
    table.add_column("model", no_wrap=True)
    for heading in HEADLINE.values():
        table.add_column(heading, justify="right")
    table.add_column("time", justify="right")
    if run.base_metrics:
        table.add_row("base", *_cells(run.base_metrics), "")
    for result in run.results:
        table.add_row(result.stage, *_cells(result.metrics), f"{result.seconds:.0f}s")
    console.print(table)
    for result in run.results:
        console.print(f"{result.stage}: {describe_result(result)}", soft_wrap=True)
    console.print(f"run directory (config, logs, wandb): {run.run_dir}", soft_wrap=True)


def _cells(metrics: dict[str, float]) -> list[str]:
    return [f"{metrics[key]:.3f}" if key in metrics else "-" for key in HEADLINE]
