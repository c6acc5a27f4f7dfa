"""Fingerprints: the hash of what decides a stage's product, so a pipeline knows when a stage need not train.

A stage's fingerprint covers its resolved config (less the settings that change how it runs, not what it
produces), the seed, the model it starts from (a registry alias as the concrete version it means), the
processes its global batch spans, the data it reads by content, and for PPO the reward model's version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rlhf.config import PipelineConfig
from rlhf.data.files import fingerprint as file_fingerprint
from rlhf.registry import REF_PREFIX, Registry, is_reference
from rlhf.settings import ModelSpec, PolicyStageConfig, TrainStageConfig
from rlhf.stage_table import REWARD_MODEL, latest_version_of, stage_spec

# Settings that change how a stage runs, not what it produces: left out of its fingerprint.
HOW_NOT_WHAT = {"distributed", "num_threads", "logging_steps", "save_steps", "save_total_limit", "eval_steps",
                "per_device_eval_batch_size"}  # fmt: skip


def stage_fingerprint(
    cfg: PipelineConfig,
    name: str,
    stage_cfg: TrainStageConfig,
    start: ModelSpec,
    data: dict[str, str],
    inputs: dict[str, str],
    registry: Registry,
) -> str:
    """The hash of what decides a stage's product: its resolved config (less HOW_NOT_WHAT), the seed, the
    model it starts from (a registry version as its concrete version), the processes its global batch spans,
    the data it reads (`data`: content fingerprints by role) and, for PPO, the reward model's version."""
    dist = cfg.distributed_for(name)
    payload: dict[str, Any] = {
        "stage": name,
        "config": stage_cfg.model_dump(mode="json", exclude=HOW_NOT_WHAT),
        "seed": cfg.seed,
        "start": _model_identity(start, registry),
        "world_size": dist.num_processes * dist.num_nodes,
        "data": {role: data[role] for role in stage_spec(name).reads if role in data}
        | {role: content_fingerprint(path) for role, path in _own_data(stage_cfg).items()},
    }
    if isinstance(stage_cfg, PolicyStageConfig) and stage_cfg.online:
        sources = stage_cfg.reward_sources(inputs.get(REWARD_MODEL, latest_version_of(REWARD_MODEL)))
        payload[REWARD_MODEL] = [_model_identity(s.model, registry) for s in sources if s.model is not None]
    return digest(payload)


def _own_data(stage_cfg: TrainStageConfig) -> dict[str, str]:
    """The data files a stage's own config names (they win over the pipeline's inputs)."""
    ppo = getattr(stage_cfg, "ppo", None)
    paths = {"dataset": getattr(stage_cfg, "dataset", None), "eval_dataset": getattr(stage_cfg, "eval_dataset", None),
             "ppo_prompts": ppo.prompts if ppo is not None else None}  # fmt: skip
    return {role: path for role, path in paths.items() if path}


def _model_identity(spec: ModelSpec, registry: Registry) -> dict[str, Any]:
    """A model as the fingerprint sees it: a registry version as its concrete `name:vN`, else as configured
    (a hub id with its revision, a built-in spec, a directory's path)."""
    identity = spec.model_dump(mode="json", exclude_none=True)
    if is_reference(spec.name):
        identity["name"] = registry.manifest(spec.name.removeprefix(REF_PREFIX)).ref
    return identity


def content_fingerprint(path: str) -> str:
    """A data file's or directory's content hash. An imported preference dataset is known by what it was
    imported from and how (its sources' hashes, its settings): its rows also name their source file's path,
    which differs from run to run for the same data."""
    manifest_file = Path(path) / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if "sources" in manifest and "settings" in manifest:
            return digest({"sources": [source["sha256"] for source in manifest["sources"]],
                           "settings": manifest["settings"]})  # fmt: skip
    return file_fingerprint(path)


def digest(payload: Any) -> str:
    """A short, stable hash of a JSON-able payload."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
