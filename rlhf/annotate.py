"""Back to annotators: sample a policy's responses and write a Label Studio import file of pairwise tasks.

The tasks use the field names of Label Studio's "Human Preference collection for RLHF" template (`prompt`,
`answer1`, `answer2`) and the labeling config written beside them, so the annotators' export comes back
through `rlhf data import` like any other Label Studio export.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

from rlhf.eval import Messages, generate, load_prompts
from rlhf.models import load_causal_lm, registry_model
from rlhf.registry import Registry, is_reference
from rlhf.settings import GenerationSpec, ModelSpec

LABEL_CONFIG = """<View>
  <Style>.prompt { white-space: pre-wrap; }</Style>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt" className="prompt"/>
  <Header value="Which answer is better? Choose none if neither is."/>
  <Pairwise name="comparison" toName="answer1,answer2" selectionStyle="background-color: #27ae60;"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
</View>
"""


def export_for_annotation(
    prompts_path: str | Path,
    model: str,
    out_path: str | Path,
    registry: Registry,
    responses_per_prompt: int = 2,
    generation: GenerationSpec | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Write `out_path` (tasks) and `<out_path stem>.label_config.xml`; returns counts.

    Each prompt gets `responses_per_prompt` samples; every pair of distinct, non-empty samples becomes one
    pairwise task, with the model and sampling in `meta`. Identical or empty samples carry no preference an
    annotator could give (and the importer would quarantine them), so they are skipped and counted.
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
    prompts = load_prompts(prompts_path)
    samples = generate(policy, tokenizer, prompts, generation, seed)
    meta = {"model": ref or model, "sampling": generation.model_dump(mode="json"), "seed": seed}
    tasks, skipped = [], 0
    for index, prompt in enumerate(prompts):
        group = samples[index * responses_per_prompt : (index + 1) * responses_per_prompt]
        responses = list(dict.fromkeys(s.response for s in group if s.response.strip()))
        pairs = list(itertools.combinations(responses, 2))
        skipped += len(group) * (len(group) - 1) // 2 - len(pairs)
        tasks.extend(_task(prompt, first, second, meta) for first, second in pairs)
    _write_json(Path(out_path), tasks)
    Path(out_path).with_suffix(".label_config.xml").write_text(LABEL_CONFIG, encoding="utf-8")
    return {"prompts": len(prompts), "tasks": len(tasks), "pairs_skipped": skipped}


def _task(prompt: Messages, answer1: str, answer2: str, meta: dict) -> dict:
    """One Label Studio task; a multi-turn prompt keeps its turns as `messages` beside the flat text."""
    text = (
        "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)
        if len(prompt) > 1
        else prompt[0]["content"]
    )
    data = {"prompt": text, "answer1": answer1, "answer2": answer2}
    if len(prompt) > 1:
        data["messages"] = prompt
    return {"data": data, "meta": meta}


def _write_json(path: Path, value: object) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8"
    ) as handle:
        json.dump(value, handle, ensure_ascii=False, indent=1)
    Path(handle.name).replace(path)
