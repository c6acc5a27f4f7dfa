"""Pipeline config: typed validation with key paths and hints, YAML, dotted overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhf.config import PipelineConfig, apply_override, dump_config, load_config
from rlhf.errors import ConfigError

MINIMAL = """
model: tiny-llama
stages:
  sft:
    learning_rate: 0.003
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_quickstart_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    assert cfg.model.name == "tiny-llama"
    assert cfg.stages.sft is not None and cfg.stages.sft.learning_rate == pytest.approx(3e-3)
    assert cfg.data.synthetic is not None
    plan = cfg.stages.plan()
    assert list(plan) == ["sft", "reward", "policy-dpo", "policy-ppo", "policy-kto"]
    assert [plan[f"policy-{name}"].algorithm for name in ("dpo", "ppo", "kto")] == ["dpo", "ppo", "kto"]


NAMED_POLICIES = """
model: tiny-llama
stages:
  policy:
    fast: {algorithm: ppo, ppo: {kl_coef: 0.2}}
    slow: {algorithm: dpo, beta: 0.5}
"""


def test_policy_stages_one_or_named(tmp_path: Path) -> None:
    one = load_config(
        _write(tmp_path, MINIMAL), ["stages.policy.algorithm=ppo", "stages.policy.ppo.kl_coef=0.3"]
    )
    assert one.stages.plan()["policy"].ppo.kl_coef == pytest.approx(0.3)
    named = load_config(_write(tmp_path, NAMED_POLICIES), ["stages.policy.fast.ppo.kl_coef=0.4"])
    plan = named.stages.plan()
    assert list(plan) == ["policy-fast", "policy-slow"]
    assert plan["policy-fast"].ppo.kl_coef == pytest.approx(0.4) and plan[
        "policy-slow"
    ].beta == pytest.approx(0.5)
    # the resolved config a run saves loads back to the same stages
    dump_config(named, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml").stages.plan() == plan


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "stages.policy.fast.ppo.kl_cof=1",
            "stages.policy.fast.ppo.kl_cof: unknown key, did you mean kl_coef?",
        ),
        ("stages.policy.slow.bta=1", "stages.policy.slow.bta: unknown key, did you mean beta?"),
        ("stages.policy.fast.algorithm=trpo", "stages.policy.fast.algorithm:"),
        # a stage named like a field (`ppo`) is still a stage's name: the hint is for the stage's own keys
        (
            "stages.policy.ppo={algorithm: ppo, rollout: {top_p: 1}}",
            "stages.policy.ppo.rollout: unknown key (known keys: algorithm,",
        ),
        (
            "stages.policy.fast.ppo.rollout.top_p=0.9",
            "stages.policy.fast.ppo.rollout.top_p: 0.9 truncates the sampling distribution, but the policy's "
            "log-probs, ratios and KL use the full softmax; leave top_p at 1.0",
        ),
        ("stages.policy.fast.ppo.rollout.top_k=40", "stages.policy.fast.ppo.rollout.top_k: 40 truncates"),
    ],
)
def test_named_policy_stage_errors_name_the_key(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, NAMED_POLICIES), [override])
    assert message in str(err.value)


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.seed == 0
    assert cfg.tracking.backend == "wandb"
    assert cfg.distributed.num_processes == 1
    assert cfg.stages.sft.lora is None


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, MINIMAL.replace("0.003", "fast")))
    assert "stages.sft.learning_rate: expected a number, got 'fast'" in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "pipeline.yaml"))


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"stages\.sft\.lerning_rate: unknown key, did you mean learning_rate\?"
    ):
        load_config(_write(tmp_path, MINIMAL.replace("learning_rate", "lerning_rate")))


def test_unknown_key_in_nested_section_and_dataclass(tmp_path: Path) -> None:
    text = MINIMAL + "data:\n  synthetic:\n    num_sft_trian: 10\n"
    with pytest.raises(
        ConfigError, match=r"data\.synthetic\.num_sft_trian: unknown key, did you mean num_sft_train\?"
    ):
        load_config(_write(tmp_path, text))


def test_missing_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model: missing field"):
        load_config(_write(tmp_path, "stages:\n  sft: {}\n"))


def test_no_stage_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no stage configured"):
        load_config(_write(tmp_path, "model: tiny-llama\n"))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.yaml:2: not valid YAML"):
        load_config(_write(tmp_path, "model: tiny-llama\n  bad: indent\nstages: {}\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config("nope.yaml")


def test_dotted_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, MINIMAL),
        [
            "stages.sft.max_steps=50",
            "stages.sft.lora.r=4",
            "seed=7",
            "tracking=none",
            "stages.sft.packing=true",
        ],
    )
    assert cfg.stages.sft.max_steps == 50
    assert cfg.stages.sft.lora is not None and cfg.stages.sft.lora.r == 4
    assert cfg.seed == 7
    assert cfg.tracking.backend == "none"
    assert cfg.stages.sft.packing is True


def test_bad_override_value_is_reported_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stages\.sft\.max_steps: expected an integer, got 'many'"):
        load_config(_write(tmp_path, MINIMAL), ["stages.sft.max_steps=many"])


def test_override_needs_key_and_value() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "stages.sft.max_steps")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL), ["stages.sft.max_steps=5"])
    dump_config(cfg, tmp_path / "resolved.yaml")
    again = PipelineConfig.model_validate(yaml.safe_load((tmp_path / "resolved.yaml").read_text()))
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()
    assert cfg.fingerprint() != load_config(_write(tmp_path, MINIMAL)).fingerprint()


def test_synthetic_config_errors_name_the_field(tmp_path: Path) -> None:
    text = MINIMAL + "data:\n  synthetic:\n    annotations_per_task: 9\n"
    with pytest.raises(ConfigError, match="annotations_per_task"):
        load_config(_write(tmp_path, text))
