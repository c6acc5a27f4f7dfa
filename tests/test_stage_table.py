"""The stage table is the one place a stage is defined: no other module of the library or the stage programs
names a stage, its registry name or its program, and everything that lists stages follows the table."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from rlhf.config import validate_config
from rlhf.errors import ConfigError
from rlhf.pipeline import DATA, EVALUATE, stage_graph
from rlhf.stage_table import (
    REWARD_MODEL,
    STAGES,
    StagesConfig,
    latest_version_of,
    program_spec,
    stage_key,
    stage_position,
    stage_spec,
)

REPO = Path(__file__).resolve().parents[1]
# Where one of these words means something other than a stage, with why.
OTHER_MEANINGS = {
    ("rlhf/eval.py", "policy"): "the evaluated model's role beside the reference, and its samples' column",
    ("rlhf/run_report.py", "policy"): "the evaluation table's column heading",
    ("rlhf/settings.py", "reward"): "PPO's value_model option: a value model copied from the reward model",
    ("rlhf/ppo_models.py", "reward"): "the same option, where PPO builds its value model",
}


def _stage_words() -> set[str]:
    return {word for spec in STAGES for word in (spec.name, spec.publishes_as, spec.program)}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]  # fmt: skip


def test_no_module_but_the_table_names_a_stage() -> None:
    words = _stage_words()
    sources = sorted([*(REPO / "rlhf").rglob("*.py"), *(REPO / "stages").glob("*.py")])
    found = [
        f"{path.relative_to(REPO)}:{line}: {value!r}"
        for path in sources
        if path.name != "stage_table.py"
        for line, value in _string_constants(path)
        if value in words and (str(path.relative_to(REPO)), value) not in OTHER_MEANINGS
    ]
    assert found == []


def test_the_scan_finds_a_stage_named_outside_the_table(tmp_path: Path) -> None:
    """The check above can fail: a module that names a stage is caught."""
    module = tmp_path / "leak.py"
    module.write_text('PUBLISHED = {"sft": "sft-policy"}\nlog = "stages.reward"\n', encoding="utf-8")
    assert {value for _, value in _string_constants(module)} & _stage_words() == {
        "sft", "sft-policy", "stages.reward"
    }  # fmt: skip


def test_the_stages_section_holds_one_key_per_entry_with_its_settings() -> None:
    assert list(StagesConfig.model_fields) == [spec.name for spec in STAGES]
    for spec in STAGES:
        cfg = validate_config({"model": "tiny-llama", "stages": {spec.name: {}}})
        assert type(cfg.stages.plan()[spec.name]) is spec.config


def test_every_entry_is_a_program_with_the_stage_contract() -> None:
    seen: list[str] = []
    for spec in STAGES:
        program = importlib.import_module(spec.program)
        assert callable(program.main)
        first = next(iter(inspect.signature(program.run).parameters.values()))
        assert first.annotation in (spec.config, spec.config.__name__), spec.name
        assert program_spec(spec.program) is spec
        assert spec.starts_from is None or spec.starts_from in seen  # dependency order: earlier stages only
        seen.append(spec.name)
    providers = [spec.provides for spec in STAGES if spec.provides]
    assert len(providers) == len(set(providers)) and REWARD_MODEL in providers


def test_run_names_resolve_through_the_table() -> None:
    assert stage_spec("policy-ppo") is stage_spec("policy")
    assert stage_key("policy-ppo") == "stages.policy.ppo"
    assert stage_position("sft") < stage_position("reward") < stage_position("policy-dpo")
    assert stage_position("data") is None
    assert latest_version_of(REWARD_MODEL) == "registry:reward-model:latest"
    with pytest.raises(ConfigError, match=r"^unknown stage 'nosuch' \(stages: sft, reward, policy\)$"):
        stage_spec("nosuch")


def test_the_graph_runs_the_stages_in_the_tables_order() -> None:
    raw = {"model": "tiny-llama", "stages": {"policy": {"ppo": {"algorithm": "ppo"}, "dpo": {"algorithm": "dpo"}},
                                             "reward": {}, "sft": "registry:sft-policy:v1"}}  # fmt: skip
    assert stage_graph(validate_config(raw)) == [DATA, "sft", "reward", "policy-ppo", "policy-dpo", EVALUATE]
