"""Dotted overrides anywhere after the subcommand, in the order typed; anything else still refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.cli import build_parser
from rlhf.cli_args import parse_with_overrides
from rlhf.launch import stage_parser
from rlhf.stage_table import program_spec
from tests.conftest import pipeline_config
from tests.conftest import run_cli as rlhf


def parse(line: str):
    return parse_with_overrides(build_parser(), line.split())


@pytest.mark.parametrize(
    "line",
    [
        "run cfg a=1 b=2 c=3 --only sft --force reward",
        "run cfg --only sft --force reward a=1 b=2 c=3",
        "run cfg a=1 --only sft b=2 --force reward c=3",
        "run --only sft cfg a=1 b=2 --force reward c=3",
    ],
)
def test_run_takes_overrides_before_between_and_after_options(line: str) -> None:
    args = parse(line)
    assert (args.config, args.only, args.force) == ("cfg", "sft", ["reward"])
    assert args.overrides == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize(
    ("line", "options"),
    [
        ("stage sft cfg a=1 --run-dir r b=2 --debug c=3", {"stage": "sft", "run_dir": "r", "debug": True}),
        ("stage sft --run-dir r cfg a=1 b=2 c=3", {"stage": "sft", "run_dir": "r"}),
        ("plan cfg a=1 --json b=2 --nodes 2 c=3", {"json": True, "nodes": 2}),
        ("plan cfg --model-shape registry:rm:v1=llama-3.1-8b-shape a=1 b=2 c=3",
         {"model_shape": ["registry:rm:v1=llama-3.1-8b-shape"]}),  # an option's value stays the option's
        ("data synth a=1 --out d b=2 --seed 3 c=3", {"out": "d", "seed": 3}),
        ("data synth --out d a=1 b=2 c=3", {"out": "d"}),
    ],
)  # fmt: skip
def test_every_command_with_overrides_takes_them_anywhere(line: str, options: dict[str, object]) -> None:
    args = parse(line)
    assert {key: getattr(args, key) for key in options} == options
    assert args.overrides == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize(
    "argv",
    [
        "--config cfg a=1 --run-dir r b=2 --local_rank=0 c=3",
        "a=1 --config cfg b=2 c=3",
        "--config cfg --name policy-ppo a=1 b=2 c=3",
    ],
)
def test_a_stage_program_takes_overrides_anywhere(argv: str) -> None:
    args = parse_with_overrides(stage_parser(program_spec("stages.policy")), argv.split())
    assert args.config == "cfg" and args.overrides == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize(
    "line",
    [
        "run cfg --only sft stray",  # not an override
        "run cfg a=1 stray",  # not one either, though the overrides' positional would take it
        "run cfg a=1 --only sft -x=1",  # an option it does not know
        "registry ls a=1",  # a command that takes no overrides
    ],
)
def test_anything_else_left_over_is_refused_as_argparse_refuses_it(
    line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(line)
    assert exit_.value.code == 2
    assert f"error: unrecognized arguments: {line.split()[-1]}" in capsys.readouterr().err


def test_a_stage_program_refuses_a_stray_token(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_with_overrides(
            stage_parser(program_spec("stages.sft")), ["--config", "cfg", "--debug", "stray"]
        )
    assert exit_.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err


def test_plan_reads_overrides_after_its_options_and_the_last_one_wins(tmp_path: Path) -> None:
    config = pipeline_config(tmp_path, "model: tiny-llama\nstages:\n  sft: {max_steps: 3}\ntracking: none\n")
    checkpointing = "stages.sft.gradient_checkpointing"

    def planned(*args: str) -> bool:
        done = rlhf("plan", str(config), *args)
        assert done.returncode == 0, done.stderr[-3000:]
        (sft,) = [stage for stage in json.loads(done.stdout)["stages"] if stage["stage"] == "sft"]
        return sft["gradient_checkpointing"]

    assert planned("--json", f"{checkpointing}=true", "stages.sft.max_steps=5") is True
    assert planned(f"{checkpointing}=true", "--json", f"{checkpointing}=false") is False
    assert planned(f"{checkpointing}=false", "--json", f"{checkpointing}=true") is True
    stray = rlhf("plan", str(config), "--json", "stray")
    assert stray.returncode == 2 and "rlhf: error: unrecognized arguments: stray" in stray.stderr
