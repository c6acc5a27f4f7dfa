"""Models and tokenizers: from a Hugging Face id or a local directory, in the stage's precision; LoRA.

Built-in specs (`rlhf.builtin_models`) are materialized into a directory first, so every stage loads from
disk like any other model: one loading path, reproducible bases.

Safety defaults: safetensors only, `trust_remote_code` off unless the config asks, and `local_files_only`
whenever the Hugging Face hub is offline.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlhf.architectures import is_builtin_spec
from rlhf.errors import ModelError
from rlhf.registry import Manifest, Registry, is_reference
from rlhf.settings import LoraSpec, ModelSpec

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PAD = (
    "<pad>"  # added to a tokenizer that has no pad distinct from EOS: the reward head reads the last non-pad
)

# --------------------------------------------------------------------------------------------------
# Loading


def registry_model(registry: Registry, spec: ModelSpec) -> tuple[ModelSpec, Manifest]:
    """A registry version as a loadable spec: its directory (content checked), and for an adapter its base."""
    manifest = registry.manifest(spec.name)
    path = registry.resolve(manifest.ref)
    base = manifest.lora_base
    if base and is_reference(base):
        base = str(registry.resolve(base))
    return spec.model_copy(update={"name": str(path), "base": base}), manifest


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory or hub id, with a PAD distinct from EOS."""
    from transformers import AutoTokenizer

    source = _checked_source(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_load_kwargs(spec))
    except OSError as exc:
        raise ModelError(f"model '{spec.name}': cannot load its tokenizer ({_first_line(exc)})") from None
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def token_counter(spec: ModelSpec) -> Callable[[str], int]:
    """Length of a text in the model's tokens (for the import's over-length check)."""
    tokenizer = load_tokenizer(spec)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_causal_lm(
    spec: ModelSpec, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a directory or hub id (tiny specs: materialize first)."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = _load_model(spec, AutoModelForCausalLM, "CAUSAL_LM", dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_reward_model(
    spec: ModelSpec, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a reward model (a sequence classifier with one output) and its tokenizer.

    From a causal LM's directory (e.g. the SFT policy) the classification head (`score`) starts fresh and the
    LM head is left out (a LoRA policy is merged into its base first); from a reward model's or an encoder's
    directory it loads as saved, a reward-model adapter on its base. The model's pad id is the tokenizer's
    (distinct from EOS), because a decoder's head reads the score at the last non-pad token.
    """
    from transformers import AutoModelForSequenceClassification

    return _load_model(spec, AutoModelForSequenceClassification, "SEQ_CLS", dtype, num_labels=1)


def _load_model(
    spec: ModelSpec, auto_class: type, task_type: str, dtype: str, **model_kwargs: object
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """One loading path for every head: checked source, safetensors only, LoRA adapter on its base.

    An adapter trained for another head (`task_type`, e.g. a LoRA SFT policy loaded as a reward model) is
    merged into its base: its weights carry over, its head does not.
    """
    import torch

    tokenizer = load_tokenizer(spec)
    source = _checked_source(spec)
    adapter = is_adapter(source)
    weights = spec.model_copy(update={"name": spec.base}) if adapter and spec.base else spec
    try:
        model = load_weights(auto_class, _checked_source(weights), getattr(torch, dtype),
                                 **model_kwargs, **_load_kwargs(weights))  # fmt: skip
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        if adapter and spec.base:
            model = _apply_adapter(model, source, task_type)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model '{spec.name}': cannot load weights ({_first_line(exc)})") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_weights(auto_class: type, source: str, dtype: object, **kwargs: Any) -> PreTrainedModel:
    """`from_pretrained`, except under ZeRO-3 from a local directory: each rank reads only its partition
    (`rlhf.partitioned_loading`), where transformers would gather every tensor whole on every rank."""
    from rlhf.partitioned_loading import load_partitioned
    from rlhf.sharding import zero3_enabled

    if zero3_enabled() and Path(source).is_dir():
        model = load_partitioned(auto_class, Path(source), dtype, **kwargs)
        if model is not None:
            return model
    return auto_class.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)


def _apply_adapter(model: PreTrainedModel, source: str, task_type: str) -> PreTrainedModel:
    """The adapter at `source` on `model`: trainable where it fits the head, merged in where it does not."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(source)
    if config.task_type in (None, task_type):
        return PeftModel.from_pretrained(model, source, is_trainable=True)
    config.task_type = None  # the plain PeftModel: no head-specific wrapper for the wrong head
    return PeftModel.from_pretrained(model, source, config=config).merge_and_unload()


@contextmanager
def inference(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Eval mode (dropout off) and no gradients for the block; the model's own mode is restored after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int, device: object = "cpu") -> tuple[Any, Any]:
    """Token id lists as one batch: (ids, attention mask), padded on the right to the longest."""
    import torch

    width = max(map(len, sequences))
    ids = torch.tensor([[*seq, *[pad_id] * (width - len(seq))] for seq in sequences], device=device)
    mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in sequences], device=device)
    return ids, mask


def is_adapter(path: str | Path) -> bool:
    """A LoRA adapter directory (adapter weights only; the base model lives elsewhere)."""
    return (Path(path) / "adapter_config.json").is_file()


def is_reward_model(path: str | Path) -> bool:
    """A sequence classifier's directory, or an adapter for one: what `load_reward_model` loads as saved."""
    import json

    path = Path(path)
    if is_adapter(path):
        return (
            json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
            == "SEQ_CLS"
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return any(arch.endswith("ForSequenceClassification") for arch in config.get("architectures") or ())


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Save model + tokenizer beside `out_dir`, then rename into place: readers never see half a model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_model(spec: ModelSpec, out_dir: Path, merge_lora: bool = False) -> Path:
    """A standalone HF directory that `from_pretrained` loads without our registry.

    A full model is copied. An adapter is either merged into its base (`merge_lora`: one ordinary model
    directory) or copied with `base_model_name_or_path` pointed at its resolved base, so peft finds it.
    """
    import json

    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"export: {out_dir} exists and is not empty")
    source = Path(_checked_source(spec))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if is_adapter(source) and merge_lora:
            model, tokenizer = (load_reward_model if is_reward_model(source) else load_causal_lm)(spec)
            model.merge_and_unload().save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        else:
            shutil.copytree(
                source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json")
            )
            if is_adapter(source) and spec.base:
                config_path = staging / "adapter_config.json"
                config = json.loads(config_path.read_text(encoding="utf-8"))
                config["base_model_name_or_path"] = str(Path(spec.base).absolute())
                config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _checked_source(spec: ModelSpec) -> str:
    """Validate a model spec before transformers sees it, so errors name the spec and the fix."""
    if is_builtin_spec(spec.name):
        raise ModelError(f"model '{spec.name}': tiny specs are materialized to a directory before loading")
    path = Path(spec.name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"model '{spec.name}': directory has no config.json (not a Hugging Face model)")
        if not any(path.glob("*.safetensors")):
            raise ModelError(f"model '{spec.name}': no *.safetensors weights (only safetensors are loaded)")
        return str(path)
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise ModelError(f"model '{spec.name}': no such directory")
    return spec.name


def _load_kwargs(spec: ModelSpec) -> dict[str, object]:
    return dict(
        trust_remote_code=spec.trust_remote_code,
        revision=spec.revision,
        local_files_only=hub_offline() or Path(spec.name).expanduser().exists(),
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# LoRA


def lora_config(spec: LoraSpec | None, task_type: str = "CAUSAL_LM") -> LoraConfig | None:
    """The peft config for a `lora:` block (None: full fine-tuning)."""
    if spec is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type=task_type,
    )


@dataclass(frozen=True)
class PolicyTraining:
    """What a policy stage (DPO, PPO, ...) trains on its start model, and what its reference is.

    - the start is itself a LoRA adapter (SFT trained one): that adapter trains on; the reference is a frozen
      copy of it (`lora:` is ignored: the adapter keeps its own r/alpha);
    - `lora:` on full weights: a fresh adapter trains; the reference is the same model with its adapters
      disabled, so no second copy is held;
    - full fine-tuning: the weights train; the reference is a frozen copy.
    """

    new_adapter: LoraConfig | None  # a fresh adapter to put on the start; None: train what the start has
    reference: Literal["adapters disabled", "frozen copy"]

    @property
    def reference_is_the_policy(self) -> bool:
        return self.reference == "adapters disabled"


def policy_training(start: ModelSpec, lora: LoraSpec | None, stage: str) -> PolicyTraining:
    """The LoRA / reference choice of a policy stage (see `PolicyTraining`), said once in the log."""
    if is_adapter(start.name):
        if lora:
            log.info("%s: the start is a LoRA adapter; training it further (its r/alpha, not the stage's lora:)",
                     stage)  # fmt: skip
        return PolicyTraining(None, "frozen copy")
    if lora:
        return PolicyTraining(lora_config(lora), "adapters disabled")
    return PolicyTraining(None, "frozen copy")
