"""A console worth reading: our lines and one bar on the console, the libraries' chatter in stage.log, -v for all
of it; the closing summary fits the terminal it prints to."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from rlhf.pipeline import PipelineRun
from rlhf.progress import MARK, MarkReader, RichBar, stage_progress
from rlhf.quiet_console import VERBOSE_ENV, is_console_line
from rlhf.report import HEADLINE, print_pipeline_summary
from rlhf.settings import ModelSpec
from rlhf.stage import StageResult
from rlhf.stage_logs import run_logged
from tests.conftest import REPO

# Run in a fresh process: the quiet set-up changes process-wide logging (transformers', DeepSpeed's, warnings).
CHATTY_STAGE = """
import logging, sys, warnings
from pathlib import Path
from rlhf.distributed import configure_logging, rank_info
from rlhf.stage_logs import logged_to

configure_logging(rank_info())
with logged_to(Path(sys.argv[1])):
    logging.getLogger("rlhf.launch").info("sft: done in 3s")
    print({"loss": "0.6946", "grad_norm": "1.334"})  # the trainer's printed dict
    warnings.warn("`gradient_checkpointing` is deprecated", FutureWarning)
    from transformers.utils import logging as transformers_logging
    transformers_logging.get_logger("transformers.modeling_utils").warning("LOAD REPORT from: base-model")
    from deepspeed.utils import logger as deepspeed_logger  # its own stdout handler, propagation off
    deepspeed_logger.warning("Setting accelerator to CPU.")
    logging.getLogger("trl").error("a library error")
"""
CHATTER = ("'loss': '0.6946'", "FutureWarning", "LOAD REPORT", "Setting accelerator to CPU")


def run_chatty_stage(tmp_path: Path, verbose: bool) -> tuple[str, str]:
    """(what reached the console, what the stage log holds)."""
    log = tmp_path / "stage.log"
    env = {"PATH": "/usr/bin:/bin", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHATTY_STAGE, str(log)], capture_output=True, text=True,
                          env=env | ({VERBOSE_ENV: "1"} if verbose else {}), cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr, log.read_text()


def test_quiet_console_keeps_library_chatter_in_the_stage_log(tmp_path: Path) -> None:
    console, log = run_chatty_stage(tmp_path, verbose=False)
    assert "rlhf.launch: sft: done in 3s" in console
    assert "a library error" in console  # anyone's errors still show
    for chatter in CHATTER:
        assert chatter not in console
        assert chatter in log
    assert "sft: done in 3s" in log


def test_verbose_console_shows_everything(tmp_path: Path) -> None:
    console, log = run_chatty_stage(tmp_path, verbose=True)
    for chatter in CHATTER:
        assert chatter in console
    assert "'loss': '0.6946'" in log and "sft: done in 3s" in log


LAUNCHED_RANK = """
import sys
print("02:08:44 [rank 0] rlhf.launch: sft: published sft-policy:v1", file=sys.stderr)
print("{'loss': '0.6946'}")
print(MARK + '{"stage": "sft", "unit": "steps", "total": 4, "done": 2, "numbers": {"loss": 0.7}}', flush=True)
print(MARK + '{"stage": "sft", "unit"', flush=True)  # cut short: output like any other, never a crash
print("Traceback (most recent call last): ValueError: boom", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_launched_stage_shows_its_own_lines_and_its_tail_when_it_fails(
    tmp_path: Path, exit_code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    log = tmp_path / "stage.log"
    script = f"MARK = {MARK!r}\n" + LAUNCHED_RANK
    code = run_logged([sys.executable, "-c", script, str(exit_code)], {"PATH": "/usr/bin:/bin"}, log)
    console = capsys.readouterr()
    assert code == exit_code
    assert "rlhf.launch: sft: published sft-policy:v1" in console.err
    assert "'loss'" not in console.out + console.err.partition("last lines of")[0]
    assert ("ValueError: boom" in console.err) == (exit_code != 0)  # the failing rank's last words
    written = log.read_text()
    assert "'loss': '0.6946'" in written and "ValueError: boom" in written
    assert written.count(MARK) == 1 and MARK + '{"stage": "sft", "unit"\n' in written  # only the broken one
    assert MARK not in console.out  # progress is drawn, never printed


def test_own_lines_are_told_from_library_lines() -> None:
    assert is_console_line("02:08:44 [rank 1] rlhf.launch: reward: done in 9s")
    assert is_console_line("02:08:44 [node 0] stages.sft: sft: 800 rows")
    assert is_console_line("error: [rank 0] sft: no data")
    assert not is_console_line("02:08:44 [rank 0] transformers.modeling_utils: LOAD REPORT")
    assert not is_console_line(
        "[2026-12-08 01:58:02,426] [WARNING] [real_accelerator.py:213] Setting accelerator"
    )
    assert not is_console_line("{'loss': '0.6946'}")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_stage_bar_shows_steps_numbers_and_time_left() -> None:
    terminal = Terminal()
    bar = RichBar("sft", "steps", 500, terminal)
    bar.advance(120, {"loss": 3.0951})
    bar.progress.refresh()
    bar.close()
    drawn = terminal.getvalue()
    assert (
        "sft" in drawn and "120/500" in drawn and "steps" in drawn and "loss 3.1" in drawn and "ETA" in drawn
    )


def test_launched_marks_become_one_bar_and_no_bar_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.setenv("RLHF_LAUNCHED", "1")
    marks = stage_progress("policy-ppo", "updates", 3, is_main=True)
    for update in (1, 2, 3):
        marks.advance(update, {"score": 0.5, "KL": 0.1})
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith(MARK) for line in lines)
    last = json.loads(lines[-1].removeprefix(MARK))
    assert last == {"stage": "policy-ppo", "unit": "updates", "total": 3, "done": 3,
                    "numbers": {"score": 0.5, "KL": 0.1}}  # fmt: skip
    assert (
        type(stage_progress("sft", "steps", 3, is_main=False)).__name__ == "NoBar"
    )  # other ranks draw nothing

    monkeypatch.setattr(sys, "stderr", Terminal())
    reader = MarkReader()
    reader.read(lines[-1])
    assert isinstance(reader.bar, RichBar) and reader.bar.progress.tasks[0].completed == 3
    reader.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a CI log: nothing drawn
    quiet_reader = MarkReader()
    quiet_reader.read(lines[-1])
    assert type(quiet_reader.bar).__name__ == "NoBar"


def summary_run(tmp_path: Path) -> PipelineRun:
    run = PipelineRun(run_dir=tmp_path / "quickstart-20261208-015752", base_model=ModelSpec(name="tiny-llama"),
                      base_metrics={"gold_reward": 0.1097, "eos_share": 0.1875, "response_tokens": 10.6875})  # fmt: skip
    metrics = {key: 10.6875 for key in HEADLINE}
    for stage in ("sft", "reward", "policy-dpo", "policy-ppo", "policy-kto"):
        run.results.append(StageResult(stage=stage, output_dir=tmp_path / stage, metrics=dict(metrics), seconds=29.0,
                                       ref=f"{stage}:v1"))  # fmt: skip
    return run


@pytest.mark.parametrize("width", [60, 80, 100])
def test_the_closing_summary_fits_a_narrow_terminal_without_cutting_a_cell(
    tmp_path: Path, width: int
) -> None:
    out = io.StringIO()
    print_pipeline_summary(summary_run(tmp_path), Console(file=out, width=width))
    table = out.getvalue().split("\nsft: published")[0]
    assert "…" not in table
    assert all(len(line) <= width for line in table.splitlines())
    for stage in ("base", "sft", "reward", "policy-dpo", "policy-ppo", "policy-kto"):
        assert f"│ {stage} " in table
    assert "10.688" in table and "29s" in table
    header = next(line for line in table.splitlines() if line.startswith("┃"))
    columns = header.count("┃") - 1
    assert columns >= 3 + (width >= 80)  # model, gold reward, time, and more where there is room
    said = "more column(s) in report.md and summary.json" in table  # what was left out is said
    assert said == (columns < len(HEADLINE) + 2)


def test_the_closing_summary_shows_every_column_where_it_fits(tmp_path: Path) -> None:
    out = io.StringIO()
    print_pipeline_summary(summary_run(tmp_path), Console(file=out, width=200))
    text = out.getvalue()
    assert all(heading in text for heading in HEADLINE.values())
    assert "more column(s)" not in text
    assert text.rstrip().splitlines()[-1].startswith("run directory")  # the report's line when there is one


def test_piped_summary_is_never_cut(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from tests.test_quiet_console import summary_run
        from rlhf.report import print_pipeline_summary
        print_pipeline_summary(summary_run(Path({str(tmp_path)!r})))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(heading in done.stdout for heading in HEADLINE.values()) and "…" not in done.stdout
