"""The workspace of a stage: its run directory, its data, the model it starts from, its context.

What the pipeline does once for every stage, and a stage started alone does for itself: the run directory
(new, or given), the data section resolved to files (the synthetic task written, annotators' exports
imported), a model spec made loadable (a registry version to its directory, a built-in spec materialized),
and the `StageContext` that carries all of it into the stage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from rlhf.architectures import is_builtin_spec
from rlhf.builtin_models import materialize
from rlhf.config import ImportConfig, PipelineConfig
from rlhf.data.importers import ImportOptions
from rlhf.data.preferences import ImportReport, ImportSettings, import_preferences
from rlhf.data.synthetic import write_synthetic_task
from rlhf.data.unpaired import import_unpaired
from rlhf.distributed import is_first_node, node_rank, rank_info
from rlhf.errors import ConfigError, DataError
from rlhf.models import registry_model
from rlhf.registry import Registry, default_registry_path, is_reference
from rlhf.runs import RECORD_FILE
from rlhf.settings import ModelSpec
from rlhf.stage import ResolvedModel, StageContext
from rlhf.stage_table import stage_key, stage_spec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"  # the resolved config a run records, in the node's folder of the run


@dataclass(frozen=True)
class Prepared:
    """What a pipeline resolved for a stage before starting it; a stage started alone resolves its own."""

    start: ModelSpec  # the model it starts from (e.g. the SFT version just published)
    inputs: dict[str, str]  # input role -> location
    task: str | None  # the gold-reward task of the data, if any
    folder: Path  # this node's folder of the run: its data and materialized built-in models


# --------------------------------------------------------------------------------------------------
# Run directories


def new_run_dir(cfg: PipelineConfig) -> Path:
    """A fresh, sortable run directory under `runs_dir`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def run_dir_for(cfg: PipelineConfig, given: str | Path | None) -> Path:
    """The run directory given, or a new one. A node of several started one by one (NODE_RANK set) must be
    given one, the same shared directory on every node, since each would otherwise make its own. A given
    directory must be new, empty or a run of this pipeline: a run writes its config and report there."""
    if given is None and "NODE_RANK" in os.environ:
        raise ConfigError("NODE_RANK is set (one node of several): pass --run-dir, the same on every node")
    if given is None:
        return new_run_dir(cfg)
    run_dir = Path(given)
    # the ranks of a launch write there at once, so whoever launched them checked
    if rank_info().world_size == 1:
        _check_run_dir(run_dir, cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_run_dir(run_dir: Path, pipeline: str) -> None:
    """Refuse a directory that is neither empty nor a run of `pipeline` (by its run record or config)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: not a directory")
    if not run_dir.exists():
        return
    # the other nodes' folders (`.node1`) may be there before the first node's files
    entries = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".node"))
    if not entries:
        return
    owner = _pipeline_of(run_dir)
    if owner == pipeline:
        return
    what = (
        f"a run of pipeline '{owner}'"
        if owner
        else f"not empty ({', '.join(entries[:3])}{', ...' * (len(entries) > 3)})"
    )
    raise ConfigError(
        f"--run-dir {run_dir}: {what} and not a run of '{pipeline}'; give a new or empty directory"
    )


def _pipeline_of(run_dir: Path) -> str | None:
    """The pipeline a run directory belongs to, from its run record or else its saved config."""
    for name, key in ((RECORD_FILE, "pipeline"), (CONFIG_FILE, "name")):
        try:
            owner = yaml.safe_load((run_dir / name).read_text(encoding="utf-8"))[key]
        except (OSError, yaml.YAMLError, TypeError, KeyError):
            continue
        if isinstance(owner, str):
            return owner
    return None


# --------------------------------------------------------------------------------------------------
# Data and models

# a stage's own data files, as dotted keys inside its section (absent or None where a stage has none)
STAGE_DATA_KEYS = ("dataset", "eval_dataset", "ppo.prompts")


def check_data_files(cfg: PipelineConfig, stages: list[str] | None = None) -> None:
    """Every data file the config names exists: checked before anything is built (the synthetic task, the
    base model, the run directory), so a typo costs no minutes. `stages`: whose own files (default: all)."""
    named = {
        f"data.{kind}.files[{i}]": path
        for kind in ("preferences", "unpaired")
        for i, path in enumerate(getattr(cfg.data, kind).files)
    }
    named |= {f"data.{role}": getattr(cfg.data, role) for role in ("sft_train", "sft_eval", "eval_prompts")}
    for name, stage_cfg in cfg.stages.plan().items():
        if stages is not None and name not in stages:
            continue
        for key in STAGE_DATA_KEYS:
            value: Any = stage_cfg
            for part in key.split("."):
                value = getattr(value, part, None)
            named[f"{stage_key(name)}.{key}"] = value
    for key, path in named.items():
        if isinstance(path, str) and not Path(path).exists():
            raise ConfigError(f"{key}: {path}: no such file or directory")


def prepare_data(cfg: PipelineConfig, run_dir: Path) -> tuple[dict[str, str], str | None]:
    """Resolve the pipeline's data section to file locations; write the synthetic task if asked.

    Returns (inputs, task): explicit files win over the synthetic task's files. The synthetic task's thumbs
    (unpaired judgements) are imported only for a pipeline with a KTO stage, which alone reads them.
    """
    inputs: dict[str, str] = {}
    task = None
    exports = [Path(path) for path in cfg.data.preferences.files]
    unpaired = [Path(path) for path in cfg.data.unpaired.files]
    if cfg.data.synthetic is not None:
        files = write_synthetic_task(run_dir / "data" / "synthetic", cfg.data.synthetic)
        imported = ("preferences", "unpaired")
        inputs.update({role: str(path) for role, path in files.items() if role not in imported})
        if cfg.data.synthetic.num_preference_tasks:
            exports.append(files["preferences"])
        if any(getattr(stage, "algorithm", None) == "kto" for stage in cfg.stages.plan().values()):
            unpaired.append(files["unpaired"])
        task = "synthetic"
    for role in ("sft_train", "sft_eval", "eval_prompts"):
        value = getattr(cfg.data, role)
        if value is not None:
            inputs[role] = value
    if exports:
        inputs["preferences"] = str(
            import_exports(exports, cfg.data.preferences, run_dir / "data" / "preferences")
        )
    if unpaired:
        inputs["unpaired"] = str(import_exports(unpaired, cfg.data.unpaired, run_dir / "data" / "unpaired"))
    return inputs, task


IMPORTERS: dict[str, Callable[[list[Path], Path, ImportSettings], ImportReport]] = {
    "preferences": import_preferences,
    "unpaired": import_unpaired,
}


def import_exports(exports: list[Path], section: ImportConfig, out_dir: Path) -> Path:
    """The exports configured by a `data` section (`data.preferences`, `data.unpaired`) through `rlhf data
    import`'s machinery, into the run."""
    kind = section.kind
    given = section.model_dump()
    if "bucket_order" in given:
        given["bucket_order"] = tuple(given["bucket_order"])
    try:
        options = ImportOptions(**{f.name: given[f.name] for f in fields(ImportOptions) if f.name in given})
        settings = ImportSettings(options=options, **{f.name: given[f.name] for f in fields(ImportSettings)
                                                      if f.name in given and f.name != "options"})  # fmt: skip
    except ConfigError as exc:  # the settings name their key: say where it is in the pipeline's config
        raise ConfigError(f"data.{kind}.{exc}") from None
    report = IMPORTERS[kind](exports, out_dir, settings)
    if (nothing := report.nothing_kept()) is not None:
        raise DataError(nothing)
    log.info("%s: %s (report: %s)", kind, report.identity, report.report_path)
    return out_dir


def resolve_model(spec: ModelSpec, run_dir: Path, seed: int, registry: Registry) -> ResolvedModel:
    """Make a model spec loadable: a registry reference becomes its version's directory (with its LoRA base),
    a built-in spec a directory in the run, so every later load is an ordinary load."""
    if is_reference(spec.name):
        loadable, manifest = registry_model(registry, spec)
        return ResolvedModel(loadable, manifest.ref, manifest.base_model or manifest.ref)
    if is_builtin_spec(spec.name):
        path = materialize(spec, run_dir / "base-model" / spec.name, seed=seed)
        return ResolvedModel(spec.model_copy(update={"name": str(path)}), None, spec.name)
    return ResolvedModel(spec, None, spec.name)


# --------------------------------------------------------------------------------------------------
# The context


def open_registry(cfg: PipelineConfig) -> Registry:
    return Registry(default_registry_path(cfg.registry))


def prepare_context(
    cfg: PipelineConfig,
    stage: str,
    run_dir: Path,
    start: ResolvedModel,
    inputs: dict[str, str],
    task: str | None,
    fingerprint: str | None = None,
) -> StageContext:
    """The context of one stage in one run directory. A stage with a fingerprint keeps its checkpoints
    outside the run, under that fingerprint, so the next run of the same stage resumes from them."""
    work_dir = run_dir / stage
    work_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage=stage,
        pipeline=cfg,
        run_dir=run_dir,
        work_dir=work_dir,
        output_dir=work_dir / "output",
        rank=rank_info(),
        seed=cfg.seed,
        start=start,
        inputs=dict(inputs),
        task=task,
        registry=open_registry(cfg),
        checkpoint_dir=checkpoint_dir(cfg, stage, fingerprint) if fingerprint else work_dir / "checkpoints",
        fingerprint=fingerprint,
    )


def checkpoint_dir(cfg: PipelineConfig, stage: str, fingerprint: str) -> Path:
    """Checkpoints of the stage with this fingerprint, whichever run trains it."""
    return Path(cfg.runs_dir) / "checkpoints" / f"{stage}-{fingerprint}"


def rank_folder(run_dir: Path) -> Path:
    """Where this rank writes the files every rank needs (the task's data, a materialized built-in model):
    the run directory for rank 0, a folder of its own for the others. Under a launcher every rank writes its
    own identical copy, so no two processes write one folder at once."""
    rank = rank_info()
    return run_dir if rank.is_main else run_dir / f".rank{rank.rank}"


def node_folder(run_dir: Path) -> Path:
    """Where a node's parent process writes its own files (config, data, base model) when every node runs
    the pipeline: the run directory on the first node, which owns it, a folder of its own on the others."""
    folder = run_dir if is_first_node() else run_dir / f".node{node_rank()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stage_section(cfg: PipelineConfig, stage: str) -> Any:
    """The config of the stage run as `stage` (`sft`, `policy`, `policy-ppo`); a clear error when absent."""
    plan = cfg.stages.plan()
    if stage in plan:
        return plan[stage]
    section = stage_spec(stage).name  # an unknown stage fails here
    named = [name for name in plan if stage_spec(name).name == stage]
    if named:
        raise ConfigError(f"stages.{stage}: holds several stages ({', '.join(named)}); name one of them")
    raise ConfigError(f"stages.{section}: no stage '{stage}' configured; add it under `stages:`")


def standalone_context(
    cfg: PipelineConfig, stage: str, run_dir: Path, fingerprint: str | None = None
) -> tuple[Any, StageContext]:
    """A stage's config section and its context when it runs on its own: data and model resolved here."""
    stage_cfg = stage_section(cfg, stage)
    inputs, task = prepare_data(cfg, rank_folder(run_dir))
    start = resolve_model(stage_cfg.model or cfg.model, rank_folder(run_dir), cfg.seed, open_registry(cfg))
    return stage_cfg, prepare_context(cfg, stage, run_dir, start, inputs, task, fingerprint)


def context_for(
    cfg: PipelineConfig, stage: str, run_dir: Path, prepared: Prepared | None, fingerprint: str | None
) -> tuple[Any, StageContext]:
    """A stage's config section and its context: from what the pipeline prepared, else resolved here."""
    if prepared is None:
        return standalone_context(cfg, stage, run_dir, fingerprint)
    start = resolve_model(prepared.start, prepared.folder, cfg.seed, open_registry(cfg))
    context = prepare_context(cfg, stage, run_dir, start, prepared.inputs, prepared.task, fingerprint)
    return stage_section(cfg, stage), context
