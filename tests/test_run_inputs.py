"""What a run refuses before it builds anything: a foreign --run-dir, a stage name not in the pipeline, a
data file that does not exist. Each is one line, and nothing is written: no run directory, no synthetic
data, no base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.launch import start_stage
from rlhf.pipeline import RunOptions, run_pipeline
from rlhf.workspace import run_dir_for
from tests.conftest import pipeline_config
from tests.conftest import run_cli as rlhf

CONFIG = """
name: inputs-test
seed: 0
model: tiny-llama
data:
  synthetic: {num_sft_train: 64, num_sft_eval: 8, num_preference_tasks: 8}
stages:
  sft: {max_steps: 1, max_length: 32}
tracking: {backend: none}
"""


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    return pipeline_config(tmp_path, CONFIG)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_foreign_run_dir_is_refused_untouched(config_file: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine", encoding="utf-8")
    done = rlhf("run", str(config_file), "--run-dir", str(foreign))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --run-dir {foreign}: not empty (thesis.tex) and not a run of 'inputs-test'; "
        "give a new or empty directory"
    )
    assert _tree(foreign) == ["thesis.tex"]
    assert not (tmp_path / "runs").exists()


def test_a_run_of_another_pipeline_is_refused(config_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"pipeline": "quickstart"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"a run of pipeline 'quickstart' and not a run of 'inputs-test'"):
        run_pipeline(load_config(config_file), other)
    assert _tree(other) == ["run.json"]


@pytest.mark.parametrize("kept", ["run.json", "config.yaml"])
def test_a_run_of_the_same_pipeline_is_taken_back(config_file: Path, tmp_path: Path, kept: str) -> None:
    """Resuming or rerunning into a run's own directory, known by its run record or its saved config."""
    again = tmp_path / "again"
    again.mkdir()
    (again / ".node1").mkdir()  # another node's folder, there before this node's files
    assert run_dir_for(load_config(config_file), again) == again  # empty but for other nodes' folders
    (again / "sft").mkdir()
    (again / kept).write_text(
        json.dumps({"pipeline": "inputs-test", "name": "inputs-test"}), encoding="utf-8"
    )
    assert run_dir_for(load_config(config_file), again) == again


@pytest.mark.parametrize(
    "options",
    [RunOptions(only="polcy"), RunOptions(start_from="rward"), RunOptions(force=frozenset({"sfft"}))],
)
def test_a_bad_stage_name_is_refused_before_any_directory(
    config_file: Path, tmp_path: Path, options: RunOptions
) -> None:
    with pytest.raises(
        ConfigError, match=r"^no stage '\w+' in this pipeline \(its stages: data, sft, evaluate\)"
    ):
        run_pipeline(load_config(config_file), tmp_path / "run", options)
    with pytest.raises(ConfigError, match=r"unknown stage 'polcy'"):
        start_stage(load_config(config_file), "polcy", tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.sft_train", "data.sft_train"),
        ("data.preferences.files=[{path}]", "data.preferences.files[0]"),
        ("stages.sft.eval_dataset", "stages.sft.eval_dataset"),
    ],
)
def test_a_missing_data_file_is_named_before_anything_is_built(
    config_file: Path, tmp_path: Path, override: str, key: str
) -> None:
    missing = tmp_path / "data" / "missing.jsonl"
    text = override.format(path=missing) if "=" in override else f"{override}={missing}"
    cfg = load_config(config_file, [text])
    for attempt in (lambda: run_pipeline(cfg), lambda: start_stage(cfg, "sft")):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert str(err.value) == f"{key}: {missing}: no such file or directory"
    assert not (tmp_path / "runs").exists()  # no run directory: no synthetic task, no base model
