"""The pipeline config: one YAML file for a whole pipeline, its sections, loading, overrides and errors.

`load_config` is the single way in: YAML (safe-loaded) + dotted command-line overrides + validation. Every
section forbids unknown keys, so a typo fails at load time with its key path and a suggestion. The settings
of one stage live in `rlhf.settings`; the `stages:` section is built from the stage table (`rlhf.stage_table`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rlhf import atomic
from rlhf.data.synthetic import SynthConfig
from rlhf.errors import ConfigError

# TODO(me): temporary, until rlhf/ppo.py imports these from rlhf.settings
from rlhf.settings import (  # noqa: F401
    DistributedConfig,
    GenerationSpec,
    LoraSpec,
    ModelSpec,
    PolicyStageConfig,
    PPOSpec,
    Schema,
    ppo_batches,
)
from rlhf.stage_table import SECTION_TAGS, StagesConfig, stage_key, stage_spec

SyntheticData = pydantic_dataclass(SynthConfig, frozen=True, config=ConfigDict(extra="forbid"))


class ImportConfig(Schema):
    """What every import of annotators' exports takes (see `rlhf data import`)."""

    kind: ClassVar[str]  # the section's name under `data`, the kind of data it imports

    files: list[str] = Field(default_factory=list)
    format: str | None = None
    min_votes: int = Field(1, ge=1)
    min_annotator_agreement: float | None = Field(None, ge=0.0, le=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    max_depth: int = Field(64, ge=1, le=256, description="A record nested deeper is quarantined.")
    max_record_bytes: int = Field(64 * 2**20, ge=1, description="A bigger record is quarantined.")
    # format-specific choices, as `rlhf data import`'s flags (rlhf.data.importers.ImportOptions)
    argilla_question: str | None = None
    prompt_field: str | None = None


class UnpairedConfig(ImportConfig):
    """Unpaired judgements (thumbs, ratings of one completion) to import for KTO (`rlhf data import --kind
    unpaired`); the synthetic task's thumbs export is added to `files` when a policy stage runs KTO."""

    kind: ClassVar[str] = "unpaired"

    desirable_rating: float = Field(4.0, description="A rating at or above this is desirable.")
    undesirable_rating: float = Field(2.0, description="At or below this undesirable; between: neutral.")
    thumbs_labels: dict[str, bool] = Field(
        default_factory=dict,
        description="Thumbs label -> desirable; replaces the built-in 👍/👎, good/bad map.",
    )


class PreferencesConfig(ImportConfig):
    """Preference exports to import (see `rlhf data import`); the synthetic task's export is added to `files`."""

    kind: ClassVar[str] = "preferences"

    ties: Literal["drop", "keep"] = "drop"
    column_map: dict[str, str] = Field(default_factory=dict)
    rating_pairs: Literal["best-vs-random", "best-vs-worst", "all-above-margin"] = "best-vs-random"
    rating_margin: float = 1.0
    rating_key: str = "overall"
    label_config: str | None = None
    bucket_order: list[str] = Field(default_factory=list)


class DataConfig(Schema):
    """Where the data comes from: the built-in synthetic task, files, or both (files win)."""

    synthetic: SyntheticData | None = None  # type: ignore[valid-type]
    sft_train: str | None = None
    sft_eval: str | None = None
    eval_prompts: str | None = None
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)
    unpaired: UnpairedConfig = Field(default_factory=UnpairedConfig)


class TrackingConfig(Schema):
    """wandb tracking; `tracking: none` turns it off."""

    backend: Literal["wandb", "none"] = "wandb"
    project: str = "rlhf"
    entity: str | None = None
    mode: Literal["auto", "offline", "online", "disabled"] = Field(
        "auto", description="auto: WANDB_MODE if set, else online with an API key, else offline."
    )
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """`tracking: none` / `tracking: wandb` are shorthands for the backend."""
        return {"backend": value} if isinstance(value, str) else value


class LabelStudioConfig(Schema):
    """The Label Studio server annotation rounds talk to. No key holds the API key itself: it is read from the
    environment variable `api_key_env` at the moment of use, so it never lands in a config copy or a log."""

    url: str | None = Field(None, description="Server URL; None: $LABEL_STUDIO_URL.")
    api_key_env: str = Field("LABEL_STUDIO_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    project_prefix: str | None = Field(
        None, description="Project titles: '<prefix> round <r>'; None: the run name."
    )
    overlap: int = Field(3, ge=1, description="Annotators per task (the project's maximum_annotations).")
    poll_seconds: float = Field(30.0, gt=0, description="How often a round waiting for annotations asks.")


class RoundsConfig(Schema):
    """Iterative rounds: sample the last round's policy, have the pairs judged, retrain, repeat."""

    count: int = Field(ge=1)
    prompts: str | None = Field(None, description="JSONL of prompts to sample; None: the synthetic task's.")
    pairs_per_round: int = Field(ge=1, description="Tasks a round sends to annotators.")
    responses_per_prompt: int = Field(2, ge=2, description="2: pairwise tasks; 3 or more: ranking tasks.")
    annotators: Literal["label_studio", "simulated"] = Field(
        "simulated",
        description="label_studio: people answer in the server's UI; simulated: the synthetic task's noisy "
        "annotators answer, through the server when a URL is set, else through files.",
    )
    data: Literal["all", "new"] = Field(
        "all", description="all: train on every round's judgements so far; new: on this round's only."
    )
    policy_start: Literal["start", "previous"] = Field(
        "start",
        description="start: each round's policy trains from where the pipeline starts it (the SFT version); "
        "previous: from the last round's policy (iterative DPO), which is then also its reference. Gold is "
        "always measured against the SFT version.",
    )
    wait_for: float = Field(
        1.0, gt=0, le=1, description="Share of a round's tasks that must be finished before it is pulled."
    )
    policy: str | None = Field(None, description="The policy stage whose model the next round samples.")
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec(max_new_tokens=16))
    label_studio: LabelStudioConfig = Field(default_factory=LabelStudioConfig)


class PipelineConfig(Schema):
    """One pipeline: a model, its data, the stages with their hyperparameters, and where things go."""

    name: str = Field("rlhf", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 0
    model: ModelSpec
    data: DataConfig = Field(default_factory=DataConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    evaluation: GenerationSpec | None = Field(
        default_factory=GenerationSpec,
        description="Sampling for the run's evaluations: the base model, and the policy against the SFT policy.",
    )
    registry: str | None = Field(
        None, description="Registry directory; default: $RLHF_REGISTRY, else ./registry."
    )
    runs_dir: str = Field("runs", description="Where each pipeline run gets its directory.")
    rounds: RoundsConfig | None = Field(None, description="Annotation rounds (rlhf.rounds); None: one pass.")

    @model_validator(mode="after")
    def _some_stage(self) -> PipelineConfig:
        if not self.stages.plan() and not self.stages.taken():
            names = ", ".join(StagesConfig.model_fields)
            raise ValueError(f"stages: no stage configured; expected at least one of {names}")
        return self

    @model_validator(mode="after")
    def _kto_has_unpaired_data(self) -> PipelineConfig:
        """KTO trains on unpaired judgements only: without any, the stage would fail after SFT had trained."""
        for name, stage in self.stages.plan().items():
            given = self.data.unpaired.files or self.data.synthetic is not None
            if getattr(stage, "algorithm", None) == "kto" and not (given or stage.dataset):
                raise ValueError(
                    f"{stage_key(name)}: algorithm kto needs unpaired data (thumbs or ratings of single "
                    "completions): set data.unpaired.files, data.synthetic, or the stage's dataset"
                )
        return self

    @model_validator(mode="after")
    def _precompute_on_one_process(self) -> PipelineConfig:
        """TRL's rank 0 writes the precomputed reference log-probs into its copy of the data's cache, which the
        other ranks (each reading its own copy) never find: refused before training, not a crash after it."""
        for name, stage in self.stages.plan().items():
            dist = self.distributed_for(name)
            if getattr(stage, "precompute_ref_log_probs", None) and dist.num_processes * dist.num_nodes > 1:
                raise ValueError(
                    f"{stage_key(name)}.precompute_ref_log_probs: true works on one process only (TRL writes "
                    "the values into rank 0's data cache); leave it unset on several"
                )
        return self

    @model_validator(mode="after")
    def _rounds_have_a_policy(self) -> PipelineConfig:
        """Rounds sample one policy stage's model; say which before any training."""
        if self.rounds is None:
            return self
        policies = [name for name in self.stages.plan() if stage_spec(name).evaluated]
        wanted = self.rounds.policy
        if wanted is not None and not any(wanted in (name, name.partition("-")[2]) for name in policies):
            raise ValueError(
                f"rounds.policy: no policy stage {wanted!r} (policy stages: {', '.join(policies)})"
            )
        if wanted is None and len(policies) != 1:
            raise ValueError(
                f"rounds.policy: {len(policies)} policy stages ({', '.join(policies) or 'none'}); name the one "
                "whose model each round samples"
            )
        if self.rounds.prompts is None and self.data.synthetic is None:
            raise ValueError("rounds.prompts: needed without data.synthetic (the prompts each round samples)")
        if self.rounds.annotators == "simulated" and self.data.synthetic is None:
            raise ValueError(
                "rounds.annotators: simulated needs data.synthetic (its annotators judge by gold)"
            )
        return self

    def distributed_for(self, stage: str) -> DistributedConfig:
        """How `stage` (a run name from `stages.plan()`) is distributed: the pipeline's `distributed` with the
        stage's own keys over it."""
        stage_cfg = self.stages.plan().get(stage)
        if stage_cfg is None or stage_cfg.distributed is None:
            return self.distributed
        return stage_cfg.distributed.over(self.distributed)

    def fingerprint(self) -> str:
        """A stable hash of the resolved config, for lineage and caching."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Loading, overrides, error messages


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply `a.b.c=value` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    for override in overrides or []:
        apply_override(raw, override)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a raw pipeline mapping; the first problems become one readable ConfigError."""
    return validate_section(PipelineConfig, raw, source)


def validate_section(schema: Any, raw: dict[str, Any], source: str) -> Any:
    """Validate `raw` against any schema class (model or pydantic dataclass) with our error messages."""
    try:
        return TypeAdapter(schema).validate_python(raw)
    except ValidationError as exc:
        lines = [describe_error(err, schema) for err in exc.errors()]
        shown = "; ".join(lines[:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
        raise ConfigError(f"{source}: {shown}") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` strings to a nested mapping, values parsed as YAML."""
    raw: dict[str, Any] = {}
    for override in overrides:
        apply_override(raw, override)
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a raw config mapping; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. stages.sft.max_steps=50")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def describe_error(err: Any, root: Any) -> str:
    """One line for one pydantic error: the dotted key path, what was expected, what was given."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-") and p not in SECTION_TAGS]
    path = ".".join(loc)
    kind = err["type"]
    if not path:
        return err["msg"].removeprefix("Value error, ")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(root, [str(p) for p in err["loc"][:-1] if not str(p).startswith("function-")])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f", did you mean {close[0]}?" if close else f" (known keys: {', '.join(sorted(known))})"
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: missing field"
    given = err.get("input")
    if kind == "string_pattern_mismatch" and "taken" in err["loc"]:
        return f"{path}: expected the stage's settings or a registry version (registry:NAME:VERSION), got {given!r}"
    expected = _EXPECTED.get(kind)
    if expected:
        return f"{path}: expected {expected}, got {given!r}"
    return f"{path}: {err['msg'].removeprefix('Value error, ')} (got {given!r})"


_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "dataclass_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
}


def _known_keys(root: Any, loc: list[str]) -> list[str]:
    """The field names valid at a key path (pydantic's, with its section tags), for did-you-mean hints."""
    model: Any = root
    parts = iter(loc)
    for part in parts:
        if part == "named":  # a section of several named stages: the next part is a stage's own name
            next(parts, None)
        elif part in SECTION_TAGS:
            continue
        elif part in (fields := _fields_of(model)):
            model = _section_type(fields[part])
        else:
            return []
    return list(_fields_of(model))


def _fields_of(model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: info.annotation for name, info in model.model_fields.items()}
    fields = getattr(model, "__pydantic_fields__", None) or {}
    return {name: info.annotation for name, info in fields.items()}


def _section_type(annotation: Any) -> Any:
    """The schema class inside `X | None`, `Annotated[...]` or a union of them (or X itself)."""
    if _fields_of(annotation):
        return annotation
    for candidate in getattr(annotation, "__args__", ()):
        if _fields_of(found := _section_type(candidate)):
            return found
    return annotation


def dump_config(cfg: PipelineConfig, path: Path) -> None:
    """Save the resolved config (what actually ran) as YAML, atomically."""
    atomic.write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
