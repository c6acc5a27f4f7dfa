"""Back to annotators: sample a policy's responses and write Label Studio tasks (pairwise for two responses a
prompt, ranking for three or more) with the labeling config beside them.

The annotators' export comes back through `rlhf data import` like any other Label Studio export; the rounds
of `rlhf.rounds` push the same tasks through the server's API instead of a file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rlhf.annotation.tasks import PAIRWISE_CONFIG, build_tasks, label_config
from rlhf.eval import Messages, generate, load_prompts
from rlhf.models import load_causal_lm, registry_model
from rlhf.registry import Registry, is_reference
from rlhf.settings import GenerationSpec, ModelSpec

LABEL_CONFIG = PAIRWISE_CONFIG  # the config `export-for-annotation` writes for two responses a prompt


def sample_tasks(
    prompts: list[Messages],
    model: str,
    registry: Registry,
    responses_per_prompt: int = 2,
    generation: GenerationSpec | None = None,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Sample `responses_per_prompt` responses a prompt from `model` (a registry reference, directory or id)
    and build one task a prompt; returns (tasks, prompts skipped for want of two distinct responses).

    Each task's `meta.rlhf` names the model's registry version, the sampling settings and the seed (and
    `meta`'s own entries), so a judgement can always be traced to the policy that wrote the answers.
    """
    spec = ModelSpec(name=model)
    ref = None
    if is_reference(model):
        spec, manifest = registry_model(registry, spec)
        ref = manifest.ref
    policy, tokenizer = load_causal_lm(spec)
    generation = (generation or GenerationSpec()).model_copy(
        update={"samples_per_prompt": responses_per_prompt}
    )
    samples = generate(policy, tokenizer, prompts, generation, seed)
    responses = [
        [s.response for s in samples[i * responses_per_prompt : (i + 1) * responses_per_prompt]]
        for i in range(len(prompts))
    ]
    provenance = {"model": ref or model, "sampling": generation.model_dump(mode="json"), "seed": seed}
    return build_tasks(prompts, responses, {**provenance, **(meta or {})}, seed)


def export_for_annotation(
    prompts_path: str | Path,
    model: str,
    out_path: str | Path,
    registry: Registry,
    responses_per_prompt: int = 2,
    generation: GenerationSpec | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Write `out_path` (tasks) and `<out_path stem>.label_config.xml`; returns counts."""
    prompts = load_prompts(prompts_path)
    tasks, skipped = sample_tasks(prompts, model, registry, responses_per_prompt, generation, seed)
    _write_json(Path(out_path), tasks)
    Path(out_path).with_suffix(".label_config.xml").write_text(
        label_config(responses_per_prompt), encoding="utf-8"
    )
    return {"prompts": len(prompts), "tasks": len(tasks), "prompts_skipped": skipped}


def _write_json(path: Path, value: object) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8"
    ) as handle:
        json.dump(value, handle, ensure_ascii=False, indent=1)
    Path(handle.name).replace(path)
