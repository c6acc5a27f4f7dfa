"""The stage table: every stage a pipeline can run, declared once.

An entry says all there is to know about a stage from outside it: its name (its section under `stages:`, its
run name, its wandb job type), its program (the module whose `run(cfg, ctx)` does the work, started as
`python -m <program>`), its settings class, the stage whose published model it starts from, the data it
reads, and the registry name it publishes as. The `stages:` config section, the pipeline's graph and
fingerprints, `rlhf stage NAME` and the launcher all read this table; no other module names a stage.

Adding a stage is one file in `stages/` and one entry in `STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Discriminator, Field, Tag, create_model

from rlhf.errors import ConfigError
from rlhf.registry import LATEST, REF_PREFIX
from rlhf.settings import PolicyStageConfig, RewardStageConfig, Schema, SFTStageConfig, TrainStageConfig

# The input a reward model fills: PPO scores with it, the evaluation judges by it
REWARD_MODEL = "reward_model"


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline, as the pipeline, the config and the launcher see it."""

    name: str  # its section under `stages:`, its run name, its wandb job type
    program: str  # the module that runs it: `run(cfg, ctx)` and `main(argv)` (`python -m <program>`)
    config: type[TrainStageConfig]  # the settings its section holds
    publishes_as: str  # the registry model name of its product
    starts_from: str | None  # the stage whose published model it starts from; None: the pipeline's model
    reads: tuple[str, ...]  # the data inputs it reads (by role), hashed into its fingerprint
    provides: str | None = None  # the input its published version fills for the stages after it
    named_by: str | None = None  # set: the section may hold several named stages, each stating this key
    evaluated: bool = False  # its product is evaluated at the end of a run against the model it started from


STAGES: tuple[StageSpec, ...] = (
    StageSpec(name="sft", program="stages.sft", config=SFTStageConfig, publishes_as="sft-policy",
              starts_from=None, reads=("sft_train", "sft_eval", "eval_prompts")),
    StageSpec(name="reward", program="stages.reward", config=RewardStageConfig, publishes_as="reward-model",
              starts_from="sft", reads=("preferences",), provides=REWARD_MODEL),
    StageSpec(name="policy", program="stages.policy", config=PolicyStageConfig, publishes_as="policy",
              starts_from="sft", reads=("preferences", "unpaired", "eval_prompts"), named_by="algorithm",
              evaluated=True),
)  # fmt: skip
_BY_NAME = {spec.name: spec for spec in STAGES}


# --------------------------------------------------------------------------------------------------
# Lookups: a run name is the entry's name, or `<name>-<own name>` for one of several named stages


def stage_spec(stage: str) -> StageSpec:
    """The entry that runs `stage` (a run name: `policy-ppo` is run by the `policy` entry)."""
    section = stage.partition("-")[0]
    if section not in _BY_NAME:
        raise ConfigError(f"unknown stage '{stage}' (stages: {', '.join(_BY_NAME)})")
    return _BY_NAME[section]


def stage_position(name: str) -> int | None:
    """Where the stage a run name belongs to stands in the table (its dependency order); None for a name that
    is no stage's (e.g. a run directory's `data` folder)."""
    spec = _BY_NAME.get(name.partition("-")[0])
    return STAGES.index(spec) if spec else None


def program_spec(program: str) -> StageSpec:
    """The entry whose program is the module `program` (e.g. `stages.sft`)."""
    for spec in STAGES:
        if spec.program == program:
            return spec
    raise ConfigError(f"{program}: not a stage program (stages: {', '.join(_BY_NAME)})")


def run_name(section: str, own_name: str | None = None) -> str:
    """The run name of a stage: its section's name, with its own name for one of several named stages."""
    return f"{section}-{own_name}" if own_name else section


def stage_key(stage: str) -> str:
    """A stage's section as a dotted config key: `policy-ppo` is `stages.policy.ppo`."""
    return "stages." + stage.replace("-", ".", 1)


def root_stage() -> StageSpec:
    """The stage every other starts from, directly or not (SFT): the one that starts from the pipeline's model."""
    return next(spec for spec in STAGES if spec.starts_from is None)


def latest_version_of(role: str) -> str:
    """Where an input no stage of this run filled comes from: the latest version published by the stage that
    provides it (`registry:reward-model:latest` for the reward model)."""
    spec = next(spec for spec in STAGES if spec.provides == role)
    return f"{REF_PREFIX}{spec.publishes_as}:{LATEST}"


# --------------------------------------------------------------------------------------------------
# The `stages:` config section, built from the table

STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_]*$"  # a named stage's own name
# A stage taken from the registry instead of run: `sft: registry:sft-policy:v3`. Later stages start from it.
RegistryVersion = Annotated[str, Field(pattern=r"^registry:\S+$")]
SECTION_TAGS = frozenset({"stage", "named", "taken"})  # the forms of a section, left out of error key paths


def _form_of(named_by: str | None) -> Callable[[Any], str]:
    """Which form a section holds: a registry version, several named stages each stating `named_by`
    (`{dpo: {algorithm: dpo, ...}, ppo: {algorithm: ppo, ...}}`), or one stage's settings."""

    def form(value: Any) -> str:
        if isinstance(value, str):
            return "taken"
        if named_by and isinstance(value, dict) and value:
            named = (
                isinstance(v, BaseModel) or (isinstance(v, dict) and named_by in v) for v in value.values()
            )
            if all(named):
                return "named"
        return "stage"

    return form


def _section(spec: StageSpec) -> Any:
    """The type of `stages.<name>`: the stage's settings, a registry version, or (`named_by`) named settings."""
    forms = [Annotated[spec.config, Tag("stage")], Annotated[RegistryVersion, Tag("taken")]]
    if spec.named_by:
        named = dict[Annotated[str, Field(pattern=STAGE_NAME)], spec.config]
        forms.append(Annotated[named, Tag("named")])
    return Annotated[Union[tuple(forms)], Discriminator(_form_of(spec.named_by))]  # noqa: UP007


class _Stages(Schema):
    def plan(self) -> dict[str, TrainStageConfig]:
        """Every stage to run by its run name, in the table's (dependency) order."""
        plan: dict[str, TrainStageConfig] = {}
        for spec in STAGES:
            value = getattr(self, spec.name)
            if isinstance(value, dict):
                plan |= {run_name(spec.name, own): cfg for own, cfg in value.items()}
            elif isinstance(value, TrainStageConfig):
                plan[spec.name] = value
        return plan

    def taken(self) -> dict[str, str]:
        """The stages taken from the registry: run name -> registry version."""
        return {spec.name: value for spec in STAGES if isinstance(value := getattr(self, spec.name), str)}


StagesConfig = create_model(
    "StagesConfig",
    __base__=_Stages,
    __doc__="""The `stages:` section: one key per stage of the table, in dependency order. A missing key
    means the stage does not run; a registry version (`sft: registry:sft-policy:v3`) that it is taken from the
    registry instead. A section with several named stages (e.g. `policy: {dpo: ..., ppo: ...}`) runs each as
    `<section>-<name>`, all from the same start, so they compare side by side.""",
    **{spec.name: (_section(spec) | None, None) for spec in STAGES},
)
